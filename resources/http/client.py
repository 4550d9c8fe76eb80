"""One server's client: a call with retries, finished within its deadline (see :mod:`resources.http`)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from resources.http.answers import HttpAnswer, HttpDeadlineExceeded, HttpProtocolError, HttpUnavailable
from resources.http.transport import DeadlineReached, HttpPolicy, deadline_watch, make_session

CHUNK = 64 * 1024


@dataclass
class HttpClient:
    """One server's base URL, policy and session. Thread-safe for calls; close() when done."""

    base_url: str
    policy: HttpPolicy = field(default_factory=HttpPolicy)
    name: str = ""
    retry_post: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    redact_path: bool = False
    """Name only scheme://host/… in errors: for URLs that carry a secret in their path (webhooks)."""
    _sessions: dict[bool, requests.Session] = field(default_factory=dict, repr=False)

    def session(self, retry_post: bool | None = None) -> requests.Session:
        """The session for this client's POST policy, or for ``retry_post`` when given."""
        flag = self.retry_post if retry_post is None else retry_post
        if flag not in self._sessions:
            session = make_session(self.policy, flag)
            session.headers.update(self.headers)
            self._sessions[flag] = session
        return self._sessions[flag]

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def endpoint(self, route: str) -> str:
        return self.base_url.rstrip("/") + "/" + route.lstrip("/") if route else self.base_url

    def shown(self, endpoint: str) -> str:
        if not self.redact_path:
            return endpoint
        parts = urlsplit(endpoint)
        return f"{parts.scheme}://{parts.netloc}/…"

    def _short(self, exc: BaseException, endpoint: str) -> str:
        text = _short(exc)
        path = urlsplit(endpoint).path
        return text.replace(path, "/…") if self.redact_path and len(path) > 1 else text

    def request(
        self,
        method: str,
        route: str,
        *,
        deadline_s: float | None = None,
        max_body_bytes: int | None = None,
        retry_post: bool | None = None,
        **kwargs: Any,
    ) -> HttpAnswer:
        """One call with retries, finished (body included) within ``deadline_s`` (policy default).
        ``retry_post`` overrides the client's choice for this call (e.g. a POST known to be safe).

        Any status comes back as an :class:`HttpAnswer` (check it with ``expect``/``json``);
        no answer at all raises :class:`HttpUnavailable` or :class:`HttpDeadlineExceeded`; a
        body over ``max_body_bytes`` raises :class:`HttpProtocolError`.
        """
        method = method.upper()
        endpoint = self.endpoint(route)
        shown = self.shown(endpoint)
        where = f"{method} {shown}"
        label = f"{self.name} " if self.name else ""
        deadline_s = deadline_s or self.policy.deadline_s
        limit = max_body_bytes or self.policy.max_body_bytes
        start = time.monotonic()
        late = f"{label}no complete answer within the {deadline_s:g} s deadline"
        with deadline_watch(deadline_s) as watch:
            try:
                response = self.session(retry_post).request(
                    method,
                    endpoint,
                    timeout=(min(self.policy.connect_timeout_s, deadline_s), min(self.policy.read_timeout_s, deadline_s)),
                    stream=True,
                    allow_redirects=False,
                    **kwargs,
                )
            except DeadlineReached as exc:
                raise HttpDeadlineExceeded(where, f"an answer within {deadline_s:g} s", f"{label}still failing: {exc}") from exc
            except requests.RequestException as exc:
                if watch.fired:
                    raise HttpDeadlineExceeded(where, f"an answer within {deadline_s:g} s", late) from exc
                if _is_read_timeout(exc):
                    raise HttpDeadlineExceeded(
                        where, f"an answer within {self.policy.read_timeout_s:g} s (read timeout)", f"{label}silence"
                    ) from exc
                raise HttpUnavailable(
                    where, "a connection", f"{label}{type(exc).__name__}: {self._short(exc, endpoint)} (after {self.policy.max_retries} retries)"
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
                        where, "a complete body", f"{label}{type(exc).__name__} after {size} bytes: {self._short(exc, endpoint)}", response.status_code
                    ) from exc
                if watch.fired:
                    raise HttpDeadlineExceeded(where, f"an answer within {deadline_s:g} s", f"{late} ({size} bytes read)")
                history = getattr(getattr(response.raw, "retries", None), "history", ()) or ()
                return HttpAnswer(
                    method=method,
                    endpoint=shown,
                    status=response.status_code,
                    headers=dict(response.headers),
                    body=b"".join(chunks),
                    elapsed_s=time.monotonic() - start,
                    retries=len(history),
                )

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
