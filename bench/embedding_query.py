"""Near-duplicate lookup: the embedding store against reading every earlier night's scores parquet.

    PYTHONPATH=. .venv/bin/python bench/embedding_query.py [--queens 5] [--nights 100] [--per-night 20]
        [--dim 768] [--batch 16] [--repeat 7] [--dir DIR]

Builds one data set twice: ``queens × nights × per-night`` scored images (10,000 by default; a
quarter rejected) as the scores parquet files ``image_scores`` writes (``overnight/{night}/scores/{slug}.parquet``)
and as the ``generated_images`` collection of a local-mode EmbeddingStore. Then, for tonight's
batch of one queen (``--batch`` new vectors), times what the near-duplicate gate needs - the
queen's approved images of earlier nights that tonight's images are compared with:

- parquet: ``prior_approved`` (reads every earlier night's file of the queen) plus the cosine
  matrix and argmax the gate computes over all of them;
- store: ``nearest_prior_approved`` on an open session (in local mode: one filtered read of the
  candidates, ranked in numpy; a server answers one batched filtered query), the same with opening
  the session first (local mode loads the folder on open, a cost a server does not have), one
  ``similar_images`` query, and the server's batched per-image queries run against local mode.

The folder defaults to /dev/shm when present: qdrant-client's local mode commits every point
separately, so building 10,000 points on a disk with slow fsync takes minutes; query times do not
depend on it. Prints the median of ``--repeat`` runs of each and, as its last line,
``ratio: X`` (parquet scan time over store query time, open session).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from hydra_assets.domain.embeddings import ImageRecord
from hydra_assets.domain.storage import StorageLayout, atomic_write_bytes
from resources.embeddings import EmbeddingStore

try:  # the quality stage's package layout, or the single module before it
    from hydra_assets.quality.scoring import prior_approved
except ImportError:
    from hydra_assets.quality import prior_approved

MODEL = "bench-space"


def nights(count: int) -> list[str]:
    start = date(2026, 1, 1)
    return [(start + timedelta(days=i)).isoformat() for i in range(count + 1)]


def build(root: Path, args: argparse.Namespace) -> tuple[EmbeddingStore, np.ndarray, str]:
    rng = np.random.default_rng(0)
    layout = StorageLayout(root)
    store = EmbeddingStore(path=str(root / "qdrant"), face_size=128, style_size=args.dim, visual_size=args.dim)
    all_nights = nights(args.nights)
    started = time.perf_counter()
    with store.session() as session:
        for q in range(args.queens):
            slug = f"queen-{q:02d}"
            for night in all_nights[:-1]:
                vectors = rng.standard_normal((args.per_night, args.dim)).astype(np.float32)
                ids = [f"{slug}-{night}-portrait-{i:03d}" for i in range(args.per_night)]
                approved = rng.random(args.per_night) >= 0.25
                frame = pd.DataFrame({
                    "image_id": ids, "approved": approved, "embedding_model": MODEL, "embedding": list(vectors),
                    "aesthetic_score": rng.uniform(4, 9, args.per_night),
                })
                buffer = io.BytesIO()
                frame.to_parquet(buffer, index=False)
                atomic_write_bytes(layout.scores_path(night, slug), buffer.getvalue())
                session.upsert_images(
                    ImageRecord(image_id=i, queen_slug=slug, night=night, vector=v, embedding_model=MODEL, asset_type="portrait",
                                approved=bool(a), file_path=f"/bench/{i}.png", generated_at=f"{night}T22:00:00+00:00")
                    for i, v, a in zip(ids, vectors, approved)
                )
        stored = session.count("generated_images")
    print(f"built {stored} stored vectors (dim {args.dim}) and {args.queens * args.nights} parquet files "
          f"in {time.perf_counter() - started:.1f}s under {root}")
    tonight = rng.standard_normal((args.batch, args.dim)).astype(np.float32)
    return store, tonight, all_nights[-1]


def nearest_ids(prior: np.ndarray, ids: list[str], tonight: np.ndarray) -> list[str]:
    """What the gate computes over the prior images it is given: each image's nearest one."""
    unit = prior / np.linalg.norm(prior, axis=1, keepdims=True)
    return [ids[int(np.argmax(unit @ v))] for v in tonight / np.linalg.norm(tonight, axis=1, keepdims=True)]


def parquet_way(root: Path, tonight: np.ndarray, night: str) -> list[str]:
    prior, ids = prior_approved(StorageLayout(root), "queen-00", night, MODEL)
    return nearest_ids(prior, ids, tonight)


def store_way(session, tonight: np.ndarray, night: str) -> list[str]:
    prior, ids = session.nearest_prior_approved(tonight, "queen-00", night, MODEL)
    return nearest_ids(prior, ids, tonight)


def batched_query_way(session, tonight: np.ndarray, night: str) -> list[str]:
    """The server strategy (one filtered query per image, batched), run against local mode."""
    hits = session.similar_batch(tonight, "queen-00", limit=1, approved_only=True, before_night=night,
                                 embedding_model=MODEL, with_vectors=True)
    return [h[0].image_id for h in hits]


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queens", type=int, default=5)
    parser.add_argument("--nights", type=int, default=100)
    parser.add_argument("--per-night", type=int, default=20)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=16, help="tonight's images of the queen")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hydra-embedding-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        store, tonight, night = build(root, args)
        parquet_s, parquet_ids = median_time(lambda: parquet_way(root, tonight, night), args.repeat)

        def cold():
            with store.session() as session:
                return store_way(session, tonight, night)

        cold_s, _ = median_time(cold, args.repeat)
        with store.session() as session:
            store_s, store_ids = median_time(lambda: store_way(session, tonight, night), args.repeat)
            single_s, _ = median_time(lambda: session.similar_images(tonight[0], "queen-00", limit=10), args.repeat)
            batched_repeat = min(args.repeat, 3)
            batched_s, batched_ids = median_time(lambda: batched_query_way(session, tonight, night), batched_repeat)
    if not store_ids == batched_ids == parquet_ids:
        raise SystemExit(f"the ways disagree on the nearest prior images: {store_ids} / {batched_ids} vs {parquet_ids}")
    print(f"queen-00 tonight: {args.batch} images against {args.nights} earlier nights; same nearest images both ways")
    print(f"parquet scan (prior_approved + cosine argmax): median {parquet_s * 1000:.1f} ms of {args.repeat}")
    print(f"store query, open session (nearest_prior_approved): median {store_s * 1000:.1f} ms of {args.repeat}")
    print(f"store open + query (local mode loads the folder): median {cold_s * 1000:.1f} ms of {args.repeat}")
    print(f"one similar_images query (hydra similar, top 10): median {single_s * 1000:.1f} ms of {args.repeat}")
    print(f"batched per-image queries (the server strategy) in local mode: median {batched_s * 1000:.1f} ms of {batched_repeat}")
    print(f"ratio: {parquet_s / store_s:.2f}")


if __name__ == "__main__":
    main()
