"""An HTTP proxy in front of the moto S3 server that injects the faults a real object store
shows: 503 SlowDown answers, bytes changed on the way, refused connections (the proxy stops
listening). boto3 talks to it over HTTP like to any S3 endpoint."""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from tests.support.services import free_port

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Faults:
    """Which uploads (PUT/POST) to spoil: the first `count` of them (-1: all), and how."""

    mode: str = "pass"  # pass | slow_down | corrupt
    count: int = 0
    only_suffix: str = ""  # only keys ending with this
    injected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, method: str, path: str) -> str:
        if method not in ("PUT", "POST") or not path.split("?")[0].endswith(self.only_suffix):
            return "pass"
        with self.lock:
            if self.mode == "pass" or (self.count >= 0 and self.injected >= self.count):
                return "pass"
            self.injected += 1
            return self.mode


class S3FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlparse(upstream)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults = Faults()
        self.server: ThreadingHTTPServer | None = None

    def set(self, mode: str, count: int = -1, only_suffix: str = "") -> None:
        self.faults = Faults(mode=mode, count=count, only_suffix=only_suffix)

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    parts = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(parts)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self) -> None:
                body = self._body()
                fault = proxy.faults.take(self.command, self.path)
                if fault == "slow_down":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                if fault == "corrupt" and body:
                    middle = len(body) // 2  # inside the data, not the chunk framing
                    body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "transfer-encoding", "content-length")
                }
                headers["Host"] = self.headers.get("Host", "")
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                payload = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening: every new connection is refused."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
