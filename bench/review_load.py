"""Time for the review app to serve a night of N images: the grid page plus every thumbnail.

    .venv/bin/python bench/review_load.py [--images 200] [--size 1024] [--workers 6] [--workdir DIR]

Builds a night of N PNGs (variants of the demo reference photo, SIZE px square, like the
cluster's SDXL output), scores it with the real image_scores (embedded backends) once, and keeps
it in --workdir so a second run skips that. Then, in-process through the app (server time, no
network): the grid page, and every thumbnail fetched by WORKERS threads at once (a browser
fetches about six per host), with an empty thumbnail cache (cold) and again (warm).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image, ImageEnhance, ImageOps

from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.domain.roster import load_queen
from hydra_assets.domain.storage import StorageLayout, atomic_write_json, sha256_file
from hydra_assets.partitions import QUEENS, queen_night_key
from hydra_assets.quality import image_scores
from hydra_assets.review.app import create_app
from hydra_assets.review.config import ReviewConfig
from resources.catalog import CatalogResource
from resources.face import DlibFaceBackend
from resources.scoring import ClassicalTechnical, ImageStatsAestheticProxy
from resources.storage import HydraStorage

SLUG, NIGHT = "nova-sterling", "2026-11-20"
TYPES = ("portrait", "expression", "pose")


def build_night(root: Path, count: int, size: int) -> None:
    references = root / "storage" / "reference_images"
    write_demo_data(root / "roster", references)
    layout = StorageLayout(root / "storage")
    front = ImageOps.fit(Image.open(references / SLUG / "portraits" / "front.png").convert("RGB"), (size, size))
    face = DlibFaceBackend(upsample_times=0)
    [found] = face.embed_largest_faces([np.asarray(front)])
    layout.identity_dir(SLUG).mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, mean=found.embedding)
    (layout.identity_dir(SLUG) / "identity.npz").write_bytes(buffer.getvalue())

    folder = layout.generated_dir(NIGHT, SLUG)
    entries = []
    rng = np.random.default_rng(0)
    for index in range(count):
        asset_type = TYPES[index % len(TYPES)]
        image = ImageEnhance.Brightness(front).enhance(float(rng.uniform(0.8, 1.2)))
        if index % 2:
            image = ImageOps.mirror(image)
        shift = int(rng.integers(0, size // 20))
        image = ImageOps.fit(image.crop((shift, shift, size - shift, size - shift)), (size, size))
        image_id = f"{SLUG}-{NIGHT}-{asset_type}-{index:03d}"
        file = f"{asset_type}/{image_id}.png"
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / file)
        params = {"prompt": f"studio portrait photo, {asset_type}", "seed": index, "width": size, "height": size}
        entries.append({"image_id": image_id, "asset_type": asset_type, "index": index, "seed": index, "file": file,
                        "sha256": sha256_file(folder / file), "width": size, "height": size, "params": params})
    atomic_write_json(folder / "manifest.json", {"queen": SLUG, "night": NIGHT, "backend": "bench", "images": entries})
    resources = {
        "storage": HydraStorage(root=str(root / "storage"), roster_dir=str(root / "roster")),
        "catalog": CatalogResource(url=f"sqlite:///{root / 'catalog.db'}"),
        "face": face, "aesthetic": ImageStatsAestheticProxy(), "technical": ClassicalTechnical(),
    }
    resources["catalog"].upsert_queen(load_queen(root / "roster" / f"{SLUG}.yaml"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        assert dg.materialize([image_scores], partition_key=queen_night_key(SLUG, NIGHT), resources=resources,
                              instance=instance).success


def load_night(client: TestClient, workers: int) -> tuple[float, float, list[float], int]:
    """(grid seconds, wall seconds for all thumbnails, per-thumbnail seconds, thumbnail count)."""
    started = time.perf_counter()
    page = client.get(f"/nights/{NIGHT}/{SLUG}")
    grid = time.perf_counter() - started
    assert page.status_code == 200
    urls = [line.split('src="')[1].split('"')[0] for line in page.text.splitlines() if "thumb.jpg" in line and 'src="' in line]

    def fetch(url: str) -> float:
        t = time.perf_counter()
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        return time.perf_counter() - t

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        each = list(pool.map(fetch, urls))
    return grid, time.perf_counter() - started, each, len(urls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hydra-review-bench")
    args = parser.parse_args()
    root = args.workdir / f"{args.images}x{args.size}"
    if not (root / "storage" / "overnight" / NIGHT / "scores" / f"{SLUG}.parquet").is_file():
        started = time.perf_counter()
        build_night(root, args.images, args.size)
        print(f"built and scored {args.images} images of {args.size} px in {time.perf_counter() - started:.1f}s ({root})")
    cache = Path(tempfile.mkdtemp(prefix="thumbs-", dir=args.workdir))
    config = ReviewConfig(storage_root=root / "storage", roster_dir=root / "roster", cache_dir=cache,
                          dagster_url="http://127.0.0.1:9")
    client = TestClient(create_app(config))
    for label in ("cold", "warm"):
        grid, wall, each, count = load_night(client, args.workers)
        print(f"{label}: grid page {grid * 1000:.0f} ms; {count} thumbnails in {wall:.2f}s with {args.workers} at a time "
              f"(median {statistics.median(each) * 1000:.0f} ms, max {max(each) * 1000:.0f} ms); "
              f"total {grid + wall:.2f}s")


if __name__ == "__main__":
    main()
