"""413 for request bodies over MAX_REQUEST_BYTES, before anything parses them.

A pure ASGI middleware: a declared Content-Length over the limit is refused at once; a chunked
body is counted as it streams and refused when it crosses the limit, so a client cannot make
the API buffer an unbounded body by leaving the length out.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import problem


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        # Read the body here (at most max_bytes + one chunk held), then replay it: the
        # framework turns errors raised while it reads a body into a 400.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away: let the app see its disconnect
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            "payload_too_large",
            f"request body larger than {self.max_bytes} bytes",
            instance=scope.get("path", ""),
            errors=[{"field": "body", "message": f"at most {self.max_bytes} bytes"}],
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
