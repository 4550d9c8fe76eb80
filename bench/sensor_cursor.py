"""The roster sensor's cursor and tick time against the number of reference files.

    .venv/bin/python bench/sensor_cursor.py [--queens 100] [--files-per-queen 1000]

Builds a roster of ``queens`` valid queens with ``files-per-queen`` small reference files each
(100,000 files by default), then times the first tick (hashes every file), an unchanged tick,
and a tick after one file changed. It prints the cursor the sensor stores in the instance and,
side by side, the size that cursor had in format 1 (every file's size, mtime and hash), which
the instance rewrote on every tick. The last line is the ratio of the two sizes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import dagster as dg

from hydra_assets.definitions import build_definitions, local_resources
from hydra_assets.domain import fingerprints
from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.settings import load_settings
from resources.storage import HydraStorage


def build_roster(root: Path, queens: int, files: int) -> HydraStorage:
    roster_dir, storage_root = root / "roster", root / "storage"
    write_demo_data(roster_dir, storage_root / "reference_images")
    template = (roster_dir / "nova-sterling.yaml").read_text()
    for path in list(roster_dir.iterdir()):
        path.unlink()
    for index in range(queens):
        slug = f"queen-{index:04d}"
        (roster_dir / f"{slug}.yaml").write_text(template.replace("nova-sterling", slug))
        folder = storage_root / "reference_images" / slug / "portraits"
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(files):
            (folder / f"ref-{number:05d}.jpg").write_bytes(f"{slug}/{number}".encode().ljust(64, b"."))
    return HydraStorage(root=str(storage_root), roster_dir=str(roster_dir))


def v1_cursor_bytes(storage: HydraStorage) -> int:
    """What format 1 kept: every roster and reference file's [size, mtime_ns, hash prefix]."""
    queens = {}
    for path in sorted(Path(storage.roster_dir).glob("*.yaml")):
        slug = path.stem
        roster, _ = fingerprints.fingerprint_files({path.name: path}, None)
        refs = fingerprints.folder_files(storage.layout.root / "reference_images" / slug)
        ref_stats, _ = fingerprints.fingerprint_files(refs, None)
        queens[slug] = {"roster": roster, "refs": ref_stats, "digest": "0" * 16, "gen": 1}
    return len(json.dumps({"v": 1, "queens": queens}, separators=(",", ":")))


def timed_tick(sensor, instance, storage, cursor):
    started = time.perf_counter()
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage}))
    elapsed = time.perf_counter() - started
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queens", type=int, default=100)
    parser.add_argument("--files-per-queen", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        storage = build_roster(Path(tmp), args.queens, args.files_per_queen)
        settings = load_settings({"HYDRA_ROSTER_DIR": storage.roster_dir, "HYDRA_STORAGE_ROOT": storage.root})
        sensor = build_definitions(local_resources(settings)).resolve_sensor_def("roster_sensor")
        total = args.queens * args.files_per_queen
        first, t_first = timed_tick(sensor, instance, storage, None)
        unchanged, t_unchanged = timed_tick(sensor, instance, storage, first.cursor)
        changed_file = storage.layout.root / "reference_images" / "queen-0000" / "portraits" / "ref-00000.jpg"
        changed_file.write_bytes(b"changed".ljust(64, b"."))
        changed, t_changed = timed_tick(sensor, instance, storage, unchanged.cursor)
        v2_bytes, v1_bytes = len(changed.cursor), v1_cursor_bytes(storage)
        print(f"{args.queens} queens, {total} reference files")
        print(f"first tick (hashes every file): {t_first:.2f} s, {len(first.run_requests)} runs requested")
        print(f"unchanged tick: {t_unchanged * 1000:.0f} ms, {len(unchanged.run_requests)} runs requested")
        print(f"tick after one file changed: {t_changed * 1000:.0f} ms, {len(changed.run_requests)} runs requested")
        print(f"cursor in the instance: {v2_bytes} bytes (format 2); format 1 would be {v1_bytes} bytes")
        print(f"ratio cursor bytes format 1 / format 2: {v1_bytes / v2_bytes:.0f}")


if __name__ == "__main__":
    main()
