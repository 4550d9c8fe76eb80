"""Local servers that speak the studio's TTS protocols, for testing the HTTP voice backends.

Each server runs aiohttp on 127.0.0.1 (a free port) in a background thread, checks requests
the way the real server does (required fields, ``stream``/``media_type``), answers with a real
WAV (a voiced tone as long as the text would take to say), and records every request. Knobs
make it misbehave: a 4xx with a message, N times 5xx before success, JSON, HTML or garbage
instead of audio, an answer slower than the client's timeout, a WAV dripped slowly enough that
no single read times out, silence, or a fixed duration.

Protocols (SPEC "External protocols"): GPT-SoVITS api_v2 ``/tts`` (+ ``/set_gpt_weights``,
``/set_sovits_weights``), Kokoro-FastAPI ``POST /v1/audio/speech``, xtts-api-server
``POST /tts_to_audio/``.
"""

from __future__ import annotations

import asyncio
import io
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from aiohttp import web

PROTOCOLS = ("gpt-sovits", "kokoro", "xtts")
SAMPLE_RATES = {"gpt-sovits": 32000, "kokoro": 24000, "xtts": 24000}
CHARS_PER_SECOND = 14.0
LEAD_SILENCE_S = 0.25
TAIL_SILENCE_S = 0.4


def tone_wav(seconds: float, sample_rate: int, *, silent: bool = False, lead: float = LEAD_SILENCE_S,
             tail: float = TAIL_SILENCE_S, amplitude: float = 0.3) -> bytes:
    """A 16-bit PCM mono WAV: silence, a voiced-like tone (200 Hz with harmonics, syllable envelope), silence."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    voiced = sum(np.sin(2 * np.pi * 200 * k * t) / k for k in (1, 2, 3))
    envelope = 0.6 + 0.4 * np.abs(np.sin(2 * np.pi * 3.0 * t))
    body = np.zeros_like(t) if silent else amplitude * voiced * envelope / 1.84
    samples = np.concatenate([np.zeros(int(lead * sample_rate)), body, np.zeros(int(tail * sample_rate))])
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@dataclass
class Knobs:
    client_error: str | None = None
    """Every synthesis request answers 400 with this message (in the protocol's error shape)."""
    reject_text: str | None = None
    """Texts containing this answer 400 (one bad line in a batch)."""
    server_errors: int = 0
    """The next N synthesis requests answer 500 before the server recovers."""
    body: str = "wav"
    """``wav``, ``json``, ``html`` or ``garbage`` (a RIFF/WAVE header over random bytes)."""
    drip_s: float = 0.0
    """Send the WAV 512 bytes at a time, this many seconds apart (a slow-drip server)."""
    delay_s: float = 0.0
    """Seconds to wait before answering (beyond the client's read timeout: a timeout)."""
    tone_seconds: float | None = None
    """Fixed speech length instead of one proportional to the text (implausible durations)."""
    silent: bool = False


@dataclass
class VoiceTestServer:
    protocol: str
    knobs: Knobs = field(default_factory=Knobs)
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Every synthesis request's payload, in order (failed attempts included)."""
    weight_calls: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle

    def __enter__(self) -> VoiceTestServer:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._runner = web.AppRunner(self._app(), handle_signals=False, shutdown_timeout=0.2)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                loop.run_until_complete(site.start())
                host, port = self._runner.addresses[0][:2]
                self.url = f"http://{host}:{port}"
            except BaseException as exc:  # surfaced in __enter__
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.protocol}-test-server", daemon=True)
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _shutdown(self) -> None:
        """Stop listening, then cancel handlers still sleeping (the slow knob) so none is left dangling."""
        assert self._runner is not None
        await self._runner.cleanup()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- protocol

    def _app(self) -> web.Application:
        app = web.Application()
        if self.protocol == "gpt-sovits":
            app.router.add_get("/tts", self._gpt_sovits_tts)
            app.router.add_post("/tts", self._gpt_sovits_tts)
            app.router.add_get("/set_gpt_weights", self._gpt_sovits_weights("gpt"))
            app.router.add_get("/set_sovits_weights", self._gpt_sovits_weights("sovits"))
        elif self.protocol == "kokoro":
            app.router.add_post("/v1/audio/speech", self._kokoro_speech)
        else:
            app.router.add_post("/tts_to_audio/", self._xtts_tts_to_audio)
        return app

    def _error(self, status: int, message: str) -> web.Response:
        """The protocol's own error shape."""
        if self.protocol == "gpt-sovits":
            body: Any = {"message": message, "Exception": message}
        elif self.protocol == "kokoro":
            body = {"detail": {"error": "validation_error", "message": message, "type": "invalid_request_error"}}
        else:
            body = {"detail": message}
        return web.json_response(body, status=status)

    async def _synthesize(self, request: web.Request, payload: dict[str, Any], text: str) -> web.StreamResponse:
        with self._lock:
            self.requests.append(payload)
            knobs = self.knobs
            fail_5xx = knobs.server_errors > 0
            if fail_5xx:
                knobs.server_errors -= 1
        if knobs.delay_s:
            await asyncio.sleep(knobs.delay_s)
        if fail_5xx:
            return self._error(500, "CUDA out of memory (test server)")
        if knobs.client_error:
            return self._error(400, knobs.client_error)
        if knobs.reject_text and knobs.reject_text in text:
            return self._error(400, f"text contains {knobs.reject_text!r}, which this voice cannot say")
        if knobs.body == "json":
            return web.json_response({"status": "queued", "audio_url": "/files/123.wav"})
        if knobs.body == "html":
            return web.Response(
                text="<!DOCTYPE html><html><head><title>Sign in to continue</title></head><body>proxy</body></html>",
                content_type="text/html",
            )
        if knobs.body == "garbage":
            junk = np.random.default_rng(len(text)).integers(0, 256, 4096, dtype=np.uint8).tobytes()
            return web.Response(body=b"RIFF\x00\x10\x00\x00WAVE" + junk, content_type="audio/wav")
        speed = float(payload.get("speed") or payload.get("speed_factor") or 1.0)
        seconds = knobs.tone_seconds or max(sum(c.isalnum() for c in text) / CHARS_PER_SECOND, 0.3) / speed
        wav = tone_wav(seconds, SAMPLE_RATES[self.protocol], silent=knobs.silent)
        if knobs.drip_s:
            return await self._drip(request, wav, knobs.drip_s)
        return web.Response(body=wav, content_type="audio/wav")

    async def _drip(self, request: web.Request, wav: bytes, interval_s: float) -> web.StreamResponse:
        """Headers at once, then the WAV in small pieces: every read is quick, the whole is not."""
        response = web.StreamResponse(headers={"Content-Type": "audio/wav", "Content-Length": str(len(wav))})
        await response.prepare(request)
        for start in range(0, len(wav), 512):
            await response.write(wav[start : start + 512])
            await asyncio.sleep(interval_s)
        await response.write_eof()
        return response

    async def _gpt_sovits_tts(self, request: web.Request) -> web.StreamResponse:
        payload: dict[str, Any] = dict(request.query) if request.method == "GET" else await request.json()
        for required in ("text", "text_lang", "ref_audio_path", "prompt_lang"):
            if not payload.get(required):
                return self._error(400, f"{required} is required")
        if payload.get("media_type", "wav") != "wav":
            return self._error(400, f"media_type {payload['media_type']} is not supported by this test server")
        if payload.get("streaming_mode") not in (None, False, "false"):
            return self._error(400, "this test server does not stream")
        return await self._synthesize(request, payload, payload["text"])

    def _gpt_sovits_weights(self, kind: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            path = request.query.get("weights_path")
            if not path:
                return self._error(400, f"{kind} weight path is required")
            self.weight_calls.append((kind, path))
            return web.json_response({"message": "success"})

        return handler

    async def _kokoro_speech(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        for required in ("input", "voice"):
            if not payload.get(required):
                return web.json_response(
                    {"detail": [{"type": "missing", "loc": ["body", required], "msg": "Field required"}]}, status=422
                )
        if payload.get("stream", True):
            return self._error(400, "stream defaults to true; this test server only answers stream=false")
        if payload.get("response_format", "mp3") != "wav":
            return self._error(400, f"response_format {payload.get('response_format', 'mp3')} is not wav")
        return await self._synthesize(request, payload, payload["input"])

    async def _xtts_tts_to_audio(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        missing = [name for name in ("text", "speaker_wav", "language") if not payload.get(name)]
        if missing:
            return web.json_response(
                {"detail": [{"loc": ["body", name], "msg": "field required", "type": "value_error.missing"} for name in missing]},
                status=422,
            )
        return await self._synthesize(request, payload, payload["text"])
