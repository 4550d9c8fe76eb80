"""What the quality assets read: the generated manifest and a partition's score table."""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from hydra_assets.domain.score_table import MANIFEST_NAME
from hydra_assets.domain.storage import StorageLayout, read_json


def read_generated_manifest(layout: StorageLayout, night: str, slug: str) -> dict[str, Any]:
    path = layout.generated_dir(night, slug) / MANIFEST_NAME
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        raise dg.Failure(f"{path} cannot be read as JSON: {exc}") from exc
    if manifest is None:
        raise dg.Failure(f"{path} is missing: materialize generated_images for {slug} on {night} first")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("images"), list):
        raise dg.Failure(f"{path}: must be an object with an 'images' list (the generated_images manifest)")
    return manifest


def read_scores(path: Path) -> pd.DataFrame | None:
    """A partition's scores, or None when there are none yet (or the file is unreadable: it is rewritten)."""
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid, a ValueError
        dg.get_dagster_logger().warning(f"{path} cannot be read ({exc}); every image is scored again")
        return None
