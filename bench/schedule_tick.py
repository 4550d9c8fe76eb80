"""Overnight schedule tick time against the number of queens and the history behind them.

    .venv/bin/python bench/schedule_tick.py [--queens 1000] [--history 3]

Prints the median tick time for 10% of the queens and for all of them, then again after
``history`` more LoRA versions per queen; the last lines are ratios measured in this run.
"""

from __future__ import annotations

import argparse
import os
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg

# The tick evaluated is 2026-11-20's: the calendar must include it, whatever today is.
os.environ.setdefault("HYDRA_NIGHTS_START", "2026-01-01")

from hydra_assets.partitions import QUEENS  # noqa: E402 - after the calendar is set
from hydra_assets.settings import SETTINGS  # noqa: E402
from resources.storage import HydraStorage  # noqa: E402
from sensors.overnight import build_overnight_schedule  # noqa: E402

REPEATS = 5


def tick_seconds(schedule, instance, storage: HydraStorage) -> float:
    moment = dt.datetime(2026, 11, 20, 22, tzinfo=ZoneInfo(SETTINGS.timezone))
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=moment, resources={"storage": storage}
        ) as context:
            schedule(context)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def roster_of(folder: Path, queens: list[str]) -> HydraStorage:
    """A roster folder with one file per queen: the schedule lists it on every tick."""
    (folder / "roster").mkdir(parents=True)
    for queen in queens:
        (folder / "roster" / f"{queen}.yaml").write_text(f"slug: {queen}\n")
    return HydraStorage(root=str(folder / "storage"), roster_dir=str(folder / "roster"))


def instance_with(instance: dg.DagsterInstance, queens: list[str], versions: int) -> None:
    instance.add_dynamic_partitions(QUEENS, queens)
    for version in range(versions):
        for queen in queens:
            instance.report_runless_asset_event(
                dg.AssetMaterialization("queen_lora", partition=queen, metadata={"version": version + 1})
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queens", type=int, default=1000)
    parser.add_argument("--history", type=int, default=3, help="extra LoRA versions per queen")
    args = parser.parse_args()
    schedule = build_overnight_schedule(dg.DefaultScheduleStatus.STOPPED)
    small = max(1, args.queens // 10)
    with dg.instance_for_test() as few, dg.instance_for_test() as many, tempfile.TemporaryDirectory() as tmp:
        few_queens = [f"queen-{i:05d}" for i in range(small)]
        all_queens = [f"queen-{i:05d}" for i in range(args.queens)]
        few_roster, full_roster = roster_of(Path(tmp) / "few", few_queens), roster_of(Path(tmp) / "all", all_queens)
        instance_with(few, few_queens, 1)
        instance_with(many, all_queens, 1)
        t_small, t_full = tick_seconds(schedule, few, few_roster), tick_seconds(schedule, many, full_roster)
        print(f"{small} queens: {t_small * 1000:.1f} ms per tick")
        print(f"{args.queens} queens: {t_full * 1000:.1f} ms per tick")
        for version in range(args.history):
            for queen in all_queens:
                many.report_runless_asset_event(
                    dg.AssetMaterialization("queen_lora", partition=queen, metadata={"version": version + 2})
                )
        t_history = tick_seconds(schedule, many, full_roster)
        print(f"{args.queens} queens after {args.history} more LoRA versions each: {t_history * 1000:.1f} ms per tick")
    print(f"ratio queens x{args.queens // small}: {t_full / t_small:.2f}")
    print(f"ratio history x{args.history + 1}: {t_history / t_full:.2f}")


if __name__ == "__main__":
    main()
