"""What the review pages show, read from storage: nights, queens, and every image of a partition.

Every path parameter is validated before it touches the file system: a night is a calendar
date, a queen a roster slug, an image id one listed in the partition's manifest; the file an
entry names is resolved and must stay inside the partition's folder under the storage root.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hydra_assets.domain import overrides, quality
from hydra_assets.domain.roster import RosterError, is_valid_slug, load_queen
from hydra_assets.domain.storage import StorageLayout, read_json

NIGHT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MANIFEST_NAME = "manifest.json"


class NotFound(LookupError):
    """A night, queen or image that does not exist (or a name that cannot be one)."""


def valid_night(night: str) -> bool:
    if not NIGHT_RE.fullmatch(night):
        return False
    try:
        datetime.date.fromisoformat(night)
    except ValueError:
        return False
    return True


@dataclass
class ImageView:
    """One image as the grid and the full-size page show it."""

    image_id: str
    asset_type: str
    path: Path
    width: int | None
    height: int | None
    file_hash: str | None
    """The hash the decision form carries: the scored file's, or the manifest's before scoring."""
    params: dict[str, Any]
    details: dict[str, Any]
    generated_at: str | None
    scored: bool = False
    scores: dict[str, float | None] = field(default_factory=dict)
    approved: bool | None = None
    approval_method: str | None = None
    rejection_reason: str | None = None
    decided_by: str | None = None
    near_duplicate_of: str | None = None
    gate: str | None = None
    """The first failed gate on the scores alone (before near-duplicates and overrides)."""
    face_bbox: list[int] | None = None
    face_det_score: float | None = None
    override: overrides.Override | None = None

    @property
    def status(self) -> str:
        if self.approved is None:
            return "unscored"
        return "approved" if self.approved else "rejected"

    @property
    def reason_kind(self) -> str | None:
        """The reason without a person's note: ``manual: wrong outfit`` → ``manual``."""
        if self.rejection_reason is None:
            return None
        return self.rejection_reason.split(":", 1)[0]

    @property
    def pending(self) -> bool:
        """An override written that the published decision does not reflect yet."""
        if self.override is None:
            return False
        return not (self.approval_method == quality.APPROVAL_MANUAL and self.approved == self.override.approved)

    def face_box_percent(self) -> dict[str, float] | None:
        """The chosen face as CSS percentages of the image, for the overlay."""
        if not self.face_bbox or not self.width or not self.height:
            return None
        x0, y0, x1, y1 = self.face_bbox
        return {
            "left": 100 * x0 / self.width,
            "top": 100 * y0 / self.height,
            "width": 100 * (x1 - x0) / self.width,
            "height": 100 * (y1 - y0) / self.height,
        }


@dataclass
class Partition:
    night: str
    queen: str
    manifest: dict[str, Any]
    images: list[ImageView]
    thresholds: quality.Thresholds | None
    roster_error: str | None
    overrides_error: str | None
    scores_path: Path
    overrides_path: Path

    def by_id(self, image_id: str) -> ImageView:
        for image in self.images:
            if image.image_id == image_id:
                return image
        raise NotFound(f"no image {image_id!r} in {self.queen} on {self.night}")

    def lineage(self) -> dict[str, Any]:
        header = {k: v for k, v in self.manifest.items() if k not in ("images", "failed", "superseded")}
        return header


class ReviewStore:
    """Read-only access to the storage root for the review pages."""

    def __init__(self, storage_root: Path, roster_dir: Path):
        self.layout = StorageLayout(Path(storage_root))
        self.root = Path(storage_root).resolve()
        self.roster_dir = Path(roster_dir)
        self._file_index: dict[Path, tuple[tuple[int, int], dict[str, Path]]] = {}

    # ------------------------------------------------------------------ listing

    def nights(self) -> list[str]:
        folder = self.layout.root / "overnight"
        if not folder.is_dir():
            return []
        return sorted((p.name for p in folder.iterdir() if p.is_dir() and valid_night(p.name)), reverse=True)

    def queens(self, night: str) -> list[str]:
        self._check_night(night)
        folder = self.layout.overnight(night) / "generated"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if is_valid_slug(p.name) and (p / MANIFEST_NAME).is_file())

    def queen_summary(self, night: str, queen: str) -> dict[str, Any]:
        frame = self._scores(self.layout.scores_path(night, queen))
        manifest = read_json(self.layout.generated_dir(night, queen) / MANIFEST_NAME, {}) or {}
        generated = len(manifest.get("images") or [])
        if frame is None:
            return {"queen": queen, "generated": generated, "scored": 0, "approved": 0, "rejected": 0}
        approved = int(frame["approved"].astype(bool).sum())
        return {"queen": queen, "generated": generated, "scored": len(frame), "approved": approved,
                "rejected": len(frame) - approved}

    # ------------------------------------------------------------------ one partition

    def partition(self, night: str, queen: str) -> Partition:
        self._check_night(night)
        if not is_valid_slug(queen):
            raise NotFound(f"{queen!r} is not a queen's slug")
        folder = self.layout.generated_dir(night, queen)
        manifest_path = folder / MANIFEST_NAME
        if not manifest_path.is_file():
            raise NotFound(f"no images for {queen} on {night}")
        try:
            manifest = read_json(manifest_path)
        except (OSError, ValueError) as exc:
            raise NotFound(f"{manifest_path} cannot be read: {exc}") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("images"), list):
            raise NotFound(f"{manifest_path} has no 'images' list")

        thresholds, roster_error = None, None
        try:
            thresholds = quality.Thresholds.from_generation_config(load_queen(self.roster_dir / f"{queen}.yaml").generation_config)
        except (RosterError, OSError) as exc:
            roster_error = str(exc)
        overrides_path = self.layout.overrides_path(night, queen)
        decided, overrides_error = {}, None
        try:
            decided = overrides.load_overrides(overrides_path)
        except overrides.OverrideError as exc:
            overrides_error = str(exc)

        scores_path = self.layout.scores_path(night, queen)
        frame = self._scores(scores_path)
        rows = {} if frame is None else {str(r["image_id"]): r for r in frame.to_dict("records")}
        images = []
        seen: set[str] = set()
        for entry in manifest["images"]:
            if not isinstance(entry, dict) or not entry.get("image_id") or not entry.get("file"):
                continue
            image_id = str(entry["image_id"])
            path = self._inside(folder, str(entry["file"]))
            if image_id in seen or path is None:
                continue
            seen.add(image_id)
            image = ImageView(
                image_id=image_id,
                asset_type=str(entry.get("asset_type") or "unknown"),
                path=path,
                width=_int(entry.get("width")),
                height=_int(entry.get("height")),
                file_hash=entry.get("sha256"),
                params=dict(entry.get("params") or {}),
                details=dict(entry.get("details") or {}),
                generated_at=entry.get("generated_at"),
                override=decided.get(image_id),
            )
            row = rows.get(image_id)
            if row is not None:
                _apply_scores(image, row, thresholds)
            images.append(image)
        return Partition(night, queen, manifest, images, thresholds, roster_error, overrides_error, scores_path, overrides_path)

    def queen_score_rows(self, queen: str) -> list[dict[str, Any]]:
        """Every score row of the queen on every night (without embeddings)."""
        rows: list[dict[str, Any]] = []
        for path in sorted(self.layout.root.glob(f"overnight/*/scores/{queen}.parquet")):
            frame = self._scores(path)
            if frame is not None:
                rows += frame.drop(columns=["embedding"], errors="ignore").to_dict("records")
        return rows

    def image_file(self, night: str, queen: str, image_id: str) -> Path:
        """One image's file from the manifest alone: what thumbnails and downloads need, indexed once
        per manifest version (a grid page asks for hundreds of thumbnails)."""
        self._check_night(night)
        if not is_valid_slug(queen):
            raise NotFound(f"{queen!r} is not a queen's slug")
        folder = self.layout.generated_dir(night, queen)
        manifest_path = folder / MANIFEST_NAME
        try:
            stat = manifest_path.stat()
        except OSError as exc:
            raise NotFound(f"no images for {queen} on {night}") from exc
        version = (stat.st_mtime_ns, stat.st_size)
        cached = self._file_index.get(manifest_path)
        if cached is None or cached[0] != version:
            try:
                manifest = read_json(manifest_path)
            except (OSError, ValueError) as exc:
                raise NotFound(f"{manifest_path} cannot be read: {exc}") from exc
            index: dict[str, Path] = {}
            for entry in (manifest.get("images") if isinstance(manifest, dict) else None) or []:
                if isinstance(entry, dict) and entry.get("image_id") and entry.get("file"):
                    path = self._inside(folder, str(entry["file"]))
                    if path is not None:
                        index.setdefault(str(entry["image_id"]), path)
            cached = (version, index)
            self._file_index[manifest_path] = cached
        try:
            return cached[1][image_id]
        except KeyError:
            raise NotFound(f"no image {image_id!r} in {queen} on {night}") from None

    # ------------------------------------------------------------------ helpers

    def _check_night(self, night: str) -> None:
        if not valid_night(night):
            raise NotFound(f"{night!r} is not a night (YYYY-MM-DD)")
        if not self.layout.overnight(night).is_dir():
            raise NotFound(f"nothing stored for the night {night}")

    def _inside(self, folder: Path, relative: str) -> Path | None:
        """``folder / relative`` resolved, or None when it leaves the folder or the storage root."""
        base = folder.resolve()
        path = (base / relative).resolve()
        if not path.is_relative_to(base) or not path.is_relative_to(self.root):
            return None
        return path

    @staticmethod
    def _scores(path: Path) -> pd.DataFrame | None:
        if not path.is_file():
            return None
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError):
            return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(number) else number


def _apply_scores(image: ImageView, row: Mapping[str, Any], thresholds: quality.Thresholds | None) -> None:
    image.scored = True
    image.scores = {column: _number(row.get(column)) for column in quality.SCORE_COLUMNS}
    image.approved = bool(row.get("approved"))
    image.approval_method = row.get("approval_method")
    image.rejection_reason = row.get("rejection_reason") or None
    image.decided_by = row.get("decided_by") or None
    image.near_duplicate_of = row.get("near_duplicate_of") or None
    image.file_hash = row.get("file_hash") or image.file_hash
    bbox = row.get("face_bbox")
    if bbox is not None and len(bbox) == 4:
        image.face_bbox = [int(v) for v in bbox]
    image.face_det_score = _number(row.get("face_det_score"))
    if thresholds is not None:
        image.gate = quality.first_failed_gate(
            image.scores[quality.AESTHETIC], image.scores[quality.TECHNICAL], image.scores[quality.FACE_MATCH], thresholds
        )


def filter_images(images: Sequence[ImageView], status: str | None, reason: str | None, asset_type: str | None) -> list[ImageView]:
    selected = list(images)
    if status in ("approved", "rejected", "unscored"):
        selected = [i for i in selected if i.status == status]
    if reason:
        selected = [i for i in selected if i.reason_kind == reason]
    if asset_type:
        selected = [i for i in selected if i.asset_type == asset_type]
    return selected


def threshold_suggestions(store: ReviewStore, queen: str, thresholds: quality.Thresholds | None) -> list[dict[str, Any]] | None:
    """Learned-threshold suggestions from the queen's manual decisions on every night, when that
    module is present (issue 10 item 5: hydra_assets/domain/threshold_suggestions.py); shown,
    never applied."""
    try:
        from hydra_assets.domain.threshold_suggestions import suggest_thresholds  # type: ignore[import-not-found]
    except ImportError:
        return None
    if thresholds is None:
        return None
    rows = store.queen_score_rows(queen)
    suggestions = suggest_thresholds(rows, thresholds)
    return [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in suggestions]


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
