"""What came back from a call, the checks of it, and the one error family (see :mod:`resources.http`)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from resources.http.transport import RETRY_STATUSES

JSON_MEDIA_TYPES = ("application/json", "application/problem+json")


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
