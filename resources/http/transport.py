"""Retries and the deadline watchdog under every call (see :mod:`resources.http`)."""

from __future__ import annotations

import contextvars
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

RETRY_STATUSES = frozenset({429, 502, 503, 504})


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


class DeadlineReached(Exception):
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
            raise DeadlineReached(f"next retry would wait {delay:.1f}s, past the deadline")
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
        self.done = False
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

    def finish(self) -> None:
        """The call is over: its sockets may serve other calls now, never shut them down."""
        with self._lock:
            self.done = True

    def fire(self) -> None:
        with self._lock:
            if self.done:
                return
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


@contextmanager
def deadline_watch(deadline_s: float) -> Iterator[_Watch]:
    """Within the block, sockets that calls open or reuse are shut down when ``deadline_s`` passes
    (a blocked read then returns at once) and no retry waits past it."""
    watch = _Watch(time.monotonic() + deadline_s)
    timer = threading.Timer(deadline_s, watch.fire)
    timer.daemon = True
    token = _CURRENT_WATCH.set(watch)
    timer.start()
    try:
        yield watch
    finally:
        watch.finish()
        timer.cancel()
        _CURRENT_WATCH.reset(token)
