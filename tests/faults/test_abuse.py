"""Abuse: requests that try to run code on our machines, reach what they must not, or read
another tenant's work. One table: each row is refused with its documented status and code,
and nothing runs (every hostile payload would drop a marker file if it ever executed).

Real API (in-process TestClient over the real app), Postgres, Redis, a real Celery worker and
S3 over HTTP (moto).
"""

from __future__ import annotations

import json
import pickle
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from app.auth import repository as auth_repository
from app.config import Settings
from app.db import session_scope
from tests.support.fixtures import BUCKET
from tests.support.jobs import tiny_job, wait_for_state
from tests.support.services import WorkerProcess, free_port, wait_until
from tests.support.stack import record

pytestmark = pytest.mark.integration


class _Hostile:
    """Unpickling this creates `marker`: the proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    folder = tmp_path / "executed"
    folder.mkdir()
    return folder


def _copy_model(tiny_model_dir: Path, models_root: Path, name: str) -> Path:
    target = models_root / f"{name}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(tiny_model_dir, target)
    return target


def pickle_only_model(tiny_model_dir: Path, models_root: Path, markers: Path) -> Path:
    path = _copy_model(tiny_model_dir, models_root, "pickle-only")
    for weights in path.glob("*.safetensors"):
        weights.unlink()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(_Hostile(markers / "pickle-only")))
    return path


def pickle_beside_model(tiny_model_dir: Path, models_root: Path, markers: Path) -> Path:
    path = _copy_model(tiny_model_dir, models_root, "pickle-beside")
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(_Hostile(markers / "pickle-beside")))
    return path


def remote_code_model(tiny_model_dir: Path, models_root: Path, markers: Path) -> Path:
    """A model whose config names its own classes; importing its code drops a marker."""
    path = _copy_model(tiny_model_dir, models_root, "remote-code")
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "hostile-llama"
    config["auto_map"] = {
        "AutoConfig": "configuration_hostile.HostileConfig",
        "AutoModelForCausalLM": "modeling_hostile.HostileForCausalLM",
    }
    (path / "config.json").write_text(json.dumps(config))
    code = f"open({str(markers / 'remote-code')!r}, 'w')\n"
    (path / "configuration_hostile.py").write_text(code)
    (path / "modeling_hostile.py").write_text(code)
    return path


def oversized_model(tiny_model_dir: Path, models_root: Path) -> Path:
    """3 GB of weights on paper (a sparse file: no disk used), over the tests' 2 GB limit."""
    path = _copy_model(tiny_model_dir, models_root, "oversized")
    with (path / "model-00002-of-00002.safetensors").open("wb") as handle:
        handle.truncate(3 * 10**9)
    return path


@pytest.fixture
def redirecting_receiver() -> Iterator[dict[str, Any]]:
    """A webhook receiver that answers 302 to another receiver, which counts what reaches it."""
    seen: dict[str, Any] = {"redirects": 0, "followed": 0}
    target_port = free_port()

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen["redirects"] += 1
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{target_port}/internal")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Target(Redirect):
        def do_POST(self) -> None:
            seen["followed"] += 1
            self.send_response(204)
            self.end_headers()

        do_GET = do_POST

    servers = []
    for handler, port in ((Redirect, free_port()), (Target, target_port)):
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    seen["url"] = f"http://127.0.0.1:{servers[0].server_port}/hook"
    yield seen
    for server in servers:
        server.shutdown()
        server.server_close()


def _tenant(settings: Settings, make_key: Any, name: str) -> tuple[dict[str, str], uuid.UUID]:
    secret = make_key(name)
    with session_scope(settings.database_url) as session:
        tenant = auth_repository.get_tenant_by_name(session, name)
        assert tenant is not None
        return {"Authorization": f"Bearer {secret}"}, tenant.id


def _job_count(api: TestClient, headers: dict[str, str]) -> int:
    return len(api.get("/v1/jobs", params={"limit": 200}, headers=headers).json()["items"])


def test_abuse_is_refused_and_nothing_executes(
    api: TestClient,
    worker: WorkerProcess,
    settings: Settings,
    make_key: Any,
    models_root: Path,
    tiny_model_dir: Path,
    markers: Path,
    redirecting_receiver: dict[str, Any],
) -> None:
    suffix = uuid.uuid4().hex[:6]
    tenant_a, tenant_a_id = _tenant(settings, make_key, f"abuse-a-{suffix}")
    tenant_b, _ = _tenant(settings, make_key, f"abuse-b-{suffix}")
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    s3.put_object(Bucket=BUCKET, Key=f"tenants/{tenant_a_id}/data/a.txt", Body=b"tenant A only")
    s3.put_object(Bucket=BUCKET, Key="data/huge.txt", Body=b"x" * (20 * 10**6))
    rows: list[dict[str, Any]] = []

    def refused_at_submission(case: str, body: dict[str, Any], status: int, code: str) -> None:
        """The request is answered `status`/`code` as problem+json and creates no job."""
        before = _job_count(api, tenant_b)
        response = api.post("/v1/jobs", json=body, headers=tenant_b)
        problem = response.json()
        assert response.status_code == status, (case, problem)
        assert response.headers["content-type"].startswith("application/problem+json"), case
        assert problem["code"] == code, (case, problem)
        field = ",".join(e["field"] for e in problem.get("errors", []))
        assert _job_count(api, tenant_b) == before, case
        rows.append({"case": case, "status": status, "code": code, "field": field, "jobs": 0})

    def failed_by_worker(case: str, body: dict[str, Any], code: str, says: str) -> None:
        """Accepted (the API cannot see the files), then failed by the worker before loading."""
        job = api.post("/v1/jobs", json=body, headers=tenant_b).json()
        done = wait_for_state(api, tenant_b, job["id"], worker=worker)
        assert done["state"] == "failed", (case, done)
        assert done["error"]["code"] == code and says in done["error"]["message"], (case, done)
        rows.append(
            {"case": case, "status": 202, "code": f"failed: {code}", "field": "", "jobs": 1}
        )

    def local(path: Path) -> dict[str, Any]:
        return tiny_job(model={"kind": "local", "path": path.name})

    # --- Code in model files -------------------------------------------------------------------
    failed_by_worker(
        "pickle-only checkpoint (pytorch_model.bin)",
        local(pickle_only_model(tiny_model_dir, models_root, markers)),
        "invalid_model",
        "pickle checkpoints",
    )
    failed_by_worker(
        "model naming its own code (config auto_map)",
        local(remote_code_model(tiny_model_dir, models_root, markers)),
        "invalid_model",
        "names its own code",
    )
    refused_at_submission(
        "trust_remote_code on a repo nobody allow-listed",
        tiny_job(model={"kind": "huggingface", "repo_id": "evil/model", "trust_remote_code": True}),
        403,
        "source_not_allowed",
    )
    # A pickle beside safetensors: the job runs, on the safetensors only.
    pickle_beside = local(pickle_beside_model(tiny_model_dir, models_root, markers))
    job = api.post("/v1/jobs", json=pickle_beside, headers=tenant_b).json()
    done = wait_for_state(api, tenant_b, job["id"], worker=worker)
    assert done["state"] == "succeeded", (done["error"], worker.tail())
    rows.append(
        {
            "case": "pickle beside safetensors",
            "status": 202,
            "code": "succeeded (pickle never read)",
            "field": "",
            "jobs": 1,
        }
    )

    # --- Sources that reach what they must not (SSRF, other tenants, the artifact store) -------
    for case, model in [
        ("free URL to the metadata service", {"kind": "url", "url": "http://169.254.169.254/"}),
        ("hub id that is a URL", {"kind": "huggingface", "repo_id": "http://169.254.169.254/x"}),
        ("hub revision with '..'", {"kind": "huggingface", "repo_id": "a/b", "revision": "../x"}),
        ("local path escaping the models dir", {"kind": "local", "path": "../../etc"}),
        ("local absolute path", {"kind": "local", "path": "/etc/passwd"}),
        ("GGUF name with a path", {"kind": "local", "path": "m", "gguf_file": "../x.gguf"}),
        ("s3 URI that is http", {"kind": "s3", "uri": "http://169.254.169.254/latest"}),
    ]:
        refused_at_submission(case, tiny_job(model=model), 422, "invalid_input")
    refused_at_submission(
        "dataset: s3 traversal out of an allowed prefix",
        tiny_job(evaluation={"dataset": {"kind": "s3", "uri": f"s3://{BUCKET}/models/../x"}}),
        422,
        "invalid_input",  # a '..' segment is not a well-formed source URI
    )
    for case, uri in [
        ("s3 bucket named like the metadata IP", "s3://169.254.169.254/latest/meta-data"),
        ("s3 bucket not allow-listed", "s3://someone-elses-bucket/model"),
        ("s3 artifact store (other jobs' outputs)", f"s3://{BUCKET}/artifacts/anything"),
        ("s3 another tenant's folder", f"s3://{BUCKET}/tenants/{tenant_a_id}/data/a.txt"),
    ]:
        refused_at_submission(
            f"dataset: {case}",
            tiny_job(evaluation={"dataset": {"kind": "s3", "uri": uri}}),
            403,
            "source_not_allowed",
        )
    refused_at_submission(
        "model: s3 artifact store",
        tiny_job(model={"kind": "s3", "uri": f"s3://{BUCKET}/artifacts"}),
        403,
        "source_not_allowed",
    )
    refused_at_submission(
        "webhook to the metadata service over http",
        tiny_job(webhook_url="http://169.254.169.254/latest"),
        422,
        "invalid_webhook_url",
    )
    for case, url in [
        ("webhook to the metadata service", "https://169.254.169.254/latest"),
        ("webhook to loopback over https", "https://127.0.0.2/hook"),
        ("webhook to IPv6 loopback", "https://[::1]/hook"),
        ("webhook to a private network", "https://10.0.0.7/hook"),
        ("webhook to a link-local v6 address", "https://[fe80::1]/hook"),
    ]:
        refused_at_submission(case, tiny_job(webhook_url=url), 403, "webhook_not_allowed")
    # Redirects: an allowed receiver answering 302 elsewhere is a failed delivery, not followed.
    parked = api.post(
        "/v1/jobs",
        json=tiny_job(device="gpu", webhook_url=redirecting_receiver["url"]),
        headers=tenant_b,
    ).json()
    wait_until(lambda: redirecting_receiver["redirects"] >= 2, timeout=30, what="2 deliveries")
    api.post(f"/v1/jobs/{parked['id']}/cancel", headers=tenant_b)
    assert redirecting_receiver["followed"] == 0
    rows.append(
        {
            "case": "webhook receiver answering 302 to an internal URL",
            "status": 202,
            "code": f"302 = failed attempt; followed {redirecting_receiver['followed']}",
            "field": "",
            "jobs": 1,
        }
    )

    # --- Sizes -----------------------------------------------------------------------------------
    refused_at_submission(
        "2 MB request body",
        {**tiny_job(), "labels": {"pad": "x" * 2_000_000}},
        413,
        "payload_too_large",
    )
    refused_at_submission(
        "17-stage recipe", tiny_job(recipe=[{"method": "rtn"}] * 17), 422, "invalid_input"
    )
    refused_at_submission(
        "21 labels", tiny_job(labels={f"k{i}": "v" for i in range(21)}), 422, "invalid_input"
    )
    refused_at_submission(
        "4097 calibration samples",
        tiny_job(calibration={"num_samples": 4097}),
        422,
        "invalid_input",
    )
    failed_by_worker(
        "3 GB model (limit 2 GB)",
        local(oversized_model(tiny_model_dir, models_root)),
        "invalid_model",
        "MAX_MODEL_BYTES",
    )
    failed_by_worker(
        "20 MB dataset (limit 10 MB)",
        tiny_job(evaluation={"dataset": {"kind": "s3", "uri": f"s3://{BUCKET}/data/huge.txt"}}),
        "data_error",
        "MAX_DATASET_BYTES",
    )

    # --- Tenant B guessing tenant A's ids --------------------------------------------------------
    finished = api.post("/v1/jobs", json=tiny_job(), headers=tenant_a).json()
    assert wait_for_state(api, tenant_a, finished["id"], worker=worker)["state"] == "succeeded"
    queued = api.post("/v1/jobs", json=tiny_job(device="gpu"), headers=tenant_a).json()
    job_paths = sorted(
        path
        for path in api.get("/openapi.json").json()["paths"]
        if path.startswith("/v1/jobs/{job_id}")
    )
    cross_reads = 0
    probes = 0
    for job_id in (finished["id"], queued["id"], str(uuid.uuid4())):
        for template in job_paths:
            path = template.replace("{job_id}", job_id)
            methods = api.get("/openapi.json").json()["paths"][template]
            for method in methods:
                response = api.request(method.upper(), path, headers=tenant_b)
                probes += 1
                if response.status_code != 404:
                    cross_reads += 1
                assert response.json()["code"] == "not_found", (method, path, response.text)
    listed = {
        j["id"]
        for j in api.get("/v1/jobs", params={"limit": 200}, headers=tenant_b).json()["items"]
    }
    cross_reads += len(listed & {finished["id"], queued["id"]})
    # B's attempts changed nothing of A's.
    assert api.get(f"/v1/jobs/{queued['id']}", headers=tenant_a).json()["state"] == "queued"
    api.post(f"/v1/jobs/{queued['id']}/cancel", headers=tenant_a)
    # A signed local-file link cannot be forged or walked out of the store.
    forged = api.get(
        "/v1/files/%2e%2e/%2e%2e/etc/passwd", params={"expires": 2**31, "signature": "0" * 64}
    )
    assert forged.status_code in (401, 404) and "root:" not in forged.text
    rows.append(
        {
            "case": f"tenant B on A's job ids ({probes} requests, {len(job_paths)} routes)",
            "status": 404,
            "code": "not_found",
            "field": "",
            "jobs": 0,
        }
    )
    rows.append(
        {
            "case": "forged /v1/files link with '..'",
            "status": forged.status_code,
            "code": forged.json()["code"],
            "field": "",
            "jobs": 0,
        }
    )

    executed = sorted(p.name for p in markers.iterdir())
    assert executed == [], f"hostile code ran: {executed}"
    assert cross_reads == 0
    record(
        "abuse",
        {"cases": len(rows), "executions": len(executed), "cross_tenant_reads": cross_reads}
        | {"rows": rows},
    )
