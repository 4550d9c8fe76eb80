"""Fill the embedding store from the score tables image_scores wrote (``overnight/*/scores/*.parquet``).

For a store created after images were scored, or re-created for another backend: image_scores
keeps it current from then on. Idempotent (point ids are image ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from hydra_assets.domain import embeddings as contract
from hydra_assets.domain.storage import StorageLayout


@dataclass
class IndexReport:
    tables: int = 0
    images: int = 0
    skipped: int = 0
    """Rows without a vector, or with one of another size than the store's."""
    problems: list[str] = field(default_factory=list)


def index_score_tables(layout: StorageLayout, session) -> IndexReport:
    """Upsert every scored image; a table that cannot be read is reported, the others still go in."""
    report = IndexReport()
    for path in sorted(layout.root.glob("overnight/*/scores/*.parquet")):
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            report.problems.append(f"{path}: cannot be read ({exc}); skipped")
            continue
        missing = {"image_id", "queen", "night", "embedding", "embedding_model"} - set(frame.columns)
        if missing:
            report.problems.append(f"{path}: lacks column(s) {', '.join(sorted(missing))}; skipped")
            continue
        rows = frame.to_dict("records")
        records = [r for r in contract.image_records(rows) if len(r.vector) == session.sizes.visual]
        report.skipped += len(rows) - len(records)
        report.images += session.upsert_images(records)
        report.tables += 1
    return report
