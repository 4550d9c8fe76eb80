"""The transport every TTS server backend shares: ``resources/http.py``, with the voice rules.

The HTTP backends speak the servers' public protocols (SPEC "External protocols"):
``GptSovitsBackend`` (api_v2 ``POST /tts``), ``KokoroBackend`` (``POST /v1/audio/speech``)
and ``XttsBackend`` (xtts-api-server ``POST /tts_to_audio/``). All three go through the one
shared :class:`resources.http.HttpClient`: SPEC retries with jittered backoff on connection
errors and 5xx (TTS requests have no side effects, so POST is retried), an overall deadline per
request that a server dripping its body cannot stretch, and a bounded body. On top of it: a
read timeout is reported, not retried (the server may still be synthesising, and a second
request would queue behind the first); a 4xx becomes an error carrying the server's own
message; and the body must be a decodable RIFF/WAVE file before anything is returned, so an
error page is never stored as audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import requests
from pydantic import Field, PrivateAttr

from hydra_assets.domain.audio import Audio, decode_wav
from hydra_assets.domain.roster import VoiceDNA
from resources.http import (
    HttpAnswer,
    HttpClient,
    HttpDeadlineExceeded,
    HttpError,
    HttpPolicy,
    HttpUnavailable,
    server_message,
)
from resources.voice.base import (
    VoiceBackend,
    VoiceBackendUnavailable,
    VoiceConfigError,
    VoiceRequestError,
    VoiceServerError,
    VoiceTimeoutError,
)

SERVER_ERROR_STATUSES = frozenset({429, *range(500, 600)})
"""Retried: a TTS server answers 500 for a transient CUDA out-of-memory as often as 503."""


class _TtsClient(HttpClient):
    """The shared client, except that a read timeout is never retried (see the module docstring)."""

    def session(self, retry_post: bool | None = None) -> requests.Session:
        session = super().session(retry_post)
        for adapter in session.adapters.values():
            if adapter.max_retries.read is not False:
                adapter.max_retries = adapter.max_retries.new(read=False)
        return session


class HttpVoiceBackend(VoiceBackend):
    """A TTS server behind the shared HTTP transport; the model runs in the server's pod."""

    url: str = Field(description="Base URL of the server, e.g. http://tts.hydra.svc:9880")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0, description="Longest silence while waiting for a line's audio.")
    deadline_s: float = Field(
        default=300.0, gt=0, description="Longest one request may take as a whole: every attempt, wait and byte."
    )
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries on connection errors and 5xx (SPEC: 3).")
    backoff_base_s: float = Field(default=1.0, ge=0, description="First retry waits up to this long; doubles after.")
    backoff_cap_s: float = Field(default=30.0, ge=0, description="Longest wait between two attempts.")
    check_reference_files: bool = Field(
        default=True,
        description="Check reference clips and weights exist here (shared storage); off when only the server sees them.",
    )

    runs_in_pod: ClassVar[bool] = False

    _client: HttpClient | None = PrivateAttr(default=None)

    def client(self) -> HttpClient:
        if self._client is None:
            policy = HttpPolicy(
                connect_timeout_s=self.connect_timeout_s,
                read_timeout_s=self.read_timeout_s,
                deadline_s=self.deadline_s,
                max_retries=self.max_retries,
                backoff_base_s=self.backoff_base_s,
                backoff_cap_s=self.backoff_cap_s,
                retry_statuses=SERVER_ERROR_STATUSES,
            )
            self._client = _TtsClient(self.url, policy, name=self.backend_name(), retry_post=True)
        return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def endpoint(self, route: str) -> str:
        return self.client().endpoint(route)

    def request(self, method: str, route: str, **kwargs: Any) -> HttpAnswer:
        """One request with retries; a 4xx, an exhausted 5xx or a timeout becomes a typed error."""
        endpoint = self.endpoint(route)
        try:
            answer = self.client().request(method, route, **kwargs)
        except HttpDeadlineExceeded as exc:
            if "read timeout" in exc.expected:
                raise VoiceTimeoutError(f"{endpoint}: no answer within {self.read_timeout_s:g} s (read_timeout_s)") from exc
            raise VoiceTimeoutError(
                f"{endpoint}: no complete answer within {self.deadline_s:g} s (deadline_s): {exc.got}"
            ) from exc
        except HttpUnavailable as exc:
            raise VoiceBackendUnavailable(
                f"{self.backend_name()} at {endpoint}: cannot connect after {self.max_retries} retries ({exc.got})"
            ) from exc
        except HttpError as exc:
            raise VoiceServerError(str(exc)) from exc
        if 400 <= answer.status < 500 and answer.status not in SERVER_ERROR_STATUSES:
            raise VoiceRequestError(endpoint, answer.status, server_message(answer.body))
        if answer.status >= 400:
            raise VoiceServerError(
                f"{endpoint}: HTTP {answer.status} after {answer.retries} retries: {server_message(answer.body)}"
            )
        return answer

    def request_audio(self, method: str, route: str, **kwargs: Any) -> Audio:
        answer = self.request(method, route, **kwargs)
        return decode_wav(answer.body, f"{self.backend_name()} {self.endpoint(route)}", answer.headers.get("Content-Type"))

    def checked_file(self, slug: str, path: str, what: str, how: str) -> str:
        if self.check_reference_files and not Path(path).expanduser().is_file():
            raise VoiceConfigError(
                f"{slug}: {what} {path} not found: {how}; if only the TTS server can read it, "
                f"set {type(self).__name__}.check_reference_files=false"
            )
        return path

    def first_reference_clip(self, slug: str, voice: VoiceDNA) -> str:
        if not voice.reference_clips:
            raise VoiceConfigError(
                f"{slug}: voice_dna.reference_clips is empty: {self.backend_name()} clones the queen's voice "
                f"from a reference clip; add a 3-10 s WAV of her voice to the roster file"
            )
        for clip in voice.reference_clips:
            self.checked_file(slug, clip, "reference clip (voice_dna.reference_clips)", "put the clip there or fix the path")
        return voice.reference_clips[0]
