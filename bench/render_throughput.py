"""DemoRenderer throughput on this machine, at the sizes the overnight batch uses.

    .venv/bin/python bench/render_throughput.py [--images 48] [--sizes 768 1024]

For each size prints images/s for rendering alone (what the renderer does) and for rendering
plus what the asset adds per image (PNG with the parameters chunk, atomic write, sha256),
each the median of three passes over the same requests; the last line per size is their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hydra_assets.domain import generation as gen
from hydra_assets.domain.demo_data import DEMO_QUEENS, write_demo_queen
from hydra_assets.domain.images import process_reference_folder
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import StorageLayout, atomic_write_bytes, sha256_bytes
from resources.image import DEMO_RENDERER, DemoRenderer

PASSES = 3


def plan(layout: StorageLayout, images: int, size: int) -> list[gen.GenerationRequest]:
    demo = DEMO_QUEENS[0]
    queen = Queen.model_validate(demo.roster)
    manifest = process_reference_folder(layout.reference_sources(demo.slug), layout.normalized_references(demo.slug))
    types = list(gen.DEFAULT_ASSET_TYPES)
    counts = {t: images // len(types) + (1 if i < images % len(types) else 0) for i, t in enumerate(types)}
    return gen.plan_night(
        queen=queen, night="2026-11-20", counts=counts, sampling=gen.Sampling(width=size, height=size),
        model=DemoRenderer().model_name(), backend=DEMO_RENDERER, generative=False, lora=None,
        reference_set_hash=manifest.reference_set_hash,
        references=gen.references_by_type(
            [e.__dict__ for e in manifest.entries], layout.normalized_references(demo.slug), types
        ),
    )


def images_per_second(requests: list[gen.GenerationRequest], out: Path | None) -> float:
    timings = []
    for _ in range(PASSES):
        started = time.perf_counter()
        made = 0
        for result in DemoRenderer().generate(requests):
            assert result.error is None, result.error
            if out is not None:
                png = gen.encode_png(result.image, result.request.params, result.details)
                atomic_write_bytes(out / result.request.file, png)
                sha256_bytes(png)
            made += 1
        timings.append(made / (time.perf_counter() - started))
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--sizes", type=int, nargs="+", default=[768, 1024])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_demo_queen(DEMO_QUEENS[0], root / "roster", root / "storage" / "reference_images")
        layout = StorageLayout(root / "storage")
        for size in args.sizes:
            requests = plan(layout, args.images, size)
            render = images_per_second(requests, None)
            full = images_per_second(requests, root / "out" / str(size))
            print(f"{size}x{size}: DemoRenderer {render:.1f} images/s (render only, {len(requests)} images)")
            print(f"{size}x{size}: DemoRenderer {full:.1f} images/s (render + PNG with params + atomic write + sha256)")
            print(f"{size}x{size}: saving costs {render / full:.2f}x the render-only time")


if __name__ == "__main__":
    main()
