"""Dialogue loudness for the game: integrated loudness (ITU-R BS.1770) and a true-peak ceiling.

The studio's convention (SPEC "Chapters"): every line at -23 LUFS integrated for home platforms
(EBU R128) or -18 LUFS for handheld, with true peaks at or below -1 dBTP, so lines from every
backend sit at one level in the mix and survive lossy re-encoding without clipping.

- Integrated loudness is pyloudnorm's BS.1770-4 meter (K-weighting, 400 ms blocks with 75 %
  overlap, -70 LUFS absolute and -10 LU relative gates).
- True peak: pyloudnorm measures sample peaks only. BS.1770-4 Annex 2 estimates the true
  (inter-sample) peak by oversampling 4x; here with scipy's polyphase resampler
  (``resample_poly(x, 4, 1)``, a Kaiser-windowed FIR), whose largest absolute value is the
  estimate. It is never below the sample peak.
- A line shorter than one gating block (400 ms) cannot be measured at all. It is padded with
  silence to 400 ms (half before, half after) *before* measuring, and the padded clip is what
  is normalised and stored, so any BS.1770 meter reads the stored file on target.
- Peaks over the ceiling: when the line at the target would have its true peak above the
  ceiling by up to ``MAX_LIMITING_DB`` (6 dB), a limiter takes them (pedalboard's ``Limiter``,
  JUCE's two compressors and a hard clip, 60 ms release, its make-up gain undone), set
  ``LIMITER_MARGIN_DB`` under the ceiling because it limits sample peaks; the line is brought
  back to the target and limited again, at most ``LIMITER_PASSES`` times. Beyond 6 dB, or when
  the passes run out, the ceiling wins: the gain stops there and the line lands below the
  target, where the ``loudness_on_target`` check reports it. Nothing is ever clipped.
- Silence (no block above the absolute gate) has no loudness: :class:`SilentAudioError`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pedalboard
import pyloudnorm
from scipy.signal import resample_poly

LOUDNESS_TARGETS = {"home": -23.0, "handheld": -18.0}
"""Integrated loudness targets in LUFS by platform."""
DEFAULT_TARGET_LUFS = LOUDNESS_TARGETS["home"]
DEFAULT_TRUE_PEAK_DBTP = -1.0
DEFAULT_TOLERANCE_LU = 1.0
"""How far a stored line may sit from the target before the check fails."""
BLOCK_SECONDS = 0.4
"""BS.1770's gating block: pyloudnorm refuses anything shorter."""
TRUE_PEAK_OVERSAMPLING = 4
MAX_LIMITING_DB = 6.0
"""Most true-peak overshoot a limiter may take off speech before it audibly flattens it."""
LIMITER_MARGIN_DB = 0.3
LIMITER_RELEASE_MS = 60.0
LIMITER_PASSES = 4


class SilentAudioError(ValueError):
    """Audio with no measurable loudness; names the line or file."""

    def __init__(self, source: str):
        self.source = source
        super().__init__(
            f"{source}: silent: no 400 ms block above BS.1770's -70 LUFS gate, so it has no loudness to normalise"
        )


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float
    true_peak_dbtp: float


def _db(value: float) -> float:
    return 20.0 * math.log10(value) if value > 0 else float("-inf")


def pad_to_block(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Silence around a clip shorter than one gating block so that it can be measured."""
    short = math.ceil(BLOCK_SECONDS * sample_rate) + 1 - len(samples)
    if short <= 0:
        return samples
    before = short // 2
    return np.concatenate([np.zeros(before, samples.dtype), samples, np.zeros(short - before, samples.dtype)])


def true_peak_dbtp(samples: np.ndarray) -> float:
    """The 4x-oversampled peak in dBTP (dB relative to full scale)."""
    if len(samples) == 0:
        return float("-inf")
    oversampled = resample_poly(np.asarray(samples, dtype=np.float64), TRUE_PEAK_OVERSAMPLING, 1)
    return _db(max(float(np.max(np.abs(oversampled))), float(np.max(np.abs(samples)))))


def integrated_lufs(samples: np.ndarray, sample_rate: int, source: str) -> float:
    """BS.1770 integrated loudness; :class:`SilentAudioError` when every block is gated out."""
    if len(samples) < math.ceil(BLOCK_SECONDS * sample_rate) + 1:
        raise ValueError(f"{source}: {len(samples) / sample_rate:.3f} s is shorter than a 400 ms gating block")
    meter = pyloudnorm.Meter(sample_rate)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # silence: log10(0) and the mean of no blocks
        value = float(meter.integrated_loudness(np.asarray(samples, dtype=np.float64)))
    if not math.isfinite(value):
        raise SilentAudioError(source)
    return value


def measure(samples: np.ndarray, sample_rate: int, source: str) -> Loudness:
    return Loudness(integrated_lufs(samples, sample_rate, source), true_peak_dbtp(samples))


def _gain(samples: np.ndarray, db: float) -> np.ndarray:
    return samples * 10 ** (db / 20.0)


def limit(samples: np.ndarray, sample_rate: int, threshold_db: float) -> np.ndarray:
    """Peaks above ``threshold_db`` limited, the rest unchanged (the limiter's make-up gain undone)."""
    limiter = pedalboard.Limiter(threshold_db=threshold_db, release_ms=LIMITER_RELEASE_MS)
    limited = limiter(samples.astype(np.float32), sample_rate).astype(np.float64)
    return _gain(limited, threshold_db)


def normalize(
    samples: np.ndarray,
    sample_rate: int,
    source: str,
    target_lufs: float = DEFAULT_TARGET_LUFS,
    ceiling_dbtp: float = DEFAULT_TRUE_PEAK_DBTP,
) -> np.ndarray:
    """The clip (padded to a block if shorter) at ``target_lufs``, true peak at most ``ceiling_dbtp``."""
    clip = pad_to_block(np.asarray(samples, dtype=np.float64), sample_rate)
    clip = _gain(clip, target_lufs - integrated_lufs(clip, sample_rate, source))
    overshoot = true_peak_dbtp(clip) - ceiling_dbtp
    if 0 < overshoot <= MAX_LIMITING_DB:
        for _ in range(LIMITER_PASSES):
            if true_peak_dbtp(clip) <= ceiling_dbtp:
                break
            clip = limit(clip, sample_rate, ceiling_dbtp - LIMITER_MARGIN_DB)
            clip = _gain(clip, target_lufs - integrated_lufs(clip, sample_rate, source))
    return _gain(clip, min(0.0, ceiling_dbtp - true_peak_dbtp(clip))).astype(np.float32)


def loudness_problem(
    integrated: float | None, true_peak: float | None, target_lufs: float, ceiling_dbtp: float, tolerance_lu: float
) -> str | None:
    """Why a stored line's measurements miss the convention (None when on target)."""
    if integrated is None or not math.isfinite(integrated):
        return "no measurable loudness"
    if abs(integrated - target_lufs) > tolerance_lu:
        return f"{integrated:.2f} LUFS is more than {tolerance_lu:g} LU from the {target_lufs:g} LUFS target"
    # 0.05 dB: PCM16 rounding of a line normalised exactly to the ceiling.
    if true_peak is not None and true_peak > ceiling_dbtp + 0.05:
        return f"true peak {true_peak:.2f} dBTP is above the {ceiling_dbtp:g} dBTP ceiling"
    return None
