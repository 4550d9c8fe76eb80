"""Voice backends: real eSpeak synthesis, and each HTTP backend against a server speaking its protocol."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from scipy.signal import resample_poly
from urllib3.util.retry import RequestHistory

from hydra_assets.domain import audio, loudness
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.roster import VoiceDNA
from resources.http import SpecRetry, server_message
from resources.voice import (
    EspeakBackend,
    GptSovitsBackend,
    KokoroBackend,
    VoiceBackendUnavailable,
    VoiceConfigError,
    XttsBackend,
)
from tests.voice_servers import PROTOCOLS, SAMPLE_RATES, VoiceTestServer, tone_wav

SHORT = "Good morning."
LONG = "Good morning. The harbor is quiet today, and every ship is tied up safely at the pier."


def line(text: str = SHORT, line_id: str = "hello", **kwargs) -> DialogueLine:
    return DialogueLine(id=line_id, text=text, level=0, emotion=kwargs.pop("emotion", "neutral"), **kwargs)


def median_f0(clip: audio.Audio) -> float:
    """Median fundamental frequency of the voiced frames (autocorrelation, 70-500 Hz)."""
    x, sr = clip.samples.astype(np.float64), clip.sample_rate
    frame, loud = int(0.04 * sr), 0.1 * np.max(np.abs(x))
    f0s = []
    for start in range(0, len(x) - frame, frame // 2):
        seg = x[start : start + frame] - x[start : start + frame].mean()
        if np.max(np.abs(seg)) < loud:
            continue
        ac = np.correlate(seg, seg, "full")[frame - 1 :]
        low, high = int(sr / 500), int(sr / 70)
        lag = low + int(np.argmax(ac[low:high]))
        if ac[lag] > 0.5 * ac[0]:
            f0s.append(sr / lag)
    assert len(f0s) > 10, "too few voiced frames to estimate pitch"
    return float(np.median(f0s))


# --------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"error": "model not loaded"}', "application/json", "not a RIFF/WAVE file: got JSON (application/json)"),
        (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>", "text/html", "HTML (text/html): 502 Bad Gateway"),
        (b"", None, "an empty body"),
        (b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk", "audio/wav", "RIFF/WAVE header but does not decode"),
    ],
)
def test_decode_wav_rejects_what_is_not_audio(body, content_type, expected):
    with pytest.raises(audio.NotAudioError) as caught:
        audio.decode_wav(body, "http://tts/tts", content_type)
    assert str(caught.value).startswith("http://tts/tts: ")
    assert expected in str(caught.value)


def test_decode_wav_mixes_stereo_to_mono():
    buffer = io.BytesIO()
    left = np.full(1000, 0.5, dtype=np.float32)
    sf.write(buffer, np.stack([left, -left * 0.5], axis=1), 16000, format="WAV", subtype="PCM_16")
    decoded = audio.decode_wav(buffer.getvalue(), "stereo")
    assert decoded.samples.ndim == 1 and decoded.sample_rate == 16000
    assert decoded.samples.mean() == pytest.approx(0.125, abs=1e-3)


def bs1770(wav: bytes) -> tuple[float, float]:
    """pyloudnorm's integrated loudness and a 4x-oversampled true peak of WAV bytes."""
    samples, rate = sf.read(io.BytesIO(wav), dtype="float64")
    return pyloudnorm.Meter(rate).integrated_loudness(samples), 20 * np.log10(np.abs(resample_poly(samples, 4, 1)).max())


def test_finish_trims_silence_normalises_loudness_and_encodes_pcm16_mono():
    raw = audio.decode_wav(tone_wav(1.0, 24000, lead=0.5, tail=0.8, amplitude=0.1), "tone")
    finished = audio.finish(raw, trim_padding_seconds=0.05)
    assert raw.duration == pytest.approx(2.3, abs=0.01)
    assert finished.duration == pytest.approx(1.1, abs=0.03)  # tone + 2 x 50 ms padding
    lufs, true_peak = bs1770(finished.wav)
    assert lufs == pytest.approx(-23.0, abs=0.05) == finished.loudness_lufs
    assert true_peak <= -1.0 and finished.true_peak_dbtp == pytest.approx(true_peak, abs=0.01)
    assert finished.true_peak_dbtp >= finished.peak_dbfs
    info = sf.info(io.BytesIO(finished.wav))
    assert (info.channels, info.subtype, info.samplerate) == (1, "PCM_16", 24000)


def test_finish_pads_a_line_shorter_than_a_gating_block_so_it_measures_on_target():
    raw = audio.decode_wav(tone_wav(0.15, 16000, lead=0.0, tail=0.0), "blip")
    finished = audio.finish(raw, source="line blip", target_lufs=-18.0)
    assert finished.duration == pytest.approx(0.4, abs=0.001)
    lufs, true_peak = bs1770(finished.wav)
    assert lufs == pytest.approx(-18.0, abs=0.05) and true_peak <= -1.0


def test_true_peak_sits_above_the_sample_peak_between_samples():
    # A sine at a quarter of the rate, sampled 45 degrees off its crests: samples at 0.707, true peak 1.0.
    n = np.arange(4000)
    samples = np.sin(np.pi / 2 * n + np.pi / 4)
    assert 20 * np.log10(np.abs(samples).max()) == pytest.approx(-3.01, abs=0.01)
    assert loudness.true_peak_dbtp(samples) == pytest.approx(0.0, abs=0.2)  # the FIR ripple of a 4x estimate


def clicky(click: float) -> audio.Audio:
    rng = np.random.default_rng(3)
    speech = audio.decode_wav(tone_wav(2.0, 24000, amplitude=0.05), "tone").samples.copy()
    speech[rng.choice(len(speech), 40, replace=False)] = click
    return audio.Audio(speech, 24000)


def test_peaks_a_limiter_can_take_are_limited_and_the_line_stays_on_target():
    finished = audio.finish(clicky(0.2), target_lufs=-18.0)  # at -18 LUFS the clicks would reach +3 dBTP
    lufs, true_peak = bs1770(finished.wav)
    assert lufs == pytest.approx(-18.0, abs=0.1) and true_peak <= -1.0


def test_beyond_the_limiter_the_ceiling_wins_over_the_target():
    finished = audio.finish(clicky(0.5), target_lufs=-18.0)  # would reach +8 dBTP: more than 6 dB to take
    lufs, true_peak = bs1770(finished.wav)
    assert lufs < -19.0 and true_peak == pytest.approx(-1.0, abs=0.05)
    assert loudness.loudness_problem(lufs, true_peak, -18.0, -1.0, 1.0).endswith("from the -18 LUFS target")


def test_finish_leaves_silence_alone_so_the_check_can_see_it():
    silent = audio.decode_wav(tone_wav(1.0, 16000, silent=True), "silence")
    finished = audio.finish(silent, source="line hush")
    assert finished.duration == pytest.approx(silent.duration)
    assert finished.source_rms_dbfs == float("-inf")
    assert finished.loudness_lufs is None
    assert finished.loudness_error.startswith("line hush: silent: no 400 ms block above BS.1770's -70 LUFS gate")
    with pytest.raises(loudness.SilentAudioError, match="^line hush: silent"):
        loudness.normalize(silent.samples, 16000, "line hush")


def test_stored_wav_problem(tmp_path):
    good = tmp_path / "good.wav"
    good.write_bytes(audio.encode_pcm16(audio.Audio(np.zeros(100, np.float32) + 0.1, 16000)))
    assert audio.stored_wav_problem(good) is None
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.zeros((100, 2)), 16000, subtype="PCM_16")
    assert "2-channel" in audio.stored_wav_problem(stereo)
    floats = tmp_path / "float.wav"
    sf.write(floats, np.zeros(100), 16000, subtype="FLOAT")
    assert "not mono PCM_16" in audio.stored_wav_problem(floats)
    html = tmp_path / "page.wav"
    html.write_bytes(b"<html></html>")
    assert audio.stored_wav_problem(html) == "not a RIFF/WAVE file"
    assert audio.stored_wav_problem(tmp_path / "gone.wav") == "file is missing"


def test_plausible_seconds_scale_with_text_and_speed():
    low, high = audio.plausible_seconds(LONG)
    assert low < audio.expected_seconds(LONG) < high
    assert audio.plausible_seconds(LONG, speed=2.0)[1] < high
    assert audio.plausible_seconds(SHORT)[1] < low * 3


# -------------------------------------------------------------------------------------- eSpeak


@pytest.fixture(scope="module")
def espeak() -> EspeakBackend:
    return EspeakBackend()


def synthesize(backend, voice: VoiceDNA, *lines: DialogueLine, language: str = "en"):
    plan = backend.plan("nova-sterling", voice, language, lines)
    return plan, list(backend.synthesize_batch(plan))


def test_espeak_synthesises_real_speech_longer_for_longer_text(espeak):
    plan, results = synthesize(espeak, VoiceDNA(accent="en-us"), line(SHORT, "short"), line(LONG, "long"))
    assert plan.backend.startswith("espeak-ng-1.")
    short, long = results
    assert short.error is None and long.error is None
    assert short.audio.sample_rate == 22050
    assert 0.5 < short.audio.duration < long.audio.duration
    assert long.audio.duration == pytest.approx(audio.expected_seconds(LONG), rel=0.5)
    assert audio.rms_dbfs(long.audio.samples) > -30.0, "speech must not be silent"


def test_espeak_pitch_setting_raises_the_fundamental(espeak):
    _, [low] = synthesize(espeak, VoiceDNA(accent="en-us", pitch="low"), line(LONG))
    _, [high] = synthesize(espeak, VoiceDNA(accent="en-us", pitch="high"), line(LONG))
    assert median_f0(high.audio) > 1.15 * median_f0(low.audio)


def test_espeak_speed_and_emotion_change_the_rate(espeak):
    voice = VoiceDNA(accent="en-us")
    plan, [normal, fast] = synthesize(espeak, voice, line(LONG, "a"), line(LONG, "b", speed=1.5))
    assert fast.audio.duration < 0.8 * normal.audio.duration
    sad, excited = (espeak.line_params(plan.setup, line(LONG, emotion=e), "en") for e in ("sad", "excited"))
    assert sad["rate"] < 175 < excited["rate"] and sad["range"] < excited["range"]


@pytest.mark.parametrize(
    ("accent", "timbre", "language", "expected"),
    [
        ("en-us", "clear", "en", "en-us+f4"),
        ("General American", "warm", "en", "en-us+f3"),
        ("new york", "", "en", "en-us-nyc+f3"),
        ("soft British", "breathy and low", "en", "en+f5"),
        ("en-gb-x-rp", "husky", "en", "en-gb-x-rp+f1"),
        ("nordic", "velvet", "en", "en-us+f3"),
        ("en-us", "warm", "fr", "fr+f3"),
    ],
)
def test_espeak_voice_dna_table(espeak, accent, timbre, language, expected):
    assert espeak.resolve_voice(VoiceDNA(accent=accent, timbre=timbre), language) == expected


def test_espeak_unknown_variant_is_a_config_error(espeak):
    backend = EspeakBackend(timbre_variants={"warm": "no-such-variant"})
    with pytest.raises(VoiceConfigError, match="no voice 'en-us\\+no-such-variant'"):
        backend.plan("nova-sterling", VoiceDNA(accent="en-us", timbre="warm"), "en", [line()])


# ---------------------------------------------------------------------------------------- HTTP


@pytest.fixture
def reference_clip(tmp_path) -> Path:
    clip = tmp_path / "refs" / "nova.wav"
    clip.parent.mkdir()
    clip.write_bytes(tone_wav(4.0, 32000))
    clip.with_suffix(".txt").write_text("This is how I sound\non a normal day.\n")
    return clip


def http_backend(protocol: str, url: str, **overrides):
    fields = dict(
        url=url, connect_timeout_s=1.0, read_timeout_s=2.0, max_retries=3, backoff_base_s=0.01, backoff_cap_s=0.04
    )
    fields.update(overrides)
    return {"gpt-sovits": GptSovitsBackend, "kokoro": KokoroBackend, "xtts": XttsBackend}[protocol](**fields)


@pytest.fixture(params=PROTOCOLS)
def server(request):
    with VoiceTestServer(request.param) as running:
        yield running


def test_http_backend_success_speaks_the_protocol(server, reference_clip):
    backend = http_backend(server.protocol, server.url)
    voice = VoiceDNA(accent="en-us", reference_clips=[str(reference_clip)])
    _, [result] = synthesize(backend, voice, line(LONG, speed=1.25))
    assert result.error is None
    assert result.audio.sample_rate == SAMPLE_RATES[server.protocol]
    speed = 1.0 if server.protocol == "xtts" else 1.25  # xtts-api-server takes no per-request speed
    assert result.audio.duration == pytest.approx(audio.expected_seconds(LONG, speed) + 0.65, abs=0.05)
    [sent] = server.requests
    if server.protocol == "gpt-sovits":
        assert sent["text"] == LONG and sent["text_lang"] == "en" and sent["prompt_lang"] == "en"
        assert sent["ref_audio_path"] == str(reference_clip)
        assert sent["prompt_text"] == "This is how I sound on a normal day."
        assert (sent["media_type"], sent["streaming_mode"], sent["speed_factor"]) == ("wav", False, 1.25)
    elif server.protocol == "kokoro":
        assert sent == {
            "model": "kokoro", "input": LONG, "voice": "af_heart", "response_format": "wav", "speed": 1.25, "stream": False
        }
    else:
        assert sent == {"text": LONG, "speaker_wav": str(reference_clip), "language": "en"}


def test_http_backend_4xx_carries_the_servers_message_and_is_not_retried(server, reference_clip):
    server.knobs.client_error = "reference audio is shorter than 3 seconds"
    backend = http_backend(server.protocol, server.url)
    _, [result] = synthesize(backend, VoiceDNA(reference_clips=[str(reference_clip)]), line())
    assert result.audio is None
    assert f"{server.url}" in result.error and "HTTP 400" in result.error
    assert "reference audio is shorter than 3 seconds" in result.error
    assert len(server.requests) == 1


def test_http_backend_retries_5xx_then_succeeds(server, reference_clip):
    server.knobs.server_errors = 2
    backend = http_backend(server.protocol, server.url)
    _, [result] = synthesize(backend, VoiceDNA(reference_clips=[str(reference_clip)]), line())
    assert result.error is None and result.audio.duration > 0
    assert len(server.requests) == 3


def test_http_backend_gives_up_after_max_retries_of_5xx(server, reference_clip):
    server.knobs.server_errors = 100
    backend = http_backend(server.protocol, server.url, max_retries=2)
    _, [result] = synthesize(backend, VoiceDNA(reference_clips=[str(reference_clip)]), line())
    assert "HTTP 500 after 2 retries: CUDA out of memory" in result.error
    assert len(server.requests) == 3


@pytest.mark.parametrize(("body", "described"), [("json", "got JSON (application/json)"), ("html", "got HTML (text/html)")])
def test_http_backend_rejects_a_body_that_is_not_audio(server, reference_clip, body, described):
    server.knobs.body = body
    backend = http_backend(server.protocol, server.url)
    _, [result] = synthesize(backend, VoiceDNA(reference_clips=[str(reference_clip)]), line())
    assert result.audio is None
    assert "not a RIFF/WAVE file" in result.error and described in result.error


def test_http_backend_rejects_garbage_behind_a_wav_header(server, reference_clip):
    server.knobs.body = "garbage"
    backend = http_backend(server.protocol, server.url)
    _, [result] = synthesize(backend, VoiceDNA(reference_clips=[str(reference_clip)]), line())
    assert result.audio is None
    assert f"{server.url}" in result.error and "has a RIFF/WAVE header but does not decode" in result.error
    assert len(server.requests) == 1


def test_http_backend_stops_a_slow_drip_at_the_overall_deadline(server, reference_clip):
    # 512 bytes every 50 ms: no read waits anywhere near read_timeout_s, yet the WAV would take seconds.
    server.knobs.drip_s = 0.05
    backend = http_backend(server.protocol, server.url, read_timeout_s=1.0, deadline_s=0.8)
    started = time.perf_counter()
    _, [result] = synthesize(backend, VoiceDNA(reference_clips=[str(reference_clip)]), line(LONG))
    assert time.perf_counter() - started < 1.6
    assert result.audio is None and "no complete answer within 0.8 s (deadline_s)" in result.error
    assert len(server.requests) == 1


def test_http_backend_times_out_without_retrying(server, reference_clip):
    server.knobs.delay_s = 1.5
    backend = http_backend(server.protocol, server.url, read_timeout_s=0.3)
    started = time.perf_counter()
    _, [result] = synthesize(backend, VoiceDNA(reference_clips=[str(reference_clip)]), line())
    assert time.perf_counter() - started < 1.2
    assert result.audio is None and "no answer within 0.3 s" in result.error
    assert len(server.requests) == 1


def test_unreachable_server_stops_the_batch(reference_clip):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = http_backend("kokoro", f"http://127.0.0.1:{port}", max_retries=1)
    plan = backend.plan("nova-sterling", VoiceDNA(), "en", [line()])
    with pytest.raises(VoiceBackendUnavailable, match=f"127.0.0.1:{port}/v1/audio/speech: cannot connect after 1 retries"):
        list(backend.synthesize_batch(plan))


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    def wait(retries: int) -> float:
        history = tuple(RequestHistory("POST", "/tts", None, 503, None) for _ in range(retries))
        return SpecRetry(total=10, backoff_factor=1.0, backoff_max=3.0, history=history).get_backoff_time()

    assert wait(0) == 0.0
    for retries, ceiling in [(1, 1.0), (2, 2.0), (3, 3.0), (6, 3.0)]:
        waits = [wait(retries) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1, "jitter must vary the wait"


def test_clone_backends_name_a_missing_or_absent_reference_clip(tmp_path):
    for backend in (GptSovitsBackend(url="http://unused"), XttsBackend(url="http://unused")):
        with pytest.raises(VoiceConfigError, match="voice_dna.reference_clips is empty"):
            backend.plan("nova-sterling", VoiceDNA(), "en", [line()])
        missing = tmp_path / "missing.wav"
        with pytest.raises(VoiceConfigError, match=f"reference clip .*{missing} not found"):
            backend.plan("nova-sterling", VoiceDNA(reference_clips=[str(missing)]), "en", [line()])
    unchecked = XttsBackend(url="http://unused", check_reference_files=False)
    plan = unchecked.plan("nova-sterling", VoiceDNA(reference_clips=["/server/only.wav"]), "en", [line()])
    assert plan.lines[0].params["speaker_wav"] == "/server/only.wav"


def test_gpt_sovits_loads_the_queens_weights_before_her_lines(reference_clip):
    gpt = reference_clip.parent / "nova.ckpt"
    gpt.write_bytes(b"gpt")
    voice = VoiceDNA(reference_clips=[str(reference_clip)], trained_model_path=str(gpt))
    with pytest.raises(VoiceConfigError, match="SoVITS weights .*nova.pth not found"):
        GptSovitsBackend(url="http://unused").plan("nova-sterling", voice, "en", [line()])
    gpt.with_suffix(".pth").write_bytes(b"sovits")
    with VoiceTestServer("gpt-sovits") as server:
        _, [result] = synthesize(http_backend("gpt-sovits", server.url), voice, line())
    assert result.error is None
    assert server.weight_calls == [("gpt", str(gpt)), ("sovits", str(gpt.with_suffix(".pth")))]


def test_settings_that_a_server_ignores_are_not_sent():
    xtts = XttsBackend(url="http://unused", check_reference_files=False)
    plan = xtts.plan("x", VoiceDNA(reference_clips=["/a.wav"]), "zh", [line(speed=1.5)])
    assert plan.lines[0].params == {"text": SHORT, "speaker_wav": "/a.wav", "language": "zh-cn"}
    kokoro = KokoroBackend(url="http://unused", voice_by_queen={"x": "af_bella+af_sky"})
    assert kokoro.plan("x", VoiceDNA(accent="british"), "en", [line()]).setup == {"voice": "af_bella+af_sky"}
    assert kokoro.plan("y", VoiceDNA(accent="british"), "en", [line()]).setup == {"voice": "bf_emma"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"message": "ref_audio_path is required"}', "ref_audio_path is required"),
        (b'{"detail": {"error": "validation_error", "message": "voice not found"}}', "voice not found"),
        (b'{"detail": [{"loc": ["body", "text"], "msg": "field required"}]}', "body.text: field required"),
        (b"<html><body>Bad   request</body></html>", "<html><body>Bad request</body></html>"),
    ],
)
def test_server_message_reads_each_servers_error_shape(body, expected):
    assert server_message(body) == expected
