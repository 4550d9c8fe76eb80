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


def store_scored_images(
    session, rows: list[dict], queen_slug: str, queen_name: str | None, tier: str | None, created_at: str
) -> tuple[int, int]:
    """One partition's score rows into the store: every image's ``visual`` vector and payload, and the
    ``style`` vector of each approved image in ``queen_embeddings`` (an image no longer approved loses
    its style point). Returns (images, style vectors)."""
    records = contract.image_records(rows)
    images = session.upsert_images(records)
    styles = [
        contract.QueenVectorRecord(queen_slug, "generated", r.image_id, {contract.STYLE: r.vector}, created_at,
                                   queen_name=queen_name, tier=tier)
        for r in records
        if r.approved
    ]
    withdrawn = [contract.queen_point_id(queen_slug, "generated", r.image_id) for r in records if not r.approved]
    session.delete_queen_vectors(withdrawn)
    return images, session.upsert_queen_vectors(styles)


def store_reference_faces(
    session, queen_slug: str, faces: dict[str, object], created_at: str, queen_name: str | None, tier: str | None
) -> int:
    """The queen's reference ``face`` vectors (reference file → vector) become exactly these points."""
    records = [
        contract.QueenVectorRecord(queen_slug, "reference", name, {contract.FACE: vector}, created_at,
                                   queen_name=queen_name, tier=tier)
        for name, vector in faces.items()
    ]
    return session.replace_queen_vectors(queen_slug, "reference", records)
