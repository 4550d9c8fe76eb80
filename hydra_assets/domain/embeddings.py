"""The embedding store's contract (SPEC "Control plane contracts", seed 000 §3.3), without a client.

Two collections, cosine distance:

- ``queen_embeddings``: named vectors ``face`` (the face backend's size), ``style`` (the image
  embedding space of approved images) and ``description`` (1024, text); one point per reference
  face, approved image style or description.
- ``generated_images``: vector ``visual`` (the scoring embedding) of every scored image, with its
  scores and decision; payload indexes on queen_slug, asset_type, approved and aesthetic_score.

Point ids are uuid5 of what the point stands for (an image id, a reference file), so writing the
same image twice replaces its point instead of adding one.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

QUEEN_EMBEDDINGS = "queen_embeddings"
GENERATED_IMAGES = "generated_images"

FACE = "face"
STYLE = "style"
DESCRIPTION = "description"
VISUAL = "visual"

DESCRIPTION_SIZE = 1024
"""Text embeddings of a queen's description (seed: 1024)."""
INSIGHTFACE_SIZE = 512
DLIB_FACE_SIZE = 128
CLIP_VIT_L14_SIZE = 768
TINY_IMAGE_SIZE = 32 * 32
"""The embedded aesthetic proxy's ``tiny-image-32`` embedding (a test holds it to the backend)."""

EMBEDDING_TYPES = ("reference", "generated", "description")

QUEEN_PAYLOAD_FIELDS = ("queen_id", "queen_slug", "queen_name", "tier", "embedding_type", "source_file", "created_at")
IMAGE_PAYLOAD_FIELDS = (
    "image_id", "task_id", "queen_id", "queen_slug", "asset_type", "aesthetic_score", "technical_score",
    "face_match_score", "approved", "prompt", "seed", "file_path", "generated_at",
)
EXTRA_IMAGE_FIELDS = ("night", "night_key", "embedding_model")
"""Beyond the seed's payload: the partition night (so a query can keep to earlier nights) and the
embedding space (vectors of two spaces are never compared, even at one size)."""

IMAGE_PAYLOAD_INDEXES = {"queen_slug": "keyword", "asset_type": "keyword", "approved": "bool", "aesthetic_score": "float"}
QUEEN_PAYLOAD_INDEXES = {"queen_slug": "keyword", "embedding_type": "keyword"}

POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://hydra.studio/embeddings")


class EmbeddingStoreError(RuntimeError):
    """A store that cannot be used as configured; the message names the collection or folder and the fix."""


@dataclass(frozen=True)
class VectorSizes:
    """Vector sizes of the configured backends; a collection created with other sizes is refused."""

    face: int
    style: int
    visual: int
    description: int = DESCRIPTION_SIZE

    def __post_init__(self) -> None:
        for name in (FACE, STYLE, VISUAL, DESCRIPTION):
            size = getattr(self, name)
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"vector size {name} must be a positive integer, got {size!r}")

    def for_collection(self, collection: str) -> dict[str, int]:
        if collection == QUEEN_EMBEDDINGS:
            return {FACE: self.face, STYLE: self.style, DESCRIPTION: self.description}
        if collection == GENERATED_IMAGES:
            return {VISUAL: self.visual}
        raise KeyError(f"unknown collection {collection!r}: {QUEEN_EMBEDDINGS} or {GENERATED_IMAGES}")


def size_mismatch(collection: str, expected: Mapping[str, int], actual: Mapping[str, int], location: str) -> str | None:
    """Why an existing collection cannot take the configured vectors, or None when it can."""
    problems = []
    for name, size in expected.items():
        if name not in actual:
            problems.append(f"has no vector {name!r} (it has {', '.join(sorted(actual)) or 'none'})")
        elif actual[name] != size:
            problems.append(f"stores {name!r} vectors of size {actual[name]}, the configured backend makes {size}")
    if not problems:
        return None
    return (
        f"collection {collection!r} in {location} " + "; ".join(problems) + ". Vectors of another size or space "
        "cannot be compared: either point the store at a new location for this backend, or re-index: delete "
        f"{collection!r} (locally: the store's folder), run `hydra reindex-embeddings` for the image vectors and "
        "re-materialize reference_identity for the face vectors."
    )


def point_id(collection: str, key: str) -> str:
    """A stable point id: the same key in the same collection is always the same point."""
    if not key:
        raise ValueError(f"{collection}: a point needs a non-empty key (an image id or a source file)")
    return str(uuid.uuid5(POINT_NAMESPACE, f"{collection}/{key}"))


def image_point_id(image_id: str) -> str:
    return point_id(GENERATED_IMAGES, image_id)


def queen_point_id(queen_slug: str, embedding_type: str, source: str) -> str:
    return point_id(QUEEN_EMBEDDINGS, f"{queen_slug}/{embedding_type}/{source}")


def night_key(night: str) -> int:
    """``YYYY-MM-DD`` → ``YYYYMMDD``: a number, so "earlier nights" is a range filter."""
    parts = str(night).split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or [len(p) for p in parts] != [4, 2, 2]:
        raise ValueError(f"night must be YYYY-MM-DD, got {night!r}")
    return int("".join(parts))


def checked_vector(vector: Any, size: int, what: str) -> list[float]:
    """``vector`` as a list of floats of ``size``, finite and non-zero (cosine of a zero vector is undefined)."""
    array = np.asarray(vector, dtype=np.float64).reshape(-1)
    if array.size != size:
        raise EmbeddingStoreError(f"{what}: vector has {array.size} values, the collection takes {size}")
    if not np.all(np.isfinite(array)) or not np.any(array):
        raise EmbeddingStoreError(f"{what}: vector must be finite and not all zero")
    return array.tolist()


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


@dataclass(frozen=True)
class ImageRecord:
    """One scored image: its ``visual`` vector and the seed's payload."""

    image_id: str
    queen_slug: str
    night: str
    vector: Sequence[float]
    embedding_model: str
    asset_type: str
    approved: bool
    file_path: str
    generated_at: str | None
    aesthetic_score: float | None = None
    technical_score: float | None = None
    face_match_score: float | None = None
    prompt: str | None = None
    seed: int | None = None
    task_id: str | None = None
    queen_id: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "task_id": self.task_id,
            "queen_id": self.queen_id if self.queen_id is not None else self.queen_slug,
            "queen_slug": self.queen_slug,
            "asset_type": self.asset_type,
            "aesthetic_score": _number(self.aesthetic_score),
            "technical_score": _number(self.technical_score),
            "face_match_score": _number(self.face_match_score),
            "approved": bool(self.approved),
            "prompt": self.prompt,
            "seed": None if self.seed is None else int(self.seed),
            "file_path": self.file_path,
            "generated_at": self.generated_at,
            "night": self.night,
            "night_key": night_key(self.night),
            "embedding_model": self.embedding_model,
        }


@dataclass(frozen=True)
class QueenVectorRecord:
    """One point of ``queen_embeddings``: a reference face, an approved image's style or a description."""

    queen_slug: str
    embedding_type: str
    source_file: str
    vectors: Mapping[str, Sequence[float]]
    created_at: str
    queen_name: str | None = None
    tier: str | None = None
    queen_id: str | None = None

    def __post_init__(self) -> None:
        if self.embedding_type not in EMBEDDING_TYPES:
            raise ValueError(f"embedding_type must be one of {', '.join(EMBEDDING_TYPES)}, got {self.embedding_type!r}")
        unknown = set(self.vectors) - {FACE, STYLE, DESCRIPTION}
        if unknown or not self.vectors:
            raise ValueError(f"{self.source_file}: vectors must be some of face, style, description, got {sorted(self.vectors)}")

    def point_id(self) -> str:
        return queen_point_id(self.queen_slug, self.embedding_type, self.source_file)

    def payload(self) -> dict[str, Any]:
        return {
            "queen_id": self.queen_id if self.queen_id is not None else self.queen_slug,
            "queen_slug": self.queen_slug,
            "queen_name": self.queen_name,
            "tier": self.tier,
            "embedding_type": self.embedding_type,
            "source_file": self.source_file,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class SimilarImage:
    """One hit of a similarity query: the image, its cosine to the query and its payload."""

    image_id: str
    score: float
    payload: Mapping[str, Any]
    vector: tuple[float, ...] | None = None


def prior_matrix(hits_per_query: Sequence[Sequence[SimilarImage]]) -> tuple[np.ndarray | None, list[str]]:
    """The distinct images among the hits, as the (matrix, ids) pair the near-duplicate gate takes.

    Each query image's nearest prior image is among them, so the gate's argmax over this set is
    its argmax over every prior image.
    """
    seen: dict[str, tuple[float, ...]] = {}
    for hits in hits_per_query:
        for hit in hits:
            if hit.vector is None:
                raise ValueError(f"hit {hit.image_id} came back without its vector")
            seen.setdefault(hit.image_id, hit.vector)
    ids = sorted(seen)
    if not ids:
        return None, []
    return np.asarray([seen[i] for i in ids], dtype=np.float32), ids


def nearest_hits(queries: np.ndarray, candidates: Sequence[SimilarImage]) -> list[list[SimilarImage]]:
    """Each query's nearest candidate by cosine (an empty list where there are none), the hit a
    ``limit=1`` query would return."""
    if not candidates:
        return [[] for _ in range(len(queries))]
    matrix = np.asarray([c.vector for c in candidates], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = np.asarray(queries, dtype=np.float64)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    cosines = unit @ matrix.T
    best = np.argmax(cosines, axis=1)
    return [
        [SimilarImage(candidates[b].image_id, float(cosines[row, b]), candidates[b].payload, candidates[b].vector)]
        for row, b in enumerate(best)
    ]


def _task_id(params: Any) -> str | None:
    """The generation task an image was made for, from its generation params (JSON text or a mapping)."""
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            return None
    value = params.get("task_id") if isinstance(params, Mapping) else None
    return None if value is None else str(value)


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def _optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def image_records(rows: Sequence[Mapping[str, Any]]) -> list[ImageRecord]:
    """Records of the score table's rows that have an embedding (an unreadable image has none).

    Columns as ``image_scores`` writes them (queen, night, asset_type, file_path relative to the
    storage root, the score columns, approved, prompt_used, seed, generated_at, generation_params,
    embedding_model, embedding).
    """
    records = []
    for row in rows:
        vector = row.get("embedding")
        if vector is None or len(vector) == 0:
            continue
        records.append(
            ImageRecord(
                image_id=str(row["image_id"]),
                queen_slug=str(row["queen"]),
                night=str(row["night"]),
                vector=np.asarray(vector, dtype=np.float32),
                embedding_model=str(row["embedding_model"]),
                asset_type=str(row["asset_type"]),
                approved=bool(row["approved"]),
                file_path=str(row["file_path"]),
                generated_at=_optional_text(row.get("generated_at")),
                aesthetic_score=_number(row.get("aesthetic_score")),
                technical_score=_number(row.get("technical_score")),
                face_match_score=_number(row.get("face_match_score")),
                prompt=_optional_text(row.get("prompt_used")),
                seed=_optional_int(row.get("seed")),
                task_id=_task_id(row.get("generation_params")),
            )
        )
    return records
