"""Embedding store commands: `hydra similar IMAGE_OR_ID` (the nearest stored images of the same
queen, with their cosine scores) and `hydra reindex-embeddings` (fill the store from the score tables)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SIMILAR = "similar"
REINDEX = "reindex-embeddings"
COMMANDS = (SIMILAR, REINDEX)


def add_parsers(commands) -> None:
    commands.add_parser(REINDEX, help="upsert every scored image of every night (score tables) into the embedding store")
    parser = commands.add_parser(SIMILAR, help="list the nearest images of the same queen in the embedding store")
    parser.add_argument("image", help="an image id (e.g. nova-sterling-2026-11-20-portrait-000) or an image file")
    parser.add_argument("--limit", type=int, default=10, help="how many neighbours (default 10)")
    parser.add_argument("--approved", action="store_true", help="approved images only")
    parser.add_argument("--other-nights", action="store_true", help="leave out images of the same night")


def _store():
    import dagster as dg

    from hydra_assets.definitions import RESOURCES_BY_ENV
    from hydra_assets.settings import SETTINGS

    return dg.build_resources({"embeddings": RESOURCES_BY_ENV[SETTINGS.env]()["embeddings"]})


def _find(session, target: str):
    """By image id; a file is looked up by its path under the storage root (as stored), then its name."""
    from hydra_assets.settings import SETTINGS

    path = Path(target)
    if not path.is_file():
        return session.image(target, with_vector=True), target
    resolved, root = path.resolve(), Path(SETTINGS.storage_root).resolve()
    stored = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)
    return session.image_by_file(stored) or session.image(path.stem, with_vector=True), path.stem


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run(args: argparse.Namespace) -> int:
    return reindex() if args.command == REINDEX else similar(args)


def reindex() -> int:
    from hydra_assets.domain.embeddings import EmbeddingStoreError
    from hydra_assets.domain.storage import StorageLayout
    from hydra_assets.embedding_index import index_score_tables
    from hydra_assets.settings import SETTINGS

    try:
        with _store() as resources, resources.embeddings.session() as session:
            report = index_score_tables(StorageLayout(Path(SETTINGS.storage_root)), session)
    except EmbeddingStoreError as error:
        print(str(error), file=sys.stderr)
        return 1
    for problem in report.problems:
        print(problem, file=sys.stderr)
    print(f"{report.images} images from {report.tables} score tables into {session.location}; "
          f"{report.skipped} without a usable vector skipped")
    return 1 if report.problems else 0


def similar(args: argparse.Namespace) -> int:
    from hydra_assets.domain.embeddings import EmbeddingStoreError

    if args.limit < 1:
        print("--limit must be at least 1", file=sys.stderr)
        return 2
    try:
        with _store() as resources, resources.embeddings.session() as session:
            image, wanted = _find(session, args.image)
            if image is None:
                print(f"{wanted} is not in the embedding store {session.location} (it is filled when images are scored)",
                      file=sys.stderr)
                return 1
            if image.vector is None:
                image = session.image(image.image_id, with_vector=True)
            payload = image.payload
            hits = session.similar_images(
                image.vector, payload["queen_slug"], limit=args.limit, approved_only=args.approved,
                exclude_night=payload.get("night") if args.other_nights else None,
                embedding_model=payload.get("embedding_model"), exclude_ids=[image.image_id],
            )
    except EmbeddingStoreError as error:
        print(str(error), file=sys.stderr)
        return 1
    print(f"{image.image_id} ({payload['queen_slug']}, {payload.get('night')}, "
          f"{'approved' if payload.get('approved') else 'rejected'}): {len(hits)} nearest")
    rows = [
        (f"{hit.score:.4f}", hit.image_id, str(hit.payload.get("night")), "yes" if hit.payload.get("approved") else "no",
         _fmt(hit.payload.get("aesthetic_score"), 2), _fmt(hit.payload.get("technical_score"), 1),
         _fmt(hit.payload.get("face_match_score"), 3), str(hit.payload.get("file_path")))
        for hit in hits
    ]
    header = ("cosine", "image_id", "night", "approved", "aesthetic", "technical", "face", "file")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    return 0
