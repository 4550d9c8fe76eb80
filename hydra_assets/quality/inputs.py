"""What the quality assets read: the generated manifest and a partition's score table."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from hydra_assets.domain.damaged_files import (
    ABSENT,
    DamagedFileError,
    generated_fix,
    generated_manifest_problem,
    score_frame_problem,
)
from hydra_assets.domain.score_table import MANIFEST_NAME, SCORE_FRAME_COLUMNS
from hydra_assets.domain.storage import StorageLayout, read_json


def read_generated_manifest(layout: StorageLayout, night: str, slug: str) -> dict[str, Any]:
    path = layout.generated_dir(night, slug) / MANIFEST_NAME
    try:
        manifest = read_json(path, default=ABSENT)
    except (OSError, ValueError) as exc:
        raise dg.Failure(str(DamagedFileError(path, f"cannot be read ({exc})", generated_fix(slug, night)))) from exc
    if manifest is ABSENT:
        raise dg.Failure(f"{path} is missing: materialize generated_images for {slug} on {night} first")
    problem = generated_manifest_problem(manifest)
    if problem:
        raise dg.Failure(str(DamagedFileError(path, problem, generated_fix(slug, night))))
    return manifest


def read_scores(path: Path, columns: Sequence[str] = SCORE_FRAME_COLUMNS, writer: str = "image_scores") -> pd.DataFrame | None:
    """A partition's scores (or night_scores' raw scores: ``columns``), or None when there are none yet
    (or the file is unreadable or lacks what its readers index: ``writer`` rewrites it)."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid, a ValueError
        dg.get_dagster_logger().warning(f"{path} cannot be read ({exc}); every image is scored again")
        return None
    problem = score_frame_problem(frame, columns)
    if problem:  # hand-edited or written by something else: a cache, rebuilt by re-scoring
        dg.get_dagster_logger().warning(f"{path} {problem}; every image is scored again (re-materialize {writer})")
        return None
    return frame
