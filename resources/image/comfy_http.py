"""ComfyUI's HTTP and WebSocket transport with overall deadlines.

A socket timeout bounds one ``recv``; a server that trickles a byte now and then never trips
it. Every HTTP call goes through the shared client (:mod:`resources.http`) with one overall
deadline, its own timeout capped by the step's; the websocket's handshake and every frame
are bounded by the same client's deadline watch (``deadline_watch``)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import websocket

from resources.http import HttpClient, HttpError, HttpPolicy
from resources.http.transport import deadline_watch


class ComfyUIError(RuntimeError):
    pass


class ComfyUIValidationError(ComfyUIError):
    """POST /prompt answered 400: the graph was refused. ``node_errors`` is ComfyUI's own."""

    def __init__(self, message: str, node_errors: dict[str, Any]):
        super().__init__(message)
        self.node_errors = node_errors


class ComfyUITimeout(ComfyUIError):
    pass


class ComfyUIUnavailable(ComfyUIError):
    """The server did not answer (connection errors, deadlines or 5xx) through every retry."""


class ComfyUIStepDeadline(ComfyUITimeout):
    """The whole step's deadline passed."""


class TransportError(ComfyUIError):
    """One call failed to get a complete answer (refused, reset, or past its deadline)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.reason = reason


@dataclass
class Answer:
    status: int
    body: bytes
    url: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """Raises ValueError on a body that is not JSON."""
        return json.loads(self.body)


def multipart(fields: Mapping[str, str], file_field: str, file_name: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{file_name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Transport:
    """HTTP calls to one ComfyUI, each bounded by min(its timeout, the step deadline)."""

    def __init__(self, base_url: str, timeout_s: float, step_deadline: float):
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.root = parts.path
        self.timeout_s = timeout_s
        self.step_deadline = step_deadline
        policy = HttpPolicy(connect_timeout_s=min(5.0, timeout_s), read_timeout_s=timeout_s, deadline_s=timeout_s, max_retries=0)
        self.client = HttpClient(self.base_url, policy, name="ComfyUI")

    def url(self, path: str) -> str:
        return self.base_url + path

    def ws_url(self, client_id: str) -> str:
        parts = urlsplit(self.base_url)
        return urlunsplit(("wss" if self.https else "ws", parts.netloc, parts.path + "/ws", f"clientId={client_id}", ""))

    def remaining(self) -> float:
        return self.step_deadline - time.monotonic()

    def check_step(self, what: str) -> None:
        if self.remaining() <= 0:
            raise ComfyUIStepDeadline(f"{what}: the step's overall deadline passed")

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout_s: float | None = None,
    ) -> Answer:
        """One complete answer (any status), or TransportError naming the URL and why. The
        shared client (resources.http) bounds the call, trickling included; retries are the
        backend's, since ComfyUI's POST /prompt must ask before it repeats."""
        url = self.url(path) + (f"?{urlencode(params)}" if params else "")
        self.check_step(f"{method} {url}")
        limit = min(timeout_s or self.timeout_s, self.remaining())
        headers = {"Content-Type": content_type} if content_type else None
        try:
            answer = self.client.request(method, path, deadline_s=max(limit, 0.01), params=params, json=json_body, data=body, headers=headers)
        except HttpError as exc:
            raise TransportError(f"{method} {url}", exc.got) from exc
        return Answer(answer.status, answer.body, url)

    def close(self) -> None:
        self.client.close()


TIMEOUT = object()


class EventStream:
    """ComfyUI's /ws for one client id; closes itself (and says so) when the socket drops.
    Connecting and each frame are bounded by the shared deadline watch too."""

    def __init__(self, transport: Transport, client_id: str, connect_timeout: float, log: Any):
        self.url = transport.ws_url(client_id)
        self.log = log
        self.ws: websocket.WebSocket | None = None
        limit = min(connect_timeout, max(transport.remaining(), 0.01))
        with deadline_watch(limit) as watch:
            try:
                sock = socket.create_connection((transport.host, transport.port), timeout=limit)
                watch.add(sock)
                self.ws = websocket.create_connection(self.url, timeout=limit, socket=sock)
            except (OSError, websocket.WebSocketException) as exc:
                why = "no handshake within its deadline" if watch.fired else exc
                log.warning(f"ComfyUI websocket {self.url} unavailable ({why}); following prompts by polling /history")
                self.ws = None

    @property
    def alive(self) -> bool:
        return self.ws is not None

    def next(self, timeout: float) -> Any:
        """The next JSON message, ``None`` for one to ignore, or ``TIMEOUT``."""
        if self.ws is None:
            return TIMEOUT
        wait = max(timeout, 0.01)
        self.ws.settimeout(wait)
        with deadline_watch(wait + 1.0) as watch:  # a frame trickled in stays bounded
            watch.add(self.ws.sock)
            try:
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                return TIMEOUT
            except (websocket.WebSocketException, OSError) as exc:
                self._lost("a frame took past its deadline" if watch.fired else (str(exc) or type(exc).__name__))
                return TIMEOUT
            if watch.fired:
                self._lost("a frame took past its deadline")
                return TIMEOUT
        if isinstance(frame, bytes):
            return None  # binary frames are previews
        if frame == "":
            self._lost("closed by the server")
            return TIMEOUT
        try:
            message = json.loads(frame)
        except json.JSONDecodeError:
            return None
        return message if isinstance(message, dict) else None

    def _lost(self, why: str) -> None:
        self.log.warning(f"ComfyUI websocket {self.url} lost ({why}); falling back to polling /history")
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception:  # closing a broken socket may fail in many ways; it is gone either way
                pass
            self.ws = None


def describe_prompt_rejection(url: str, prompt_id: str, body: Any) -> str:
    """ComfyUI's 400 body as one line naming each node, its class, the input and the message."""
    if not isinstance(body, dict):
        return f"{url} rejected prompt {prompt_id}: {str(body)[:500]}"
    error = body.get("error")
    if isinstance(error, dict):
        head = error.get("message") or error.get("type") or "invalid prompt"
        if error.get("type") and error.get("type") != head:
            head = f"{head} ({error['type']})"
    else:
        head = str(error or "invalid prompt")
    parts = []
    node_errors = body.get("node_errors") or {}
    if isinstance(node_errors, dict):
        for node_id, node in node_errors.items():
            class_type = node.get("class_type", "?") if isinstance(node, dict) else "?"
            for reason in (node.get("errors") or []) if isinstance(node, dict) else []:
                extra = reason.get("extra_info") or {}
                input_name = extra.get("input_name")
                where = f"node {node_id} ({class_type})" + (f" input {input_name!r}" if input_name else "")
                detail = f": {reason['details']}" if reason.get("details") else ""
                parts.append(f"{where}: {reason.get('message', reason.get('type', 'error'))}{detail}")
    if not parts and isinstance(error, dict) and error.get("details"):
        parts.append(str(error["details"]))
    return f"{url} rejected prompt {prompt_id}: {head}" + (" - " + "; ".join(parts) if parts else "")
