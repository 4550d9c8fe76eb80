"""A queen's reference identity: one mean face vector and how well the references agree.

The similarity function is passed in, so the calibration stays with the face backend that
produced the embeddings and this module stays free of model code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Similarity = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class IdentitySummary:
    mean_embedding: np.ndarray | None
    with_face: list[str]
    no_face: list[str]
    off_identity: list[str]
    similarity_to_mean: dict[str, float] = field(default_factory=dict)

    @property
    def spread(self) -> float | None:
        """Mean calibrated similarity of the references to their mean (1.0 = all identical)."""
        if not self.similarity_to_mean:
            return None
        return float(np.mean(list(self.similarity_to_mean.values())))

    def to_json(self) -> dict:
        return {
            "faces": len(self.with_face),
            "with_face": self.with_face,
            "no_face": self.no_face,
            "off_identity": self.off_identity,
            "similarity_to_mean": {k: round(v, 4) for k, v in self.similarity_to_mean.items()},
            "spread": None if self.spread is None else round(self.spread, 4),
        }


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ValueError("cannot normalise a zero vector")
    return (vector / norm).astype(np.float32)


def summarize_identity(
    names: Sequence[str],
    embeddings: Sequence[np.ndarray | None],
    similarity: Similarity,
    threshold: float,
) -> IdentitySummary:
    """Mean of the unit embeddings (re-normalised); references below ``threshold`` are off-identity."""
    if len(names) != len(embeddings):
        raise ValueError(f"{len(names)} names but {len(embeddings)} embeddings")
    with_face = [n for n, e in zip(names, embeddings) if e is not None]
    no_face = [n for n, e in zip(names, embeddings) if e is None]
    if not with_face:
        return IdentitySummary(None, [], no_face, [])
    stacked = np.stack([e for e in embeddings if e is not None]).astype(np.float32)
    mean = unit(stacked.mean(axis=0))
    scores = np.atleast_1d(np.asarray(similarity(stacked, mean), dtype=np.float64))
    by_name = {name: float(score) for name, score in zip(with_face, scores)}
    off_identity = [name for name, score in by_name.items() if score < threshold]
    return IdentitySummary(mean, with_face, no_face, off_identity, by_name)


# ------------------------------------------------------------------------------ which face is hers

SIZE_WEIGHT = 0.1
"""How much a face's size counts next to its similarity to the queen: a face half the side of the
largest confident one needs 0.05 more calibrated similarity to be chosen. Similarity decides
between different people; size decides between two detections of her (a badge, a reflection)."""


@dataclass(frozen=True)
class FaceCandidate:
    """One detection: box (x0, y0, x1, y1), detector confidence, calibrated similarity to the queen."""

    bbox: tuple[int, int, int, int]
    det_score: float
    similarity: float | None = None

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.bbox
        return max(0, x1 - x0) * max(0, y1 - y0)


def choose_face(candidates: Sequence[FaceCandidate], min_det_score: float) -> int | None:
    """Index of the detection most likely to be the queen's face, or None when none is confident.

    Detections below ``min_det_score`` are dropped first: a detector's weakest hits are the
    face-like patches (a badge, a print on the clothing) that a largest-face rule would take.
    Of the rest, the highest ``similarity + SIZE_WEIGHT * sqrt(area / largest area)`` wins;
    without similarities (no identity yet) that is the largest confident face.
    """
    confident = [i for i, c in enumerate(candidates) if c.det_score >= min_det_score]
    if not confident:
        return None
    largest = max(candidates[i].area for i in confident) or 1

    def likelihood(index: int) -> tuple[float, int]:
        candidate = candidates[index]
        similarity = 0.0 if candidate.similarity is None else float(candidate.similarity)
        return similarity + SIZE_WEIGHT * float(np.sqrt(candidate.area / largest)), candidate.area

    return max(confident, key=likelihood)
