"""night_scores' per-queen raw-score file: what image_scores takes instead of loading the models.

``overnight/{night}/raw_scores/{slug}.parquet`` holds, per image, the model outputs image_scores
would compute (the three raw scores, the embedding, the chosen face) with the keys that decide
whether they still hold (file hash, backend names, identity hash: ``score_table.REUSE_KEYS``).
``status.json`` beside them says per queen what the night's scoring did (or why it could not).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hydra_assets.domain import quality
from hydra_assets.domain.score_table import REUSE_KEYS
from hydra_assets.domain.storage import StorageLayout, sha256_bytes

RAW_FOLDER = "raw_scores"
STATUS_FILE = "status.json"
RAW_COLUMNS = (
    "image_id", *REUSE_KEYS, "file_size",
    quality.AESTHETIC, quality.TECHNICAL, quality.FACE_MATCH, "embedding", "face_bbox", "face_det_score",
)
STATUS_SCORED = "scored"
STATUS_FAILED = "failed"


def raw_scores_dir(layout: StorageLayout, night: str) -> Path:
    return layout.overnight(night) / RAW_FOLDER


def raw_scores_path(layout: StorageLayout, night: str, slug: str) -> Path:
    return raw_scores_dir(layout, night) / f"{slug}.parquet"


def status_path(layout: StorageLayout, night: str) -> Path:
    return raw_scores_dir(layout, night) / STATUS_FILE


def night_queens(layout: StorageLayout, night: str, manifest_name: str) -> list[str]:
    """Queens with a generated_images manifest (readable or not) that night, by slug."""
    folder = layout.overnight(night) / "generated"
    if not folder.is_dir():
        return []
    return sorted(p.parent.name for p in folder.glob(f"*/{manifest_name}"))


def raw_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The raw-score table of one queen: only images with a file (a missing one is image_scores' to report)."""
    kept = [{c: row.get(c) for c in RAW_COLUMNS} for row in rows if row.get("file_hash")]
    frame = pd.DataFrame(kept, columns=list(RAW_COLUMNS))
    frame["embedding"] = [np.asarray(e, np.float32) if isinstance(e, np.ndarray | list) and len(e) else None
                          for e in frame["embedding"]]
    return frame


def raw_digest(frame: pd.DataFrame | None) -> str | None:
    """Changes when an image, a key or a score changes (so: when image_scores would decide anew)."""
    if frame is None:
        return None
    columns = ["image_id", *REUSE_KEYS, quality.AESTHETIC, quality.TECHNICAL, quality.FACE_MATCH]
    subset = frame[columns].sort_values("image_id").round(6)
    return sha256_bytes(subset.to_json(orient="records").encode())[:16]


def rows_by_id(frame: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    return {} if frame is None else {str(r["image_id"]): r for r in frame.to_dict("records")}
