"""The quality gate's pure logic: measures, calibration, the gate itself, near-duplicates, the report.

No model code lives here. Model backends (resources/scoring.py, resources/face.py) produce raw
numbers; this module turns them into the SPEC's scores and decisions, so the rules can be read
and tested without a GPU.

Scales (SPEC "Quality gate"): aesthetic 1-10 (LAION aesthetic predictor), technical 0-100 (MUSIQ
on KonIQ), face match 0-1 (calibrated in resources/face.py), composite 0-1 (below).

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

Composite
---------
``composite = 0.4 * face + 0.3 * (aesthetic - 1) / 9 + 0.3 * technical / 100`` in [0, 1]; no face
counts as face 0. Identity weighs most because an off-model image is useless however pretty.
It ranks images, most of all within a near-duplicate group; it gates nothing.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

# ------------------------------------------------------------------------------ scores and reasons

AESTHETIC = "aesthetic_score"
TECHNICAL = "technical_score"
FACE_MATCH = "face_match_score"
COMPOSITE = "composite_score"
SCORE_COLUMNS = (AESTHETIC, TECHNICAL, FACE_MATCH, COMPOSITE)
SCORE_RANGES: dict[str, tuple[float, float]] = {
    AESTHETIC: (1.0, 10.0),
    TECHNICAL: (0.0, 100.0),
    FACE_MATCH: (0.0, 1.0),
    COMPOSITE: (0.0, 1.0),
}

REASON_UNREADABLE = "unreadable"
"""Not a SPEC gate: the file could not be decoded, so nothing could be scored."""
REASON_NO_FACE = "no_face"
REASON_NEAR_DUPLICATE = "near_duplicate"
REASON_MANUAL = "manual"

APPROVAL_AUTO = "auto"
APPROVAL_MANUAL = "manual"

COMPOSITE_WEIGHTS = {"face": 0.4, "aesthetic": 0.3, "technical": 0.3}

FLAW_FACTOR = 0.7
"""A factor's value where its flaw is plainly visible (see the module docstring)."""

ANALYSIS_SHORT_SIDE = 512
"""Measures run on the image box-downscaled to this short side (never upscaled), so that a
Laplacian variance means the same at 768 and at 1024 px."""

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


# ------------------------------------------------------------------------------ composite and gate


def composite_score(aesthetic: Any, technical: Any, face: Any) -> np.ndarray:
    """The module docstring's formula; NaN where aesthetic or technical is missing."""
    a = np.asarray(aesthetic, dtype=np.float64)
    t = np.asarray(technical, dtype=np.float64)
    f = np.nan_to_num(np.asarray(face, dtype=np.float64), nan=0.0)
    w = COMPOSITE_WEIGHTS
    value = w["face"] * f + w["aesthetic"] * (a - 1.0) / 9.0 + w["technical"] * t / 100.0
    return np.clip(value, 0.0, 1.0)


@dataclass(frozen=True)
class Thresholds:
    aesthetic: float = 6.5
    technical: float = 70.0
    face_match: float = 0.7

    @classmethod
    def from_generation_config(cls, config: Any) -> Thresholds:
        """From a roster GenerationConfig (or anything with its three threshold fields)."""
        return cls(
            aesthetic=float(config.aesthetic_threshold),
            technical=float(config.technical_threshold),
            face_match=float(config.face_match_threshold),
        )

    def as_dict(self) -> dict[str, float]:
        return {"aesthetic": self.aesthetic, "technical": self.technical, "face_match": self.face_match}


def format_threshold(value: float) -> str:
    """As a person wrote it in the roster: 70.0 → "70", 0.7 → "0.7", 6.5 → "6.5"."""
    return f"{value:g}"


def first_failed_gate(aesthetic: float | None, technical: float | None, face: float | None, thresholds: Thresholds) -> str | None:
    """The SPEC's gates in order; None when every score meets its threshold.

    A missing face score means no face was found. Near-duplicates are judged across images
    (``mark_near_duplicates``), not here.
    """
    if _missing(aesthetic) or _missing(technical):
        return REASON_UNREADABLE
    if _missing(face):
        return REASON_NO_FACE
    if face < thresholds.face_match:
        return f"face<{format_threshold(thresholds.face_match)}"
    if technical < thresholds.technical:
        return f"technical<{format_threshold(thresholds.technical)}"
    if aesthetic < thresholds.aesthetic:
        return f"aesthetic<{format_threshold(thresholds.aesthetic)}"
    return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------ near-duplicates


@dataclass(frozen=True)
class DuplicateMatch:
    index: int
    of: str
    """The kept image's id (this batch or an earlier approved one)."""
    cosine: float


def mark_near_duplicates(
    embeddings: np.ndarray,
    ranking: Sequence[float],
    candidates: Sequence[bool],
    ids: Sequence[str],
    threshold: float,
    prior_embeddings: np.ndarray | None = None,
    prior_ids: Sequence[str] = (),
) -> list[DuplicateMatch]:
    """Greedy by ``ranking`` (best first) over the candidate images: an image within ``threshold``
    cosine of an already-approved image, or of a better candidate already kept, is a duplicate.

    Greedy rather than connected components: A~B and B~C with A not ~ C keeps A and C instead of
    letting a chain swallow distinct images. Non-candidates (already rejected for another reason)
    neither are judged nor keep anything, so a group keeps its best *approvable* image.
    """
    vectors = _unit_rows(embeddings)
    prior = _unit_rows(prior_embeddings) if prior_embeddings is not None and len(prior_embeddings) else None
    if len(ids) != len(vectors) or len(ranking) != len(vectors) or len(candidates) != len(vectors):
        raise ValueError("embeddings, ranking, candidates and ids must have one entry per image")
    order = sorted((i for i in range(len(vectors)) if candidates[i]), key=lambda i: (-_rank(ranking[i]), ids[i]))
    kept: list[int] = []
    matches: list[DuplicateMatch] = []
    for index in order:
        best: tuple[float, str] | None = None
        if prior is not None:
            cosines = prior @ vectors[index]
            top = int(np.argmax(cosines))
            if cosines[top] >= threshold:
                best = (float(cosines[top]), prior_ids[top])
        if best is None and kept:
            cosines = vectors[kept] @ vectors[index]
            top = int(np.argmax(cosines))
            if cosines[top] >= threshold:
                best = (float(cosines[top]), ids[kept[top]])
        if best is None:
            kept.append(index)
        else:
            matches.append(DuplicateMatch(index, best[1], best[0]))
    return matches


def _rank(value: float) -> float:
    return -math.inf if _missing(value) else float(value)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    array = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms == 0, 1.0, norms)


# ------------------------------------------------------------------------------ manual overrides

OVERRIDE_DECISIONS = ("approve", "reject")
OVERRIDE_FIELDS = ("decision", "by", "reason", "at")


@dataclass(frozen=True)
class Override:
    image_id: str
    decision: str
    by: str
    reason: str | None = None
    at: str | None = None
    """When it was decided (ISO 8601; the review app writes it)."""

    @property
    def approved(self) -> bool:
        return self.decision == "approve"


class OverrideError(ValueError):
    """An overrides file that cannot be applied; names the file, the image and the rule."""

    def __init__(self, path: Path | str, image_id: str | None, rule: str):
        self.path = Path(path)
        self.image_id = image_id
        self.rule = rule
        where = f"{self.path}: {image_id}" if image_id is not None else str(self.path)
        super().__init__(f"{where}: {rule}")


OVERRIDES_EXAMPLE = "nova-sterling-2026-11-20-portrait-000: {decision: approve, by: maria, reason: pose is fine}"


def parse_overrides(text: str, path: Path | str) -> dict[str, Override]:
    """``image_id → {decision: approve|reject, by: name, reason?}``; any bad entry fails the file.

    People write this file to publish or withhold images, so a typo must stop the run rather
    than be skipped: a skipped "reject" would publish an image someone meant to keep out.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise OverrideError(path, None, f"is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise OverrideError(
            path, None, f"must map image ids to decisions (e.g. {OVERRIDES_EXAMPLE}), got {type(document).__name__}"
        )
    overrides: dict[str, Override] = {}
    for image_id, entry in document.items():
        image_id = str(image_id)
        if not isinstance(entry, dict):
            raise OverrideError(path, image_id, f"must be a mapping like {{decision: approve, by: name}}, got {entry!r}")
        unknown = sorted(set(map(str, entry)) - set(OVERRIDE_FIELDS))
        if unknown:
            raise OverrideError(path, image_id, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(OVERRIDE_FIELDS)}")
        decision = entry.get("decision")
        if decision not in OVERRIDE_DECISIONS:
            raise OverrideError(path, image_id, f"decision must be one of {', '.join(OVERRIDE_DECISIONS)}, got {decision!r}")
        by = entry.get("by")
        if not isinstance(by, str) or not by.strip():
            raise OverrideError(path, image_id, "by is required: the name of who decided")
        reason = entry.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise OverrideError(path, image_id, f"reason must be text, got {reason!r}")
        at = entry.get("at")
        if at is not None and not isinstance(at, str | datetime.date):
            raise OverrideError(path, image_id, f"at must be a date and time, got {at!r}")
        at = at.isoformat() if isinstance(at, datetime.date) else at
        overrides[image_id] = Override(image_id, decision, by.strip(), reason.strip() if reason else None, at)
    return overrides


def load_overrides(path: Path) -> dict[str, Override]:
    """The partition's overrides; a missing file means none."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OverrideError(path, None, f"cannot be read: {exc}") from exc
    return parse_overrides(text, path)


# ------------------------------------------------------------------------------ decisions


@dataclass
class Decisions:
    approved: list[bool]
    approval_method: list[str]
    rejection_reason: list[str | None]
    decided_by: list[str | None]
    near_duplicate_of: list[str | None]
    unknown_overrides: list[str] = field(default_factory=list)
    """Override entries naming no image of the partition (likely a typo or another night)."""


def decide(
    scores: pd.DataFrame,
    embeddings: np.ndarray,
    thresholds: Thresholds,
    near_duplicate_cosine: float,
    *,
    prior_embeddings: np.ndarray | None = None,
    prior_ids: Sequence[str] = (),
    overrides: Mapping[str, Override] | None = None,
) -> Decisions:
    """Gate every image, then near-duplicates among the survivors, then manual overrides (which win).

    ``scores`` has one row per image with ``image_id`` and the four score columns.
    """
    ids = [str(i) for i in scores["image_id"]]
    reasons = [
        first_failed_gate(a, t, f, thresholds)
        for a, t, f in zip(scores[AESTHETIC].astype(float), scores[TECHNICAL].astype(float), scores[FACE_MATCH].astype(float))
    ]
    duplicate_of: list[str | None] = [None] * len(ids)
    readable = [r != REASON_UNREADABLE for r in reasons]
    if any(readable):
        usable = [i for i, ok in enumerate(readable) if ok]
        matches = mark_near_duplicates(
            np.asarray(embeddings)[usable],
            [scores[COMPOSITE].iloc[i] for i in usable],
            [reasons[i] is None for i in usable],
            [ids[i] for i in usable],
            near_duplicate_cosine,
            prior_embeddings,
            prior_ids,
        )
        for match in matches:
            index = usable[match.index]
            duplicate_of[index] = match.of
            reasons[index] = REASON_NEAR_DUPLICATE
    overrides = dict(overrides or {})
    approved, methods, decided_by = [], [], []
    for index, image_id in enumerate(ids):
        override = overrides.pop(image_id, None)
        if override is None:
            approved.append(reasons[index] is None)
            methods.append(APPROVAL_AUTO)
            decided_by.append(None)
            continue
        approved.append(override.approved)
        methods.append(APPROVAL_MANUAL)
        decided_by.append(override.by)
        if override.approved:
            reasons[index] = None
        else:
            reasons[index] = f"{REASON_MANUAL}: {override.reason}" if override.reason else REASON_MANUAL
    return Decisions(approved, methods, reasons, decided_by, duplicate_of, sorted(overrides))


# ------------------------------------------------------------------------------ report aggregation

STATISTICS = ("min", "max", "mean", "std", "p10", "p50", "p90")
OVERALL = "overall"


def score_distribution(values: pd.Series) -> dict[str, float | int | None]:
    """min/max/mean/std/p10/p50/p90 of the non-missing values; std is the sample std (ddof=1)."""
    present = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    if present.empty:
        return {"count": 0, **{name: None for name in STATISTICS}}
    stats = {
        "min": present.min(),
        "max": present.max(),
        "mean": present.mean(),
        "std": present.std(ddof=1),
        "p10": present.quantile(0.10),
        "p50": present.quantile(0.50),
        "p90": present.quantile(0.90),
    }
    return {"count": int(present.size), **{k: None if pd.isna(v) else float(v) for k, v in stats.items()}}


def group_summary(frame: pd.DataFrame) -> dict[str, Any]:
    generated = int(len(frame))
    approved = int(frame["approved"].astype(bool).sum()) if generated else 0
    reasons = frame.loc[~frame["approved"].astype(bool), "rejection_reason"].fillna("unknown") if generated else []
    return {
        "generated": generated,
        "approved": approved,
        "rejected": generated - approved,
        "approval_rate": approved / generated if generated else None,
        "scores": {column: score_distribution(frame[column]) for column in SCORE_COLUMNS if column in frame},
        "rejection_reasons": {str(k): int(v) for k, v in pd.Series(reasons).value_counts().sort_index().items()},
    }


def quality_summary(frame: pd.DataFrame, by: str = "queen") -> dict[str, dict[str, Any]]:
    """Per value of ``by`` (sorted) and ``OVERALL`` last."""
    summary = {str(key): group_summary(group) for key, group in frame.groupby(by, sort=True)}
    summary[OVERALL] = group_summary(frame)
    return summary


def summary_table(summary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per group for markdown: counts, rate, and mean / p10 / p90 per score."""
    rows = []
    for name, group in summary.items():
        row: dict[str, Any] = {
            "queen": name,
            "generated": group["generated"],
            "approved": group["approved"],
            "rejected": group["rejected"],
            "approval rate": "-" if group["approval_rate"] is None else f"{group['approval_rate']:.0%}",
        }
        for column, stats in group["scores"].items():
            label = column.removesuffix("_score")
            row[label] = _format_stats(stats)
        row["rejections"] = ", ".join(f"{k}: {v}" for k, v in group["rejection_reasons"].items()) or "-"
        rows.append(row)
    return rows


def _format_stats(stats: Mapping[str, Any]) -> str:
    if not stats.get("count"):
        return "-"
    precision = 1 if (stats["max"] or 0) > 1.0 else 3
    mean, p10, p90 = (f"{stats[k]:.{precision}f}" for k in ("mean", "p10", "p90"))
    return f"{mean} ({p10}-{p90})"


def detail_rows(summary: Mapping[str, Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every statistic of every score, one row per group and score (the report's second table)."""
    for name, group in summary.items():
        for column, stats in group["scores"].items():
            yield {
                "queen": name,
                "score": column.removesuffix("_score"),
                "n": stats["count"],
                **{k: "-" if stats[k] is None else f"{stats[k]:.3f}" for k in STATISTICS},
            }
