"""The files a person reviews a queen's night with: contact sheets and ``rejected/{slug}/reasons.json``.

approved_images calls :func:`write_review_files` after it has sorted the files. Every file is
written atomically and only under this queen's names, so partitions never touch each other's
files. Both sheets (approved and rejected) are written for every asset type the queen has that
night, an empty one saying so, so a sheet never shows a decision that has since changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hydra_assets.domain.contact_sheets import DECISIONS, Tile, group_tiles, render_sheet, sheet_name
from hydra_assets.domain.quality import APPROVAL_MANUAL, Thresholds
from hydra_assets.domain.rejections import reason_detail, reasons_document, reasons_json, text
from hydra_assets.domain.storage import StorageLayout, atomic_write_bytes


@dataclass(frozen=True)
class ReviewFiles:
    sheets: dict[str, Path] = field(default_factory=dict)
    """``"{decision} {type}"`` → the sheet's path."""
    reasons: Path | None = None

    def relative_to(self, folder: Path) -> list[tuple[str, str]]:
        """(label, posix path relative to ``folder``): what report.md links."""
        links = [(label, path.relative_to(folder).as_posix()) for label, path in sorted(self.sheets.items())]
        if self.reasons is not None:
            links.append(("reasons.json", self.reasons.relative_to(folder).as_posix()))
        return links


def tiles_for(scores: pd.DataFrame, root: Path) -> list[Tile]:
    """One tile per score row; the image is read from its generated file (``file_path`` under ``root``)."""
    tiles = []
    for row in scores.to_dict("records") if len(scores) else []:
        approved = bool(row["approved"])
        tiles.append(
            Tile(
                image_id=str(row["image_id"]),
                path=root / str(row["file_path"]),
                asset_type=str(row["asset_type"]),
                approved=approved,
                manual=row.get("approval_method") == APPROVAL_MANUAL,
                reason=None if approved else (text(row.get("rejection_reason")) or "unknown"),
                detail=None if approved else reason_detail(row),
            )
        )
    return tiles


def write_review_files(
    layout: StorageLayout,
    slug: str,
    night: str,
    scores: pd.DataFrame,
    thresholds: Thresholds | None,
    rejected_files: Mapping[str, str | None],
) -> ReviewFiles:
    """Render and write the queen's sheets and reasons.json; ``rejected_files`` maps image id → its
    file name in ``rejected/{slug}/`` as publishing placed it (None where it was not placed)."""
    groups = group_tiles(tiles_for(scores, layout.root))
    types = sorted({asset_type for _, asset_type in groups})
    folder = layout.contact_sheets_dir(night)
    sheets: dict[str, Path] = {}
    for asset_type in types:
        for decision in DECISIONS:
            tiles = groups.get((decision, asset_type), [])
            png = render_sheet(tiles, f"{slug} {night} {decision} {asset_type}")
            sheets[f"{decision} {asset_type}"] = atomic_write_bytes(folder / sheet_name(slug, decision, asset_type), png)
    rows = scores.to_dict("records") if len(scores) else []
    document = reasons_document(slug, night, rows, thresholds, rejected_files)
    reasons = atomic_write_bytes(layout.rejection_reasons_path(night, slug), reasons_json(document))
    return ReviewFiles(sheets, reasons)


def review_links(layout: StorageLayout, night: str, slug: str, asset_types: list[str]) -> list[tuple[str, str]]:
    """(label, path relative to report.md) of the queen's review files that exist for ``night``.

    Named from the queen's own asset types rather than globbed, so ``nova`` never picks up
    ``nova-sterling``'s sheets.
    """
    folder = layout.report_path(night).parent
    sheets = {
        f"{decision} {asset_type}": layout.contact_sheets_dir(night) / sheet_name(slug, decision, asset_type)
        for asset_type in sorted(set(asset_types))
        for decision in DECISIONS
    }
    reasons = layout.rejection_reasons_path(night, slug)
    files = ReviewFiles({k: p for k, p in sheets.items() if p.is_file()}, reasons if reasons.is_file() else None)
    return files.relative_to(folder)
