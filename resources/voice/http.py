"""The transport every TTS server backend shares.

The HTTP backends speak the servers' public protocols (SPEC "External protocols"):
``GptSovitsBackend`` (api_v2 ``POST /tts``), ``KokoroBackend`` (``POST /v1/audio/speech``)
and ``XttsBackend`` (xtts-api-server ``POST /tts_to_audio/``). All three share the transport:
connect and read timeouts; retries on connection errors and 5xx with exponential backoff and
jitter (urllib3's retry machinery, SPEC's delay formula); a 4xx becomes an error carrying the
server's own message; and the body must be a decodable RIFF/WAVE file before anything is
returned, so an error page is never stored as audio.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import requests
from pydantic import Field, PrivateAttr
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from hydra_assets.domain.audio import Audio, decode_wav
from hydra_assets.domain.roster import VoiceDNA
from resources.voice.base import (
    VoiceBackend,
    VoiceBackendUnavailable,
    VoiceConfigError,
    VoiceRequestError,
    VoiceServerError,
    VoiceTimeoutError,
)


class SpecBackoffRetry(Retry):
    """urllib3's retry machinery with SPEC's delay: min(base·2^retry, cap), half of it jittered.

    The wait before retry ``n`` (from 0) is uniform in [d/2, d] with d = min(base·2^n, cap):
    it always grows, so a struggling server is not hammered, and parallel steps spread out.
    """

    def get_backoff_time(self) -> float:
        retries = len(self.history)
        if retries == 0:
            return 0.0
        ceiling = min(self.backoff_max, self.backoff_factor * 2 ** (retries - 1))
        return ceiling / 2 + random.uniform(0.0, ceiling / 2)


def server_message(response: requests.Response) -> str:
    """The server's own words from an error response (JSON ``message``/``detail``, else the text)."""
    try:
        body = response.json()
    except ValueError:
        text = re.sub(r"\s+", " ", response.text).strip()
        return text[:300] or response.reason or "(empty body)"
    return _message_from(body)[:500]


def _message_from(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "detail", "error", "msg"):
            if key in body and body[key]:
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


class HttpVoiceBackend(VoiceBackend):
    """Transport shared by the TTS servers: timeouts, retries with backoff and jitter, body checks."""

    url: str = Field(description="Base URL of the server, e.g. http://tts.hydra.svc:9880")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0, description="Longest wait for one line's audio.")
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries on connection errors and 5xx (SPEC: 3).")
    backoff_base_s: float = Field(default=1.0, ge=0, description="First retry waits up to this long; doubles after.")
    backoff_cap_s: float = Field(default=30.0, ge=0, description="Longest wait between two attempts.")
    check_reference_files: bool = Field(
        default=True,
        description="Check reference clips and weights exist here (shared storage); off when only the server sees them.",
    )

    runs_in_pod: ClassVar[bool] = False

    _session: requests.Session | None = PrivateAttr(default=None)

    def session(self) -> requests.Session:
        if self._session is None:
            retry = SpecBackoffRetry(
                total=self.max_retries,
                connect=self.max_retries,
                read=False,  # a read timeout is reported, not retried: the request may still be running
                status=self.max_retries,
                other=0,
                status_forcelist=list(range(500, 600)),
                allowed_methods=None,  # TTS requests have no side effects: POST may be retried
                backoff_factor=self.backoff_base_s,
                backoff_max=self.backoff_cap_s,
                raise_on_status=False,
                respect_retry_after_header=False,  # our cap bounds every wait
            )
            session = requests.Session()
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            self._session = session
        return self._session

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def endpoint(self, route: str) -> str:
        return self.url.rstrip("/") + route

    def request(self, method: str, route: str, **kwargs: Any) -> requests.Response:
        """One request with retries; a 4xx, an exhausted 5xx or a timeout becomes a typed error."""
        endpoint = self.endpoint(route)
        try:
            response = self.session().request(
                method, endpoint, timeout=(self.connect_timeout_s, self.read_timeout_s), **kwargs
            )
        except requests.exceptions.ReadTimeout as exc:
            raise VoiceTimeoutError(
                f"{endpoint}: no answer within {self.read_timeout_s:g} s (read_timeout_s)"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise VoiceBackendUnavailable(
                f"{self.backend_name()} at {endpoint}: cannot connect after {self.max_retries} retries "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise VoiceServerError(f"{endpoint}: {type(exc).__name__}: {exc}") from exc
        if 400 <= response.status_code < 500:
            raise VoiceRequestError(endpoint, response.status_code, server_message(response))
        if response.status_code >= 500:
            raise VoiceServerError(
                f"{endpoint}: HTTP {response.status_code} after {self.max_retries} retries: {server_message(response)}"
            )
        return response

    def request_audio(self, method: str, route: str, **kwargs: Any) -> Audio:
        response = self.request(method, route, **kwargs)
        return decode_wav(
            response.content, f"{self.backend_name()} {self.endpoint(route)}", response.headers.get("Content-Type")
        )

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
