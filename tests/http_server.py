"""A local HTTP server whose answers each test scripts, for the shared transport and its clients.

``ScriptedServer`` runs ``http.server.ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a
thread. Each request is recorded (method, path, headers, JSON body) and answered by the next
of the test's behaviours for that route (the last one repeats): a status with a body, a body
dripped byte by byte, headers dripped, a connection closed without an answer, a
``Retry-After``. :mod:`tests.test_llm` builds an OpenAI-style chat-completions app on it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = Callable[["Handler", "Recorded"], None]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


def answer(status: int = 200, body: bytes | str | Any = b"", content_type: str = "application/json",
           headers: dict[str, str] | None = None) -> Behaviour:
    """A plain answer; a dict/list body is sent as JSON."""
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    data = body.encode() if isinstance(body, str) else body

    def behave(handler: Handler, _: Recorded) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    return behave


def drip_body(total_bytes: int = 10_000, interval_s: float = 0.1, content_type: str = "application/json") -> Behaviour:
    """Headers at once, then one byte every ``interval_s``: each read is quick, the whole is not."""

    def behave(handler: Handler, _: Recorded) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(total_bytes))
        handler.end_headers()
        for _i in range(total_bytes):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(interval_s)

    return behave


def drip_headers(count: int = 10_000, interval_s: float = 0.1) -> Behaviour:
    """The status line, then one header line every ``interval_s``: the headers never end in time."""

    def behave(handler: Handler, _: Recorded) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(count):
            handler.wfile.write(f"X-Drip-{i}: x\r\n".encode())
            handler.wfile.flush()
            time.sleep(interval_s)

    return behave


def close_connection() -> Behaviour:
    """Read the request, then close the socket without a byte of answer."""

    def behave(handler: Handler, _: Recorded) -> None:
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    return behave


def silence(seconds: float) -> Behaviour:
    def behave(handler: Handler, rec: Recorded) -> None:
        time.sleep(seconds)
        answer(200, {"late": True})(handler, rec)

    return behave


class Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        rec = Recorded(self.command, self.path, dict(self.headers), raw, time.monotonic())
        behaviour = self.server.owner.next_behaviour(rec)
        try:
            behaviour(self, rec)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ScriptedServer


@dataclass
class ScriptedServer:
    """``routes``: path (without query) -> behaviours, used in order, the last repeating."""

    routes: dict[str, list[Behaviour]] = field(default_factory=dict)
    default: Behaviour = field(default_factory=lambda: answer(404, {"error": {"message": "no such route"}}))
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def script(self, path: str, *behaviours: Behaviour) -> ScriptedServer:
        with self._lock:
            self.routes[path] = list(behaviours)
        return self

    def next_behaviour(self, rec: Recorded) -> Behaviour:
        with self._lock:
            self.requests.append(rec)
            queue = self.routes.get(rec.path.split("?")[0])
            if not queue:
                return self.default
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def hits(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?")[0] == path]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def free_port_refusing() -> str:
    """A URL on which nothing listens (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
