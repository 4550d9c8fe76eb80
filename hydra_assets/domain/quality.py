"""The quality gate's pure logic: the scores, the composite, the gate, near-duplicates and the decisions.

No model code lives here. Model backends (resources/scoring.py, resources/face.py) produce raw
numbers; this module turns them into the SPEC's scores and decisions, so the rules can be read
and tested without a GPU.

Scales (SPEC "Quality gate"): aesthetic 1-10 (LAION aesthetic predictor), technical 0-100 (MUSIQ
on KonIQ), face match 0-1 (calibrated in resources/face.py), composite 0-1 (below). How each
backend's raw output is put on these scales: domain/image_measures.py; people's overrides:
domain/overrides.py; the night's figures: domain/quality_report.py.

Composite
---------
``composite = 0.4 * face + 0.3 * (aesthetic - 1) / 9 + 0.3 * technical / 100`` in [0, 1]; no face
counts as face 0. Identity weighs most because an off-model image is useless however pretty.
It ranks images, most of all within a near-duplicate group; it gates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hydra_assets.domain.overrides import Override, OverrideError, load_overrides, parse_overrides

__all__ = ["Override", "OverrideError", "load_overrides", "parse_overrides"]  # people's overrides, decided here

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

APPROVAL_ALERT_RATE = 0.5
"""SPEC: a queen whose approval rate for a night falls below this needs attention (check and alert)."""

APPROVAL_AUTO = "auto"
APPROVAL_MANUAL = "manual"

COMPOSITE_WEIGHTS = {"face": 0.4, "aesthetic": 0.3, "technical": 0.3}

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
