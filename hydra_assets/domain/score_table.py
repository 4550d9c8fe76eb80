"""The score table of one queen × night: its columns, its rows from the manifest, its checks, its catalog rows.

image_scores writes it (``overnight/{night}/scores/{slug}.parquet``); approved_images and
quality_report read it. One row per image: the SPEC's generated_assets columns plus what re-runs
and lineage need.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from hydra_assets.domain import quality
from hydra_assets.domain.storage import StorageLayout, sha256_bytes

MANIFEST_NAME = "manifest.json"
"""generated_images' manifest in ``overnight/{night}/generated/{slug}/``."""
REASON_MAX_LENGTH = 200
"""generated_assets.rejection_reason is a String(200)."""

SCORE_FRAME_COLUMNS = (
    "image_id", "queen", "night", "asset_type", "file_path", "file_size", "file_hash",
    *quality.SCORE_COLUMNS,
    "approved", "approval_method", "rejection_reason", "decided_by", "near_duplicate_of", "approved_at",
    "generation_params", "prompt_used", "seed", "generated_at",
    "aesthetic_backend", "technical_backend", "face_backend", "embedding_model", "identity_hash", "embedding",
    "face_bbox", "face_det_score",
)
REUSE_KEYS = ("file_hash", "aesthetic_backend", "technical_backend", "face_backend", "embedding_model", "identity_hash")
"""A previous row's scores are reused only when all of these are unchanged."""


def manifest_ids(manifest: Mapping[str, Any]) -> list[str]:
    """Every image id the generated manifest lists, usable entry or not."""
    return [str(e["image_id"]) for e in manifest["images"] if isinstance(e, dict) and e.get("image_id")]


def manifest_rows(
    manifest: Mapping[str, Any], layout: StorageLayout, night: str, slug: str, warn: Callable[[str], object]
) -> list[dict[str, Any]]:
    """One base row per usable manifest entry; an entry without id, type or file is reported and left out."""
    folder = layout.generated_dir(night, slug)
    rows, seen = [], set()
    for position, entry in enumerate(manifest["images"]):
        missing = [k for k in ("image_id", "asset_type", "file") if not isinstance(entry, dict) or not entry.get(k)]
        if missing:
            warn(f"{folder / MANIFEST_NAME}: images[{position}] lacks {', '.join(missing)}; left out")
            continue
        image_id = str(entry["image_id"])
        if image_id in seen:
            warn(f"{folder / MANIFEST_NAME}: {image_id} is listed twice; the first entry is scored")
            continue
        seen.add(image_id)
        path = (folder / entry["file"]).resolve()
        if not path.is_relative_to(folder.resolve()):
            warn(f"{folder / MANIFEST_NAME}: {image_id}: file {entry['file']!r} points outside {folder}; left out")
            continue
        params = entry.get("params") or {}
        rows.append(
            {
                "image_id": image_id,
                "queen": slug,
                "night": night,
                "asset_type": str(entry["asset_type"]),
                "file_path": path.relative_to(layout.root.resolve()).as_posix(),
                "generation_params": json.dumps(params, sort_keys=True),
                "prompt_used": params.get("prompt"),
                "seed": entry.get("seed", params.get("seed")),
                "generated_at": entry.get("generated_at"),
                "_path": path,
                "_manifest_sha256": entry.get("sha256"),
            }
        )
    return rows


def has_vector(value: Any) -> bool:
    return isinstance(value, np.ndarray | list) and len(value) > 0


def embedding_matrix(column: pd.Series) -> np.ndarray:
    """(n, d) from a column of vectors; zeros for images without one (unreadable, never compared)."""
    vectors = [np.asarray(v, dtype=np.float32) for v in column if has_vector(v)]
    dim = vectors[0].shape[0] if vectors else 0
    return np.stack([np.asarray(v, np.float32) if has_vector(v) else np.zeros(dim, np.float32) for v in column]) \
        if len(column) else np.empty((0, dim), np.float32)


def approved_at(previous: Mapping[str, Any] | None, now: datetime) -> datetime:
    """An image approved before keeps its approval time across re-runs."""
    if previous is not None and previous.get("approved") and previous.get("approved_at") is not None:
        stamp = pd.Timestamp(previous["approved_at"])
        if not pd.isna(stamp):
            return (stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp).to_pydatetime()
    return now


def decision_hash(frame: pd.DataFrame) -> str:
    """Changes exactly when a file, a score or a decision changes: the data version of both assets."""
    subset = frame[["image_id", "file_hash", *quality.SCORE_COLUMNS, "approved", "rejection_reason"]].round(6)
    return sha256_bytes(subset.to_json(orient="records").encode())[:16]


def decision_label(row: Mapping[str, Any]) -> str:
    label = "approved" if row["approved"] else str(row["rejection_reason"])
    return label + (" (manual)" if row["approval_method"] == quality.APPROVAL_MANUAL else "")


def none_if_nan(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float | np.floating) and np.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def catalog_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A score row as the catalog's generated_assets columns."""
    reason = row["rejection_reason"]
    generated_at = pd.Timestamp(row["generated_at"]) if row.get("generated_at") else None
    if generated_at is not None and generated_at.tzinfo is None:
        generated_at = generated_at.tz_localize(UTC)
    approved = pd.Timestamp(row["approved_at"]) if row.get("approved_at") is not None else None
    values = {
        "asset_type": row["asset_type"],
        "file_path": row["file_path"],
        "file_size": none_if_nan(row["file_size"]),
        "file_hash": row["file_hash"],
        **{column: none_if_nan(row[column]) for column in quality.SCORE_COLUMNS},
        "approved": bool(row["approved"]),
        "approval_method": row["approval_method"],
        "rejection_reason": None if reason is None else str(reason)[:REASON_MAX_LENGTH],
        "generation_params": json.loads(row["generation_params"]) if row["generation_params"] else None,
        "prompt_used": row["prompt_used"],
        "seed": None if none_if_nan(row["seed"]) is None else int(row["seed"]),
        "approved_at": None if approved is None or pd.isna(approved) else approved.to_pydatetime(),
    }
    if generated_at is not None and not pd.isna(generated_at):
        values["generated_at"] = generated_at.to_pydatetime()
    return values


def check_scores(scores: pd.DataFrame, ids: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(scored-once findings, out-of-range findings) against the manifest's ``ids``; all lists empty means both pass.

    A missing face score is valid (no face found); other scores may be missing only for an
    image that could not be read.
    """
    counts = Counter(str(i) for i in scores["image_id"])
    once = {
        "missing": sorted(set(ids) - set(counts)),
        "duplicated": sorted(i for i, n in counts.items() if n > 1),
        "unknown": sorted(set(counts) - set(ids)),
    }
    unreadable = scores["rejection_reason"] == quality.REASON_UNREADABLE
    out_of_range: dict[str, list[str]] = {}
    for column, (low, high) in quality.SCORE_RANGES.items():
        values = pd.to_numeric(scores[column], errors="coerce")
        bad = values.notna() & ((values < low) | (values > high))
        if column != quality.FACE_MATCH:
            bad |= values.isna() & ~unreadable
        if bad.any():
            out_of_range[column] = sorted(str(i) for i in scores.loc[bad, "image_id"])
    return once, out_of_range
