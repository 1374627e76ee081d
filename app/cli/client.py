"""A small HTTP client for the Squash API (what the CLI and the demo use)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


class CliError(RuntimeError):
    """An error the CLI shows as one line saying what to do (app/cli/main.py), no traceback."""


# What to do about an answer, by status; the API's own `detail` comes first.
HINTS = {
    401: "pass a valid key with --api-key or SQUASH_API_KEY (`squash keys create` issues one)",
    403: "this deployment's policy refuses it (a source outside the operator's allow-list, a "
    "webhook host that is not public): use an allowed one, or ask an operator",
    404: "check the id: jobs are visible only to the tenant whose key created them",
    413: "the request is over the API's size limit",
}


class ApiError(CliError):
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:500]}
        lines = [f"HTTP {response.status_code} {body.get('code', '')}: {body.get('detail')}"]
        for error in body.get("errors") or []:
            lines.append(f"  {error.get('field') or 'request'}: {error.get('message')}")
            if error.get("choices"):
                lines.append(f"    choices: {error['choices']}")
        retry_after = response.headers.get("Retry-After")
        if response.status_code in (429, 503) and retry_after:
            lines.append(f"retry in {retry_after} s")
        elif response.status_code in HINTS:
            lines.append(HINTS[response.status_code])
        super().__init__("\n".join(lines))


class ApiUnreachable(CliError):
    def __init__(self, base_url: str, exc: Exception) -> None:
        super().__init__(
            f"cannot reach the Squash API at {base_url} ({type(exc).__name__}: {exc}).\n"
            "Is it running? `squash embedded` starts one on this machine; "
            "--url or SQUASH_URL points at another."
        )


def sse_messages(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """Server-Sent Events as the EventSource algorithm splits them: fields up to a blank line;
    `:` lines are comments (keep-alives)."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


class SquashClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(str(self.http.base_url), exc) from exc
        if response.status_code >= 400:
            raise ApiError(response)
        body: dict[str, Any] = response.json()
        return body

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=body, headers=headers)

    def jobs(self, *, states: list[str], limit: int) -> dict[str, Any]:
        return self._call("GET", "/v1/jobs", params={"state": states, "limit": limit})

    def download(self, url: str, target: Path) -> str:
        """Stream one artifact to `target`; returns its sha256 (links are presigned: no key)."""
        digest = hashlib.sha256()
        try:
            with httpx.stream("GET", url, timeout=self.http.timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response)
                with target.open("wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        digest.update(chunk)
                        handle.write(chunk)
        except httpx.TransportError as exc:
            raise ApiUnreachable(url.split("?")[0], exc) from exc
        return digest.hexdigest()

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def artifacts(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/artifacts")

    def report(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/report")

    def report_page(self, job_id: str) -> bytes:
        try:
            response = self.http.get(f"/v1/jobs/{job_id}/report.html")
        except httpx.TransportError as exc:
            raise ApiUnreachable(str(self.http.base_url), exc) from exc
        if response.status_code >= 400:
            raise ApiError(response)
        return response.content

    def events(self, job_id: str, after: int = 0) -> dict[str, Any]:
        params = {"limit": 500, "after": after}
        return self._call("GET", f"/v1/jobs/{job_id}/events", params=params)

    def stream_events(
        self, job_id: str, after: int = 0, retries: int = 5
    ) -> Iterator[dict[str, Any]]:
        """The job's events from `after` on, live, until it ends (GET …/stream, Server-Sent
        Events). A dropped connection is resumed with Last-Event-ID: nothing lost or repeated."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(after)} if after else {}
            try:
                with self.http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/stream",
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=60.0),  # the server beats every 15 s
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError(response)
                    for message in sse_messages(response.iter_lines()):
                        failures = 0
                        if message.get("event") == "end":
                            return
                        if message.get("event") == "job_event":
                            event: dict[str, Any] = json.loads(message["data"])
                            after = event["id"]
                            yield event
            except httpx.TransportError as exc:
                failures += 1
                if failures > retries:
                    raise ApiUnreachable(str(self.http.base_url), exc) from exc
                time.sleep(min(2.0**failures, 10.0))

    def compare(self, job_ids: list[str]) -> dict[str, Any]:
        return self._call("GET", "/v1/compare", params={"jobs": ",".join(job_ids)})

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float = 3600,
        poll_s: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if on_update:
                on_update(job)
            if job["state"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s}s")
            time.sleep(poll_s)
