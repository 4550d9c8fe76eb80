"""Voice-line audio: accept only real WAV, then trim, normalise and store it one way.

Every backend's output goes through the same steps so that lines from different servers sound
alike in the game and can be compared: decode (RIFF/WAVE header checked first, then a full
decode with soundfile, so an error page or a JSON body is never stored as a ``.wav``), mix to
mono, trim leading and trailing silence, normalise to the loudness target with a true-peak
ceiling (``domain/loudness.py``: ITU-R BS.1770 through pyloudnorm), and encode as 16-bit PCM
mono at the backend's own sample rate (recorded in the manifest; nothing is resampled).
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from hydra_assets.domain import loudness

WAV_SUBTYPE = "PCM_16"
FRAME_SECONDS = 0.010
"""Silence is judged on 10 ms frames: short enough to keep consonant onsets, long enough to ignore single clicks."""

DEFAULT_TRIM_THRESHOLD_DB = -40.0
"""A frame is silence when its RMS is this far below the clip's peak."""
DEFAULT_TRIM_PADDING_SECONDS = 0.05
"""Kept on each side of the speech so that breaths and soft onsets are not cut."""
DEFAULT_SILENCE_FLOOR_DBFS = -50.0
"""RMS of the trimmed clip before normalisation below which a line counts as silent."""

SPEECH_CHARS_PER_SECOND = 14.0
"""Letters and digits per second of ordinary English speech (about 150 words a minute);
eSpeak at its default 175 wpm measured 13-16 on the demo dialogue."""
PLAUSIBLE_FACTOR = 3.0
"""A line may be up to this many times faster or slower than the estimate."""
PLAUSIBLE_SLACK_SECONDS = 1.0
"""Added to the upper bound: pauses at punctuation weigh most in short lines."""
MIN_EXPECTED_SECONDS = 0.3


class NotAudioError(ValueError):
    """A body or file that is not a decodable WAV; names where it came from and what it looks like."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray
    """float32 mono in [-1, 1]."""
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0


def describe_body(data: bytes, content_type: str | None = None) -> str:
    """What a non-audio body looks like, for the error message (JSON and HTML are the usual suspects)."""
    kind = (content_type or "").split(";")[0].strip() or "no content type"
    head = data[:2000].decode("utf-8", errors="replace").strip()
    if not data:
        return f"an empty body ({kind})"
    try:
        document = json.loads(head) if head.startswith(("{", "[")) else None
    except ValueError:
        document = None
    if document is not None:
        return f"JSON ({kind}): {json.dumps(document)[:200]}"
    if head[:100].lower().lstrip().startswith(("<!doctype html", "<html")) or "<body" in head.lower():
        title = re.search(r"<title>(.*?)</title>", head, re.IGNORECASE | re.DOTALL)
        return f"HTML ({kind}){': ' + title.group(1).strip()[:120] if title else ''}"
    printable = head[:120] if head.isprintable() else repr(data[:32])
    return f"{len(data)} bytes of {kind}: {printable}"


def decode_wav(data: bytes, source: str, content_type: str | None = None) -> Audio:
    """Decode a WAV body into mono float32; raise :class:`NotAudioError` for anything else."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise NotAudioError(source, f"not a RIFF/WAVE file: got {describe_body(data, content_type)}")
    try:
        samples, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise NotAudioError(source, f"has a RIFF/WAVE header but does not decode: {exc}") from exc
    mono = samples.mean(axis=1, dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(mono)):
        raise NotAudioError(source, "decodes to non-finite samples")
    return Audio(mono, int(sample_rate))


def read_wav_file(path: Path) -> Audio:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NotAudioError(str(path), f"cannot be read: {exc}") from exc
    return decode_wav(data, str(path))


def from_pcm16(samples: np.ndarray, sample_rate: int) -> Audio:
    return Audio((np.asarray(samples, dtype=np.int16).astype(np.float32) / 32768.0), int(sample_rate))


def _dbfs(value: float) -> float:
    return 20.0 * math.log10(value) if value > 0 else float("-inf")


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0


def rms_dbfs(samples: np.ndarray) -> float:
    return _dbfs(rms(samples))


def peak_dbfs(samples: np.ndarray) -> float:
    return _dbfs(float(np.max(np.abs(samples)))) if len(samples) else float("-inf")


def frame_rms(samples: np.ndarray, sample_rate: int, frame_seconds: float = FRAME_SECONDS) -> np.ndarray:
    frame = max(1, round(sample_rate * frame_seconds))
    count = math.ceil(len(samples) / frame)
    padded = np.zeros(count * frame, dtype=np.float64)
    padded[: len(samples)] = samples
    return np.sqrt(np.mean(np.square(padded.reshape(count, frame)), axis=1))


def trim_silence(
    audio: Audio,
    threshold_db: float = DEFAULT_TRIM_THRESHOLD_DB,
    padding_seconds: float = DEFAULT_TRIM_PADDING_SECONDS,
) -> Audio:
    """Cut leading and trailing frames quieter than ``threshold_db`` below the peak.

    An all-silent clip is returned unchanged: trimming it to nothing would hide the problem the
    silence check exists to report.
    """
    samples = audio.samples
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if peak == 0.0:
        return audio
    levels = frame_rms(samples, audio.sample_rate)
    active = np.flatnonzero(levels >= peak * 10 ** (threshold_db / 20.0))
    if active.size == 0:
        return audio
    frame = max(1, round(audio.sample_rate * FRAME_SECONDS))
    pad = round(audio.sample_rate * padding_seconds)
    start = max(0, int(active[0]) * frame - pad)
    end = min(len(samples), (int(active[-1]) + 1) * frame + pad)
    return Audio(samples[start:end], audio.sample_rate)


def encode_pcm16(audio: Audio) -> bytes:
    """16-bit PCM mono WAV bytes (soundfile dithers nothing and clips at full scale)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio.samples, -1.0, 1.0), audio.sample_rate, format="WAV", subtype=WAV_SUBTYPE)
    return buffer.getvalue()


@dataclass(frozen=True)
class FinishedAudio:
    """A line ready to store, with the measurements the manifest and the checks need."""

    wav: bytes
    sample_rate: int
    duration: float
    source_duration: float
    source_rms_dbfs: float
    """RMS of the trimmed clip before normalisation: what the silence check judges."""
    rms_dbfs: float
    peak_dbfs: float
    loudness_lufs: float | None
    """Integrated loudness of the stored file (None: silent, see ``loudness_error``)."""
    true_peak_dbtp: float | None
    loudness_error: str | None = None
    """Why the line could not be normalised (silence); it is stored as it came, for the checks."""


def finish(
    audio: Audio,
    *,
    source: str = "line",
    trim_threshold_db: float = DEFAULT_TRIM_THRESHOLD_DB,
    trim_padding_seconds: float = DEFAULT_TRIM_PADDING_SECONDS,
    target_lufs: float = loudness.DEFAULT_TARGET_LUFS,
    true_peak_ceiling_dbtp: float = loudness.DEFAULT_TRUE_PEAK_DBTP,
) -> FinishedAudio:
    """Trim, normalise loudness (``source`` names the line in errors), encode, and measure the result.

    Loudness and true peak are measured again on the encoded file, so the manifest holds what a
    meter reads from the WAV on disk, PCM16 rounding included.
    """
    trimmed = trim_silence(audio, trim_threshold_db, trim_padding_seconds)
    error = None
    try:
        samples = loudness.normalize(
            trimmed.samples, trimmed.sample_rate, source, target_lufs, true_peak_ceiling_dbtp
        )
    except loudness.SilentAudioError as silent:
        samples, error = trimmed.samples, str(silent)
    wav = encode_pcm16(Audio(samples, trimmed.sample_rate))
    stored = decode_wav(wav, source)
    measured = None
    if error is None:
        measured = loudness.measure(stored.samples, stored.sample_rate, source)
    return FinishedAudio(
        wav=wav,
        sample_rate=stored.sample_rate,
        duration=stored.duration,
        source_duration=audio.duration,
        source_rms_dbfs=rms_dbfs(trimmed.samples),
        rms_dbfs=rms_dbfs(stored.samples),
        peak_dbfs=peak_dbfs(stored.samples),
        loudness_lufs=measured.integrated_lufs if measured else None,
        true_peak_dbtp=measured.true_peak_dbtp if measured else None,
        loudness_error=error,
    )


@dataclass(frozen=True)
class WavInfo:
    sample_rate: int
    channels: int
    subtype: str
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def stored_wav_problem(path: Path) -> str | None:
    """Why a stored line cannot be reused (None when it is a readable 16-bit PCM mono WAV)."""
    path = Path(path)
    if not path.is_file():
        return "file is missing"
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return "not a RIFF/WAVE file"
        info = sf.info(str(path))
        sf.read(str(path), dtype="int16")
    except (OSError, sf.LibsndfileError, RuntimeError) as exc:
        return f"does not decode: {exc}"
    if info.channels != 1 or info.subtype != WAV_SUBTYPE:
        return f"is {info.channels}-channel {info.subtype}, not mono {WAV_SUBTYPE}"
    return None


def clip_seconds(path: Path) -> float | None:
    """Duration of a reference clip readable from here, or None (it may live only on the TTS server)."""
    try:
        return float(sf.info(str(path)).duration)
    except (OSError, sf.LibsndfileError, RuntimeError):
        return None


def speakable_chars(text: str) -> int:
    return sum(1 for ch in text if ch.isalnum())


def expected_seconds(text: str, speed: float = 1.0) -> float:
    """Rough spoken length of ``text`` at ``speed`` (1.0 = normal pace)."""
    return max(speakable_chars(text) / SPEECH_CHARS_PER_SECOND, MIN_EXPECTED_SECONDS) / speed


def plausible_seconds(text: str, speed: float = 1.0) -> tuple[float, float]:
    """Shortest and longest duration a correct rendering of ``text`` may have."""
    expected = expected_seconds(text, speed)
    return expected / PLAUSIBLE_FACTOR, expected * PLAUSIBLE_FACTOR + PLAUSIBLE_SLACK_SECONDS
