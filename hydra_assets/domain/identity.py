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
