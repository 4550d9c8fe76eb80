"""The embedded backends' measures and every backend's calibration onto the SPEC's scales.

No model code lives here: model backends (resources/scoring.py) produce raw numbers and this
module maps them; the two embedded measures are computed here from image statistics.

Calibration
-----------
A queen's thresholds (6.5 aesthetic, 70 technical, 0.7 face by default) are stated on the scales
of the cluster's models. Every backend's raw output goes through its entry in ``CALIBRATIONS`` so
that a threshold means the same thing whichever backend scored the image:

| backend | raw output | mapping | why |
|---|---|---|---|
| ``laion-aesthetic-v2`` | MLP output, about 1-10 | clip to [1, 10] | the thresholds are stated on this scale |
| ``musiq-koniq`` | KonIQ MOS, about 0-100 | clip to [0, 100] | the thresholds are stated on this scale |
| ``classical-technical-v1`` | quality Q in [0, 1] | 0 -> 0, 0.7 -> 70, 1 -> 100 | see below |
| ``image-stats-aesthetic-proxy-v1`` | quality Q in [0, 1] | 0 -> 1, 0.7 -> 6.5, 1 -> 8.0 | see below |

The two embedded measures are products of per-measure factors (``TECHNICAL_FACTORS``,
``AESTHETIC_PROXY_FACTORS``). Each factor is 1.0 over the range that clean photos span and
``FLAW_FACTOR`` (0.7) at the point where a flaw is plainly visible, so one such flaw alone lands
exactly on the default threshold and two compound below it. On KonIQ's 1-5 ACR scale (MOS =
25 * (ACR - 1)) 70 lies between "fair" (50) and "good" (75): an image with one visible flaw is
no longer "good", which is where the studio put its technical gate. The proxy tops out at 8.0:
image statistics can tell a clean, well-exposed, colourful photo from a flawed one, not a
beautiful one from a plain one, so a clean image only clears 6.5 with some margin.

The anchors come from the photos scikit-image and matplotlib ship (astronaut, grace_hopper,
coffee, chelsea, rocket), resized to a 768 px short side like generated images, and degraded:
Gaussian blur, Gaussian noise, brightness. Analysis runs at a 512 px short side.

| photo | edit | signal Laplacian var | noise sigma | highlights | shadows | mean | tonal range | colourfulness |
|---|---|---|---|---|---|---|---|---|
| astronaut | none | 572 | 0.94 | 0.007 | 0.122 | 0.45 | 0.85 | 72 |
| astronaut | blur sigma 1 / 2 / 4 px | 148 / 28 / 4.3 | | | | | | |
| astronaut | noise sigma 5 / 10 / 20 | | 2.7 / 4.8 / 9.1 | | | | | |
| astronaut | brightness 1.3 / 1.5 / 2.0 | | | 0.14 / 0.29 / 0.39 | | 0.57 / 0.61 / 0.67 | | |
| astronaut | brightness 0.4 | 92 | | | 0.14 | 0.18 | 0.34 | 29 |
| grace_hopper | none | 723 | 0.98 | 0.007 | 0.000 | 0.30 | 0.76 | 68 |
| grace_hopper | blur sigma 1 / 2 px | 191 / 32 | | | | | | |
| grace_hopper | brightness 1.3 / 1.5 | | | 0.043 / 0.062 | | | | |
| coffee | none | 469 | 0.71 | 0.001 | 0.000 | 0.41 | 0.76 | 77 |
| chelsea (a soft photo) | none | 57 | 0.29 | 0.000 | 0.000 | 0.47 | 0.42 | 38 |
| rocket | none | 315 | 0.25 | 0.000 | 0.000 | 0.24 | 0.31 | 38 |

So sharp photos have a noise-corrected Laplacian variance of 300-720 and a 1 px blur keeps them
above 75 (factor 1.0 from 200); a 2 px blur drops them to 6-32 (the flaw anchor is 50). Added
noise of sigma 5 reads as 2.5-2.9 after the downscale (anchor 3.0). A brightness of 1.3 blows
4-14 % of the pixels (anchor 4 %); studio portraits keep up to 12 % black background (shadow
factor 1.0 up to 15 %). ``python tests/test_quality_domain.py`` prints this table again.

Neither embedded measure has been regressed against LAION or MUSIQ scores (their weights are
not here). To re-anchor on the cluster, score one night with both backends and move the flaw
anchors until the embedded measure and the model agree on which images pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

ANALYSIS_SHORT_SIDE = 512
"""Measures run on the image box-downscaled to this short side (never upscaled), so that a
Laplacian variance means the same at 768 and at 1024 px."""

FLAW_FACTOR = 0.7
"""A factor's value where its flaw is plainly visible (see the module docstring)."""

# ------------------------------------------------------------------------------ image statistics


@dataclass(frozen=True)
class ImageStatistics:
    """The numbers both embedded measures are built from; luminance on a 0-255 scale."""

    short_side: int
    sharpness: float
    """Laplacian variance minus the part explained by noise (20 sigma^2 for the 4-neighbour kernel)."""
    noise_sigma: float
    shadows: float
    """Fraction of pixels at luminance <= 2."""
    highlights: float
    """Fraction of pixels at luminance >= 253."""
    mean_luminance: float
    """0-1."""
    tonal_range: float
    """5th to 95th percentile of luminance, 0-1."""
    colourfulness: float
    """Hasler and Suesstrunk (2003) M: 0 grey, ~33 moderately, ~59 quite, ~82 highly colourful."""


def analysis_image(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 → the same image at most ANALYSIS_SHORT_SIDE on its short side (box filter)."""
    array = np.asarray(rgb)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {array.shape} dtype {array.dtype}")
    height, width = array.shape[:2]
    short = min(height, width)
    if short <= ANALYSIS_SHORT_SIDE:
        return array
    scale = ANALYSIS_SHORT_SIDE / short
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BOX))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma, float64 on 0-255."""
    array = np.asarray(rgb, dtype=np.float64)
    return 0.299 * array[..., 0] + 0.587 * array[..., 1] + 0.114 * array[..., 2]


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: high for crisp edges, low for blur."""
    lap = gray[1:-1, :-2] + gray[1:-1, 2:] + gray[:-2, 1:-1] + gray[2:, 1:-1] - 4.0 * gray[1:-1, 1:-1]
    return float(lap.var())


def noise_sigma(gray: np.ndarray) -> float:
    """Gaussian noise sigma by Immerkaer's mask, with a median instead of his mean.

    The mask cancels smooth image structure; the median of its absolute response (MAD / 0.6745,
    scaled by the mask's norm 6) ignores the edges that would otherwise read as noise.
    """
    g = gray
    response = (
        g[:-2, :-2] - 2 * g[:-2, 1:-1] + g[:-2, 2:]
        - 2 * g[1:-1, :-2] + 4 * g[1:-1, 1:-1] - 2 * g[1:-1, 2:]
        + g[2:, :-2] - 2 * g[2:, 1:-1] + g[2:, 2:]
    )
    return float(np.median(np.abs(response)) / (0.6745 * 6.0))


def colourfulness(rgb: np.ndarray) -> float:
    array = np.asarray(rgb, dtype=np.float64)
    rg = array[..., 0] - array[..., 1]
    yb = 0.5 * (array[..., 0] + array[..., 1]) - array[..., 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def image_statistics(rgb: np.ndarray) -> ImageStatistics:
    analysed = analysis_image(rgb)
    gray = luminance(analysed)
    if min(gray.shape) < 3:
        raise ValueError(f"image of {gray.shape[1]}x{gray.shape[0]} px is too small to measure")
    sigma = noise_sigma(gray)
    p5, p95 = np.percentile(gray, [5, 95])
    return ImageStatistics(
        short_side=int(min(np.asarray(rgb).shape[:2])),
        sharpness=max(laplacian_variance(gray) - 20.0 * sigma**2, 0.0),
        noise_sigma=sigma,
        shadows=float((gray <= 2).mean()),
        highlights=float((gray >= 253).mean()),
        mean_luminance=float(gray.mean() / 255.0),
        tonal_range=float((p95 - p5) / 255.0),
        colourfulness=colourfulness(analysed),
    )


# ------------------------------------------------------------------------------ factors and measures


@dataclass(frozen=True)
class Ramp:
    """A piecewise-linear factor of one statistic; flat beyond its first and last points."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def __call__(self, value: float) -> float:
        return float(np.interp(value, self.xs, self.ys))


def _log_sharpness(stats: ImageStatistics) -> float:
    return math.log10(stats.sharpness + 1.0)


SHARPNESS = Ramp((math.log10(6), math.log10(51), math.log10(201)), (0.0, FLAW_FACTOR, 1.0))
"""Noise-corrected Laplacian variance 5 → 0, 50 → 0.7, 200 and above → 1 (log scale)."""

TECHNICAL_FACTORS: dict[str, tuple[Any, Ramp]] = {
    "sharpness": (_log_sharpness, SHARPNESS),
    "noise": (lambda s: s.noise_sigma, Ramp((1.0, 3.0, 8.0), (1.0, FLAW_FACTOR, 0.0))),
    "highlights": (lambda s: s.highlights, Ramp((0.01, 0.04, 0.20), (1.0, FLAW_FACTOR, 0.0))),
    "shadows": (lambda s: s.shadows, Ramp((0.15, 0.30, 0.60), (1.0, FLAW_FACTOR, 0.0))),
    "exposure": (
        lambda s: s.mean_luminance,
        Ramp((0.03, 0.12, 0.20, 0.80, 0.90, 0.97), (0.0, FLAW_FACTOR, 1.0, 1.0, FLAW_FACTOR, 0.0)),
    ),
    "resolution": (lambda s: s.short_side, Ramp((192, 384, 512), (0.0, FLAW_FACTOR, 1.0))),
}
"""No-reference technical measures; the short side's anchors follow the 512 px reference minimum."""

AESTHETIC_PROXY_FACTORS: dict[str, tuple[Any, Ramp]] = {
    "sharpness": (_log_sharpness, SHARPNESS),
    "tonal_range": (lambda s: s.tonal_range, Ramp((0.10, 0.40, 0.60), (0.0, FLAW_FACTOR, 1.0))),
    "colourfulness": (
        lambda s: s.colourfulness,
        Ramp((0.0, 20.0, 110.0, 150.0, 250.0), (FLAW_FACTOR, 1.0, 1.0, FLAW_FACTOR, 0.0)),
    ),
    "exposure_balance": (
        lambda s: s.mean_luminance,
        Ramp((0.03, 0.15, 0.25, 0.65, 0.80, 0.97), (0.0, FLAW_FACTOR, 1.0, 1.0, FLAW_FACTOR, 0.0)),
    ),
}
"""What image statistics can say about appeal: focus, tonal range, colour, exposure balance."""


def factor_values(stats: ImageStatistics, factors: Mapping[str, tuple[Any, Ramp]]) -> dict[str, float]:
    return {name: ramp(measure(stats)) for name, (measure, ramp) in factors.items()}


def combined_quality(stats: ImageStatistics, factors: Mapping[str, tuple[Any, Ramp]]) -> float:
    """Q in [0, 1]: the product of the factors, so every flaw costs and flaws compound."""
    return float(np.prod(list(factor_values(stats, factors).values())))


# ------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class Calibration:
    """Raw backend output → the SPEC scale; monotonic, so it never reorders images."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]
    source: str
    """Where the anchors come from (shown with the scores)."""

    def __call__(self, raw: np.ndarray | Sequence[float] | float) -> np.ndarray:
        return np.interp(np.asarray(raw, dtype=np.float64), self.xs, self.ys)


def _clip(low: float, high: float, source: str) -> Calibration:
    return Calibration((low, high), (low, high), source)


LAION_AESTHETIC = "laion-aesthetic-v2"
MUSIQ_KONIQ = "musiq-koniq"
CLASSICAL_TECHNICAL = "classical-technical-v1"
AESTHETIC_PROXY = "image-stats-aesthetic-proxy-v1"

CALIBRATIONS: dict[str, Calibration] = {
    LAION_AESTHETIC: _clip(1.0, 10.0, "the SPEC's aesthetic thresholds are stated on this model's scale"),
    MUSIQ_KONIQ: _clip(0.0, 100.0, "the SPEC's technical thresholds are stated on this model's scale"),
    CLASSICAL_TECHNICAL: Calibration(
        (0.0, FLAW_FACTOR, 1.0), (0.0, 70.0, 100.0), "one visible flaw = 70 (sample-photo anchors, module docstring)"
    ),
    AESTHETIC_PROXY: Calibration(
        (0.0, FLAW_FACTOR, 1.0), (1.0, 6.5, 8.0), "one visible flaw = 6.5, clean = 8.0 (module docstring)"
    ),
}


def calibrate(backend: str, raw: np.ndarray | Sequence[float] | float) -> np.ndarray:
    try:
        calibration = CALIBRATIONS[backend]
    except KeyError:
        raise KeyError(f"no calibration for backend {backend!r}; known: {', '.join(sorted(CALIBRATIONS))}") from None
    return calibration(raw)


def technical_quality(rgb: np.ndarray) -> float:
    """Classical no-reference technical score, 0-100."""
    return float(calibrate(CLASSICAL_TECHNICAL, combined_quality(image_statistics(rgb), TECHNICAL_FACTORS)))


def aesthetic_proxy(rgb: np.ndarray) -> float:
    """Image-statistics aesthetic proxy, 1-10 (at most 8.0: see the module docstring)."""
    return float(calibrate(AESTHETIC_PROXY, combined_quality(image_statistics(rgb), AESTHETIC_PROXY_FACTORS)))


TINY_EMBEDDING_SIDE = 32


def tiny_image_embedding(rgb: np.ndarray) -> np.ndarray:
    """32x32 grey thumbnail, mean removed, unit length: a near-duplicate key without a model.

    Measured on the astronaut at 768 px: a 1 px shift, brightness 1.2, contrast 0.8 or a colour
    grade keep cosine >= 0.998; a 5 degree rotation or a 90 % crop fall to 0.72-0.74; a mirror
    image or another person to 0.05-0.18.
    """
    thumb = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("L")
    thumb = thumb.resize((TINY_EMBEDDING_SIDE, TINY_EMBEDDING_SIDE), Image.Resampling.BOX)
    vector = np.asarray(thumb, dtype=np.float64).ravel()
    vector -= vector.mean()
    norm = np.linalg.norm(vector)
    return (vector / norm if norm > 0 else vector).astype(np.float32)
