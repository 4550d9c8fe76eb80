"""Voice backends: one interface, eSpeak NG embedded, the studio's TTS servers over HTTP.

Every backend turns a queen's voice DNA and her dialogue lines into a :class:`VoicePlan`:
the exact parameters each line is sent with. The ``voice_lines`` asset hashes those
parameters to decide what is already synthesised, so anything that changes the audio must
appear in them (and nothing else should, or lines are redone for nothing).

``EspeakBackend`` (embedded default) drives the eSpeak NG shared library that the
``espeakng-loader`` package ships, through ctypes; no system package, no network. Voice DNA
maps to eSpeak parameters as follows (fields where the studio may change the table):

=========================  ==================================================================
voice DNA                  eSpeak
=========================  ==================================================================
``accent``                 voice, via ``accent_voices`` (``american`` → ``en-us``, ``new york``
                           → ``en-us-nyc``, ``british`` → ``en``, ``scottish`` →
                           ``en-gb-scotland``, ...); an accent that already names an eSpeak
                           voice (``en-gb-x-rp``) is used as is. The voice must speak the
                           dialogue's language, otherwise the language's own voice is used.
``pitch`` low|medium|high  ``espeakPITCH`` 30 | 50 | 70 (0-100 within the variant's range)
``timbre``                 voice variant, via ``timbre_variants`` on the first known word:
                           warm → f3, clear/bright → f4, soft/breathy → f5, smooth/airy → f2,
                           husky/raspy → f1; otherwise ``default_variant`` (f3)
line ``emotion``           prosody: rate factor, pitch offset, ``espeakRANGE`` (EMOTION_PROSODY)
line ``speed``             ``espeakRATE`` = 175 wpm × speed × the emotion's rate factor
=========================  ==================================================================

The HTTP backends speak the servers' public protocols (SPEC "External protocols"):
``GptSovitsBackend`` (api_v2 ``POST /tts``), ``KokoroBackend`` (``POST /v1/audio/speech``)
and ``XttsBackend`` (xtts-api-server ``POST /tts_to_audio/``). All three share the transport:
connect and read timeouts; retries on connection errors and 5xx with exponential backoff and
jitter (urllib3's retry machinery, SPEC's delay formula); a 4xx becomes an error carrying the
server's own message; and the body must be a decodable RIFF/WAVE file before anything is
returned, so an error page is never stored as audio.

Failures come in two kinds. Per line (:class:`VoiceLineError`, ``NotAudioError``): the line is
reported and the batch goes on. Per batch (:class:`VoiceConfigError`,
:class:`VoiceBackendUnavailable`): no later line could succeed, so the batch stops.
"""

from __future__ import annotations

import abc
import ctypes
import functools
import json
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import numpy as np
import requests
from pydantic import Field, PrivateAttr
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from hydra_assets.domain.audio import Audio, NotAudioError, decode_wav, from_pcm16
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.roster import VoiceDNA


class VoiceError(RuntimeError):
    """Base of every backend error; the message names the backend or endpoint and the rule."""


class VoiceConfigError(VoiceError):
    """The queen's voice cannot be set up on this backend (missing clip, unknown voice): stops the batch."""


class VoiceBackendUnavailable(VoiceError):
    """The backend cannot be reached at all (after retries): stops the batch."""


class VoiceLineError(VoiceError):
    """One line failed; the batch goes on."""


class VoiceRequestError(VoiceLineError):
    """The server refused the request (4xx); carries its status and its own message."""

    def __init__(self, endpoint: str, status: int, message: str):
        self.endpoint = endpoint
        self.status = status
        self.server_message = message
        super().__init__(f"{endpoint}: HTTP {status}: {message}")


class VoiceServerError(VoiceLineError):
    """The server kept failing (5xx after every retry) or broke the response."""


class VoiceTimeoutError(VoiceLineError):
    """No complete answer within the read timeout."""


LINE_ERRORS = (VoiceLineError, NotAudioError)


@dataclass(frozen=True)
class LinePlan:
    line: DialogueLine
    params: dict[str, Any]
    """Exactly what is sent for this line (JSON-serialisable); hashed with the plan's setup."""


@dataclass(frozen=True)
class VoiceModelInfo:
    """The queen's row in ``voice_models`` for this backend."""

    model_type: str
    reference_clips: list[str] = field(default_factory=list)
    model_path: str | None = None


@dataclass(frozen=True)
class VoicePlan:
    backend: str
    """Backend identity, with its version where it can be known (part of every line's hash)."""
    setup: dict[str, Any]
    """Queen-level settings every line shares (voice, reference clip, weights)."""
    lines: list[LinePlan]
    model: VoiceModelInfo

    def only(self, line_ids: set[str]) -> VoicePlan:
        return replace(self, lines=[p for p in self.lines if p.line.id in line_ids])


@dataclass(frozen=True)
class LineAudio:
    """One line's outcome: audio, or the error that stopped it."""

    line_id: str
    audio: Audio | None
    error: str | None
    seconds: float
    """Wall time spent on the line (request or synthesis), for the real-time factor."""


def primary_language(language: str) -> str:
    return language.split("-")[0].lower()


class VoiceBackend(dg.ConfigurableResource, abc.ABC):
    """A text-to-speech backend: plan a queen's lines, then synthesise a plan line by line."""

    model_type: ClassVar[str]
    """The ``voice_models.model_type`` this backend's rows carry."""

    @abc.abstractmethod
    def backend_name(self) -> str:
        """Identity recorded with every line, e.g. ``espeak-ng-1.52.0``."""

    @abc.abstractmethod
    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        """Queen-level settings; raise :class:`VoiceConfigError` naming what is missing."""

    @abc.abstractmethod
    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        """The request for one line."""

    @abc.abstractmethod
    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        """Synthesise one planned line; per-line problems raise :class:`VoiceLineError`."""

    def prepare(self, setup: Mapping[str, Any]) -> None:
        """Once per batch before the first line (e.g. load the queen's weights on the server)."""

    def model_info(self, voice: VoiceDNA) -> VoiceModelInfo:
        return VoiceModelInfo(self.model_type, list(voice.reference_clips), voice.trained_model_path)

    def plan(self, slug: str, voice: VoiceDNA, language: str, lines: Sequence[DialogueLine]) -> VoicePlan:
        setup = self.queen_setup(slug, voice, language)
        return VoicePlan(
            backend=self.backend_name(),
            setup=setup,
            lines=[LinePlan(line, self.line_params(setup, line, language)) for line in lines],
            model=self.model_info(voice),
        )

    def synthesize_batch(self, plan: VoicePlan) -> Iterator[LineAudio]:
        """Yield each line's outcome as soon as it is done, so the caller can store it at once.

        Per-line failures are yielded; batch failures (:class:`VoiceConfigError`,
        :class:`VoiceBackendUnavailable`) are raised.
        """
        if not plan.lines:
            return
        self.prepare(plan.setup)
        for line_plan in plan.lines:
            started = time.perf_counter()
            try:
                audio = self.synthesize_one(plan.setup, line_plan.params)
            except LINE_ERRORS as exc:
                yield LineAudio(line_plan.line.id, None, str(exc), time.perf_counter() - started)
                continue
            yield LineAudio(line_plan.line.id, audio, None, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# eSpeak NG through ctypes

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
"""Without it espeak_Initialize calls exit() on a bad data path, taking the whole step with it."""
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

ESPEAK_MIN_RATE, ESPEAK_MAX_RATE = 80, 450
"""Words per minute eSpeak accepts."""
ESPEAK_BASE_RATE = 175
"""eSpeak's own default rate (words per minute)."""

ESPEAK_PITCH_LEVELS = {"low": 30, "medium": 50, "high": 70}
ESPEAK_ACCENT_VOICES = {
    "american": "en-us",
    "general american": "en-us",
    "us": "en-us",
    "new york": "en-us-nyc",
    "british": "en",  # eSpeak's British English voice is called "en"
    "english": "en",
    "received pronunciation": "en-gb-x-rp",
    "rp": "en-gb-x-rp",
    "scottish": "en-gb-scotland",
    "lancastrian": "en-gb-x-gbclan",
    "west midlands": "en-gb-x-gbcwmd",
    "caribbean": "en-029",
}
ESPEAK_TIMBRE_VARIANTS = {
    "warm": "f3",
    "clear": "f4",
    "bright": "f4",
    "soft": "f5",
    "breathy": "f5",
    "smooth": "f2",
    "airy": "f2",
    "husky": "f1",
    "raspy": "f1",
}
EMOTION_PROSODY: dict[str, tuple[float, int, int]] = {
    # emotion: (rate factor, pitch offset on 0-100, espeakRANGE 0-100; eSpeak's default range is 50)
    "neutral": (1.00, 0, 50),
    "calm": (0.92, -4, 35),
    "happy": (1.05, 6, 70),
    "excited": (1.15, 10, 85),
    "sad": (0.85, -8, 25),
    "angry": (1.10, 4, 80),
    "fearful": (1.12, 8, 65),
    "surprised": (1.00, 12, 90),
    "serious": (0.95, -6, 30),
}


class _EspeakEngine:
    """The process's eSpeak NG: the library keeps global state, so every call holds one lock."""

    def __init__(self, library_path: str, data_path: str):
        lib = ctypes.CDLL(library_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if sample_rate <= 0:
            raise VoiceConfigError(f"eSpeak NG ({library_path}) failed to initialise with data folder {data_path}")
        self._lib = lib
        self.data_path = Path(data_path)
        self.sample_rate = sample_rate
        self.version = (lib.espeak_Info(None) or b"unknown").decode()
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept referenced: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # continue

    def has_variant(self, variant: str) -> bool:
        """eSpeak ignores an unknown ``+variant`` silently, so variants are checked as files."""
        return bool(re.fullmatch(r"[A-Za-z0-9_-]+", variant)) and (self.data_path / "voices" / "!v" / variant).is_file()

    def has_voice(self, name: str) -> bool:
        with self.lock:
            return self._lib.espeak_SetVoiceByName(name.encode()) == _EE_OK

    def synthesize(self, voice: str, rate: int, pitch: int, pitch_range: int, text: str) -> np.ndarray:
        """int16 samples at :attr:`sample_rate`."""
        with self.lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise VoiceConfigError(f"eSpeak NG has no voice {voice!r}")
            for parameter, value in ((_ESPEAK_RATE, rate), (_ESPEAK_PITCH, pitch), (_ESPEAK_RANGE, pitch_range)):
                self._lib.espeak_SetParameter(parameter, value, 0)
            self._chunks = []
            data = text.encode("utf-8")
            buffer = ctypes.create_string_buffer(data)
            status = self._lib.espeak_Synth(buffer, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if status != _EE_OK:
            raise VoiceLineError(f"eSpeak NG espeak_Synth failed with status {status} for {text[:60]!r}")
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


@functools.lru_cache(maxsize=2)
def espeak_engine(library_path: str, data_path: str) -> _EspeakEngine:
    """One engine per process and library: espeak_Initialize is not meant to run twice."""
    return _EspeakEngine(library_path, data_path)


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(max(round(value), low), high))


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower().replace("_", "-"))


class EspeakBackend(VoiceBackend):
    """eSpeak NG from the ``espeakng-loader`` wheel: formant synthesis on the CPU, no model files."""

    library_path: str | None = Field(default=None, description="libespeak-ng; default: espeakng_loader's copy.")
    data_path: str | None = Field(default=None, description="espeak-ng-data folder; default: espeakng_loader's.")
    default_voice: str = Field(default="en-us", description="Voice for English when the accent maps to none.")
    default_variant: str = Field(default="f3", description="Variant when the timbre maps to none (queens: female).")
    base_rate_wpm: int = Field(default=ESPEAK_BASE_RATE, ge=ESPEAK_MIN_RATE, le=ESPEAK_MAX_RATE)
    accent_voices: dict[str, str] = Field(default_factory=lambda: dict(ESPEAK_ACCENT_VOICES))
    timbre_variants: dict[str, str] = Field(default_factory=lambda: dict(ESPEAK_TIMBRE_VARIANTS))
    pitch_levels: dict[str, int] = Field(default_factory=lambda: dict(ESPEAK_PITCH_LEVELS))

    model_type: ClassVar[str] = "espeak"

    def engine(self) -> _EspeakEngine:
        library, data = self.library_path, self.data_path
        if library is None or data is None:
            try:
                import espeakng_loader
            except ImportError as exc:
                raise VoiceConfigError(
                    "espeakng-loader is not installed: pip install espeakng-loader, "
                    "or set EspeakBackend.library_path and data_path to a local eSpeak NG"
                ) from exc
            library = library or espeakng_loader.get_library_path()
            data = data or espeakng_loader.get_data_path()
        for path, name in ((library, "library_path"), (data, "data_path")):
            if not Path(path).exists():
                raise VoiceConfigError(f"eSpeak NG {name} {path} does not exist: reinstall espeakng-loader or fix it")
        return espeak_engine(str(library), str(data))

    def backend_name(self) -> str:
        return f"espeak-ng-{self.engine().version}"

    def model_info(self, voice: VoiceDNA) -> VoiceModelInfo:
        return VoiceModelInfo(self.model_type, [], None)

    def resolve_voice(self, voice: VoiceDNA, language: str) -> str:
        """``voice+variant`` for the queen (see the module's table), checked against the library."""
        engine = self.engine()
        language = primary_language(language)
        accent = _normalize(voice.accent)
        table = {_normalize(k): v for k, v in self.accent_voices.items()}
        name = table.get(accent)
        if name is None and accent and re.fullmatch(r"[a-z0-9-]+", accent) and engine.has_voice(accent):
            name = accent  # already an eSpeak voice id, e.g. en-gb-x-rp
        if name is None and accent:
            for key in sorted(table, key=len, reverse=True):
                if re.search(rf"(^|\W){re.escape(key)}($|\W)", accent):
                    name = table[key]
                    break
        if name is None or primary_language(name) != language:
            name = self.default_voice if language == primary_language(self.default_voice) else language
        variant = self.default_variant
        variants = {_normalize(k): v for k, v in self.timbre_variants.items()}
        for word in re.findall(r"[a-z]+", voice.timbre.lower()):
            if word in variants:
                variant = variants[word]
                break
        spec = f"{name}+{variant}" if variant else name
        if not engine.has_voice(spec) or (variant and not engine.has_variant(variant)):
            raise VoiceConfigError(
                f"eSpeak NG has no voice {spec!r} (from accent {voice.accent!r}, timbre {voice.timbre!r}, "
                f"language {language!r}): fix EspeakBackend.accent_voices / timbre_variants / default_voice"
            )
        return spec

    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        if voice.pitch not in self.pitch_levels:
            raise VoiceConfigError(f"{slug}: voice_dna.pitch {voice.pitch!r} has no eSpeak level in pitch_levels")
        engine = self.engine()
        return {
            "voice": self.resolve_voice(voice, language),
            "pitch": self.pitch_levels[voice.pitch],
            "sample_rate": engine.sample_rate,
        }

    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        rate_factor, pitch_offset, pitch_range = EMOTION_PROSODY.get(line.emotion, EMOTION_PROSODY["neutral"])
        return {
            "text": line.text,
            "voice": setup["voice"],
            "rate": _clamp(self.base_rate_wpm * line.speed * rate_factor, ESPEAK_MIN_RATE, ESPEAK_MAX_RATE),
            "pitch": _clamp(setup["pitch"] + pitch_offset, 0, 100),
            "range": _clamp(pitch_range, 0, 100),
        }

    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        engine = self.engine()
        samples = engine.synthesize(params["voice"], params["rate"], params["pitch"], params["range"], params["text"])
        return from_pcm16(samples, engine.sample_rate)


# ---------------------------------------------------------------------------------------------
# HTTP backends


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


def _transcript(clip: str) -> str:
    """The reference clip's transcript from a sidecar (``clip.txt`` or ``clip.lab``) when readable."""
    for suffix in (".txt", ".lab"):
        sidecar = Path(clip).expanduser().with_suffix(suffix)
        try:
            return re.sub(r"\s+", " ", sidecar.read_text(encoding="utf-8")).strip()
        except (OSError, UnicodeDecodeError):
            continue
    return ""


class GptSovitsBackend(HttpVoiceBackend):
    """GPT-SoVITS api_v2 (``POST /tts``): the queen's trained model, cloned from her reference clip.

    ``voice_dna.trained_model_path`` names the GPT weights (``*.ckpt``); the SoVITS weights are
    the ``.pth`` with the same stem beside it. Both are loaded on the server
    (``/set_gpt_weights``, ``/set_sovits_weights``) before the queen's lines. The reference
    clip's transcript (``prompt_text``) comes from a ``.txt`` or ``.lab`` sidecar when present.
    """

    url: str = "http://127.0.0.1:9880"
    prompt_lang: str = Field(default="en", description="Language of the reference clips' transcript.")
    text_lang: str | None = Field(default=None, description="Default: the dialogue's language.")
    top_k: int = Field(default=5, ge=1)
    top_p: float = Field(default=1.0, gt=0, le=1)
    temperature: float = Field(default=1.0, gt=0)
    seed: int = Field(default=0, description="Fixed, so that re-synthesising a line reproduces it.")
    text_split_method: str = "cut5"

    model_type: ClassVar[str] = "gpt-sovits"

    def backend_name(self) -> str:
        return "gpt-sovits-api-v2"

    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        clip = self.first_reference_clip(slug, voice)
        weights = None
        if voice.trained_model_path:
            gpt = voice.trained_model_path
            sovits = str(Path(gpt).with_suffix(".pth"))
            how = "train the queen's GPT-SoVITS model or fix voice_dna.trained_model_path (GPT .ckpt, SoVITS .pth beside it)"
            weights = {
                "gpt": self.checked_file(slug, gpt, "GPT weights (voice_dna.trained_model_path)", how),
                "sovits": self.checked_file(slug, sovits, "SoVITS weights", how),
            }
        return {
            "ref_audio_path": clip,
            "aux_ref_audio_paths": list(voice.reference_clips[1:]),
            "prompt_text": _transcript(clip),
            "prompt_lang": self.prompt_lang,
            "weights": weights,
        }

    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "text": line.text,
            "text_lang": self.text_lang or primary_language(language),
            "ref_audio_path": setup["ref_audio_path"],
            "prompt_text": setup["prompt_text"],
            "prompt_lang": setup["prompt_lang"],
            "top_k": self.top_k,
            "top_p": self.top_p,
            "temperature": self.temperature,
            "text_split_method": self.text_split_method,
            "speed_factor": line.speed,
            "seed": self.seed,
            "media_type": "wav",
            "streaming_mode": False,
        }
        if setup["aux_ref_audio_paths"]:
            params["aux_ref_audio_paths"] = setup["aux_ref_audio_paths"]
        return params

    def prepare(self, setup: Mapping[str, Any]) -> None:
        weights = setup.get("weights")
        if not weights:
            return
        for route, path in (("/set_gpt_weights", weights["gpt"]), ("/set_sovits_weights", weights["sovits"])):
            try:
                self.request("GET", route, params={"weights_path": path})
            except VoiceLineError as exc:
                raise VoiceConfigError(f"cannot load the queen's weights {path}: {exc}") from exc

    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        return self.request_audio("POST", "/tts", json=dict(params))


class KokoroBackend(HttpVoiceBackend):
    """Kokoro-FastAPI's OpenAI-style ``POST /v1/audio/speech``: stock voices, no cloning.

    Kokoro has no pitch or timbre controls: a queen's voice is ``voice_by_queen[slug]`` (a voice
    or a blend such as ``af_bella+af_sky``), else the voice for her accent, else ``default_voice``.
    """

    url: str = "http://127.0.0.1:8880"
    model: str = "kokoro"
    default_voice: str = "af_heart"
    voice_by_accent: dict[str, str] = Field(
        default_factory=lambda: {
            "american": "af_heart",
            "general american": "af_heart",
            "en-us": "af_heart",
            "british": "bf_emma",
            "en-gb": "bf_emma",
        }
    )
    voice_by_queen: dict[str, str] = Field(default_factory=dict)

    model_type: ClassVar[str] = "kokoro"

    def backend_name(self) -> str:
        return f"kokoro-fastapi-{self.model}"

    def model_info(self, voice: VoiceDNA) -> VoiceModelInfo:
        return VoiceModelInfo(self.model_type, [], None)

    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        by_accent = {_normalize(k): v for k, v in self.voice_by_accent.items()}
        name = self.voice_by_queen.get(slug) or by_accent.get(_normalize(voice.accent)) or self.default_voice
        return {"voice": name}

    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "input": line.text,
            "voice": setup["voice"],
            "response_format": "wav",
            "speed": line.speed,
            "stream": False,  # Kokoro-FastAPI streams by default
        }

    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        return self.request_audio("POST", "/v1/audio/speech", json=dict(params))


XTTS_LANGUAGES = {"zh": "zh-cn"}
"""Dialogue language → XTTS language code where they differ."""


class XttsBackend(HttpVoiceBackend):
    """xtts-api-server's ``POST /tts_to_audio/``: XTTS v2 cloning the queen's reference clip.

    The server takes no per-request speed (it is a server-wide setting), so a line's ``speed``
    is not sent and not part of its hash.
    """

    url: str = "http://127.0.0.1:8020"
    language: str | None = Field(default=None, description="Default: the dialogue's language.")

    model_type: ClassVar[str] = "xtts"

    def backend_name(self) -> str:
        return "xtts-api-server"

    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        return {"speaker_wav": self.first_reference_clip(slug, voice)}

    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        code = self.language or XTTS_LANGUAGES.get(primary_language(language), primary_language(language))
        return {"text": line.text, "speaker_wav": setup["speaker_wav"], "language": code}

    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        return self.request_audio("POST", "/tts_to_audio/", json=dict(params))
