"""The one HTTP transport every backend shares: SPEC retries, an overall deadline, answer checks.

Why one module: the ComfyUI, TTS, LLM and webhook clients each grew their own loop of
timeouts and retries, and none of them bounded a call as a whole. Here:

- **Retries** are urllib3's (:class:`SpecRetry` on the session's adapters): at most
  ``max_retries`` (SPEC: 3), on connection errors and on 429/502/503/504, waiting SPEC's
  ``min(base·2^n, cap)`` with equal jitter, or the server's ``Retry-After`` (capped at ``cap``).
  A read error or a retryable status on POST is retried only when the caller says the POST is
  safe to repeat (``retry_post=True``); a connection error is always retried, because the
  request never left. A wait that would end past the call's deadline is not taken.
- **The deadline** covers the whole call: every attempt, every wait, the headers and the
  body. Per-read socket timeouts do not: a server that drips one byte per second never
  trips them. Each call starts a watchdog timer that shuts down the call's sockets when the
  deadline passes, so a blocked read returns at once, and the body is streamed against the
  same monotonic clock and a size bound.
- **Checks**: :meth:`HttpAnswer.expect` / :meth:`HttpAnswer.json` verify status, media type,
  that the JSON decodes and (with a pydantic type) its shape. Every failure is an
  :class:`HttpError` naming the endpoint, what was expected and what came back.

Use::

    client = HttpClient("http://tts:9880", HttpPolicy(deadline_s=120), name="gpt-sovits")
    answer = client.request("POST", "/tts", json=body).expect(200, media_type="audio/wav")
    data = client.request("GET", "/history/x").json(HistoryModel)
"""

from __future__ import annotations

import contextvars
import json
import random
import re
import socket
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

RETRY_STATUSES = frozenset({429, 502, 503, 504})
JSON_MEDIA_TYPES = ("application/json", "application/problem+json")
CHUNK = 64 * 1024


# --- errors ----------------------------------------------------------------------------------


class HttpError(RuntimeError):
    """A call that did not give what the protocol says: names the endpoint, the expectation and
    what came instead. ``status`` is the HTTP status when an answer arrived."""

    def __init__(self, endpoint: str, expected: str, got: str, status: int | None = None):
        super().__init__(f"{endpoint}: expected {expected}; got {got}")
        self.endpoint = endpoint
        self.expected = expected
        self.got = got
        self.status = status


class HttpUnavailable(HttpError):
    """No answer at all: connection refused/reset, or a retryable status through every retry."""


class HttpDeadlineExceeded(HttpError):
    """The call (attempts, waits, headers, body) did not finish within its overall deadline."""


class HttpProtocolError(HttpError):
    """An answer arrived but is not what the protocol says (status, media type, JSON, shape, size)."""


# --- policy and retries ------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpPolicy:
    """How long and how often one call may try. Defaults follow SPEC (3 retries, jittered backoff)."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    deadline_s: float = 60.0
    max_retries: int = 3
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    retry_statuses: frozenset[int] = RETRY_STATUSES

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "read_timeout_s", "deadline_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HttpPolicy.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.max_retries <= 10:
            raise ValueError(f"HttpPolicy.max_retries must be in 0..10 (SPEC: 3), got {self.max_retries!r}")
        if self.backoff_base_s < 0 or self.backoff_cap_s < 0 or self.max_body_bytes <= 0:
            raise ValueError("HttpPolicy: backoff_base_s/backoff_cap_s must be >= 0 and max_body_bytes > 0")


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """SPEC's min(base·2^attempt, cap) with 'equal jitter': uniform in its upper half, so the wait
    always grows and clients that failed together do not come back together."""
    ceiling = min(base_s * 2**attempt, cap_s)
    return (rng or random).uniform(ceiling / 2, ceiling)


class _DeadlineReached(Exception):
    """Raised inside urllib3's retry loop when the next wait would end past the call's deadline."""


class SpecRetry(Retry):
    """urllib3's Retry with SPEC's delay, a capped Retry-After, and the call's deadline."""

    def get_backoff_time(self) -> float:
        retries = len(self.history)
        if retries == 0:
            return 0.0
        return backoff_delay(retries - 1, self.backoff_factor, self.backoff_max)

    def sleep(self, response: Any = None) -> None:
        delay = None
        if self.respect_retry_after_header and response is not None:
            delay = self.get_retry_after(response)
        if delay is None:
            delay = self.get_backoff_time()
        watch = _CURRENT_WATCH.get()
        if watch is not None and time.monotonic() + delay >= watch.deadline:
            raise _DeadlineReached(f"next retry would wait {delay:.1f}s, past the deadline")
        if delay > 0:
            time.sleep(delay)


def spec_retry(policy: HttpPolicy, retry_post: bool = False) -> SpecRetry:
    """The Retry every session mounts. Read errors and statuses are retried only for idempotent
    methods, plus POST when ``retry_post`` (the caller knows repeating it has no side effect)."""
    methods = set(Retry.DEFAULT_ALLOWED_METHODS) | ({"POST"} if retry_post else set())
    return SpecRetry(
        total=policy.max_retries,
        connect=policy.max_retries,
        read=policy.max_retries if retry_post else False,  # False: a read timeout is raised as it is
        status=policy.max_retries,
        other=0,
        redirect=0,
        allowed_methods=frozenset(methods),
        status_forcelist=sorted(policy.retry_statuses),
        backoff_factor=policy.backoff_base_s,
        backoff_max=policy.backoff_cap_s,
        retry_after_max=policy.backoff_cap_s,
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=False,
    )


# --- the watchdog: sockets of the current call are shut down at its deadline ------------------


class _Watch:
    def __init__(self, deadline: float):
        self.deadline = deadline
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_CURRENT_WATCH: contextvars.ContextVar[_Watch | None] = contextvars.ContextVar("hydra_http_watch", default=None)


class _WatchedMixin:
    """Registers the connection's socket with the current call's watch, and never lets a connect
    wait past the deadline."""

    sock: socket.socket | None
    timeout: Any

    def connect(self) -> None:
        watch = _CURRENT_WATCH.get()
        if watch is not None:
            left = max(watch.remaining(), 0.01)
            if self.timeout is None or (isinstance(self.timeout, (int, float)) and self.timeout > left):
                self.timeout = left
        super().connect()  # type: ignore[misc]
        if watch is not None:
            watch.add(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        watch = _CURRENT_WATCH.get()
        if watch is not None and self.sock is not None:
            watch.add(self.sock)  # a kept-alive connection: connect() is not called again
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _HTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def make_session(policy: HttpPolicy | None = None, retry_post: bool = False) -> requests.Session:
    """A requests.Session whose adapters retry with :func:`spec_retry` and whose sockets the
    deadline watchdog of :meth:`HttpClient.request` can reach."""
    policy = policy or HttpPolicy()
    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, _WatchedAdapter(max_retries=spec_retry(policy, retry_post)))
    return session


# --- answers ---------------------------------------------------------------------------------


def server_message(body: bytes | str | Any, limit: int = 300) -> str:
    """The server's own words from an error body: JSON ``message``/``detail``/``error`` (OpenAI's
    ``{error: {message}}``, FastAPI's ``detail`` list), else the text, whitespace folded."""
    if isinstance(body, (bytes, str)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            body = json.loads(text)
        except ValueError:
            return re.sub(r"\s+", " ", text).strip()[:limit] or "(empty body)"
    return _message_from(body)[:limit]


def _message_from(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "detail", "error", "msg"):
            if body.get(key):
                return _message_from(body[key])
        return json.dumps(body)
    if isinstance(body, list):
        parts = []
        for item in body:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(_message_from(item))
        return "; ".join(parts)
    return str(body)


@dataclass(frozen=True)
class HttpAnswer:
    """A complete answer (body read within the deadline). ``retries``: attempts after the first."""

    method: str
    endpoint: str
    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed_s: float
    retries: int = 0

    @property
    def where(self) -> str:
        return f"{self.method} {self.endpoint}"

    @property
    def media_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def describe(self) -> str:
        after = f" after {self.retries} retries" if self.retries else ""
        return f"HTTP {self.status}{after}: {server_message(self.body)}"

    def expect(self, statuses: int | Collection[int] = (200,), media_type: str | Iterable[str] | None = None) -> HttpAnswer:
        """This answer if its status and media type are what the protocol says, else HttpProtocolError
        (HttpUnavailable when a retryable status outlived every retry)."""
        wanted = {statuses} if isinstance(statuses, int) else set(statuses)
        if self.status not in wanted:
            error = HttpUnavailable if self.status in RETRY_STATUSES or self.status >= 500 else HttpProtocolError
            raise error(self.where, f"HTTP {' or '.join(map(str, sorted(wanted)))}", self.describe(), self.status)
        if media_type is not None:
            types = (media_type,) if isinstance(media_type, str) else tuple(media_type)
            if not any(self.media_type == t or (t.endswith("/*") and self.media_type.startswith(t[:-1])) for t in types):
                raise HttpProtocolError(
                    self.where, f"media type {' or '.join(types)}", f"{self.media_type or 'no Content-Type'}", self.status
                )
        return self

    def json(self, shape: Any = None, expected: str | None = None, statuses: int | Collection[int] = (200,)) -> Any:
        """The decoded JSON body after :meth:`expect` (JSON media type); with ``shape`` (a pydantic
        model or any type pydantic validates) the validated value."""
        self.expect(statuses, JSON_MEDIA_TYPES)
        what = expected or (f"JSON {getattr(shape, '__name__', shape)}" if shape is not None else "a JSON body")
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise HttpProtocolError(self.where, what, f"undecodable JSON ({exc}): {self.text[:120]!r}", self.status) from exc
        if shape is None:
            return value
        try:
            return pydantic.TypeAdapter(shape).validate_python(value)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])
            raise HttpProtocolError(self.where, what, f"a body that does not match ({problems})", self.status) from exc


# --- the client ------------------------------------------------------------------------------


@dataclass
class HttpClient:
    """One server's base URL, policy and session. Thread-safe for calls; close() when done."""

    base_url: str
    policy: HttpPolicy = field(default_factory=HttpPolicy)
    name: str = ""
    retry_post: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    _session: requests.Session | None = field(default=None, repr=False)

    def session(self) -> requests.Session:
        if self._session is None:
            self._session = make_session(self.policy, self.retry_post)
            self._session.headers.update(self.headers)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def endpoint(self, route: str) -> str:
        return self.base_url.rstrip("/") + "/" + route.lstrip("/") if route else self.base_url

    def request(
        self,
        method: str,
        route: str,
        *,
        deadline_s: float | None = None,
        max_body_bytes: int | None = None,
        **kwargs: Any,
    ) -> HttpAnswer:
        """One call with retries, finished (body included) within ``deadline_s`` (policy default).

        Any status comes back as an :class:`HttpAnswer` (check it with ``expect``/``json``);
        no answer at all raises :class:`HttpUnavailable` or :class:`HttpDeadlineExceeded`; a
        body over ``max_body_bytes`` raises :class:`HttpProtocolError`.
        """
        method = method.upper()
        endpoint = self.endpoint(route)
        where = f"{method} {endpoint}"
        label = f"{self.name} " if self.name else ""
        deadline_s = deadline_s or self.policy.deadline_s
        limit = max_body_bytes or self.policy.max_body_bytes
        start = time.monotonic()
        watch = _Watch(start + deadline_s)
        timer = threading.Timer(deadline_s, watch.fire)
        timer.daemon = True
        token = _CURRENT_WATCH.set(watch)
        timer.start()
        late = f"{label}no complete answer within the {deadline_s:g} s deadline"
        try:
            try:
                response = self.session().request(
                    method,
                    endpoint,
                    timeout=(min(self.policy.connect_timeout_s, deadline_s), min(self.policy.read_timeout_s, deadline_s)),
                    stream=True,
                    allow_redirects=False,
                    **kwargs,
                )
            except _DeadlineReached as exc:
                raise HttpDeadlineExceeded(where, f"an answer within {deadline_s:g} s", f"{label}still failing: {exc}") from exc
            except requests.RequestException as exc:
                if watch.fired:
                    raise HttpDeadlineExceeded(where, f"an answer within {deadline_s:g} s", late) from exc
                if _is_read_timeout(exc):
                    raise HttpDeadlineExceeded(
                        where, f"an answer within {self.policy.read_timeout_s:g} s (read timeout)", f"{label}silence"
                    ) from exc
                raise HttpUnavailable(
                    where, "a connection", f"{label}{type(exc).__name__}: {_short(exc)} (after {self.policy.max_retries} retries)"
                ) from exc
            with response:
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise HttpProtocolError(where, f"a body of at most {limit} bytes", f"Content-Length {declared}", response.status_code)
                chunks: list[bytes] = []
                size = 0
                try:
                    for chunk in response.raw.stream(CHUNK, decode_content=True):
                        size += len(chunk)
                        if size > limit:
                            raise HttpProtocolError(where, f"a body of at most {limit} bytes", f"more than {limit} bytes", response.status_code)
                        chunks.append(chunk)
                        if watch.remaining() <= 0:
                            raise HttpDeadlineExceeded(where, f"an answer within {deadline_s:g} s", f"{late} ({size} bytes read)")
                except (requests.RequestException, OSError, Urllib3Error) as exc:
                    if watch.fired or watch.remaining() <= 0:
                        raise HttpDeadlineExceeded(where, f"an answer within {deadline_s:g} s", f"{late} ({size} bytes read)") from exc
                    raise HttpProtocolError(
                        where, "a complete body", f"{label}{type(exc).__name__} after {size} bytes: {_short(exc)}", response.status_code
                    ) from exc
                if watch.fired:
                    raise HttpDeadlineExceeded(where, f"an answer within {deadline_s:g} s", f"{late} ({size} bytes read)")
                history = getattr(getattr(response.raw, "retries", None), "history", ()) or ()
                return HttpAnswer(
                    method=method,
                    endpoint=endpoint,
                    status=response.status_code,
                    headers=dict(response.headers),
                    body=b"".join(chunks),
                    elapsed_s=time.monotonic() - start,
                    retries=len(history),
                )
        finally:
            timer.cancel()
            _CURRENT_WATCH.reset(token)

    def get_json(self, route: str, shape: Any = None, **kwargs: Any) -> Any:
        return self.request("GET", route, **kwargs).json(shape)

    def post_json(self, route: str, body: Any, shape: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", route, json=body, **kwargs).json(shape)


def _is_read_timeout(exc: BaseException) -> bool:
    """requests reports a read timeout as ReadTimeout, or (after read retries) as a ConnectionError
    wrapping urllib3's MaxRetryError(ReadTimeoutError)."""
    if isinstance(exc, requests.ReadTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, ReadTimeoutError)


def _short(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return text[:240]
