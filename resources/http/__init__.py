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

from resources.http.answers import (
    JSON_MEDIA_TYPES,
    HttpAnswer,
    HttpDeadlineExceeded,
    HttpError,
    HttpProtocolError,
    HttpUnavailable,
    server_message,
)
from resources.http.client import HttpClient
from resources.http.transport import RETRY_STATUSES, HttpPolicy, SpecRetry, backoff_delay, make_session, spec_retry

__all__ = [
    "JSON_MEDIA_TYPES",
    "RETRY_STATUSES",
    "HttpAnswer",
    "HttpClient",
    "HttpDeadlineExceeded",
    "HttpError",
    "HttpPolicy",
    "HttpProtocolError",
    "HttpUnavailable",
    "SpecRetry",
    "backoff_delay",
    "make_session",
    "server_message",
    "spec_retry",
]
