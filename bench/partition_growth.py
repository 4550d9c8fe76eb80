"""How the UI's partitions view and the daemon's automation hold up as the queen × night space grows.

    .venv/bin/python bench/partition_growth.py [--queens 100] [--days 730] [--window 60]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

Builds two dagster-postgres instances side by side: one whose ``nights`` calendar spans
``days`` (100 queens × 2 years = 73,000 queen × night keys per overnight asset) and one with a
rolling window of ``window`` nights. Every partition of ``approved_images`` gets a
materialization (runless events, as a real history would leave), then a real
``dagster-webserver`` serves each instance and the bench times the GraphQL queries the asset
page's partitions view makes (the UI's PartitionHealthQuery and the catalog's partition
stats), and the automation evaluation of the night's report. The last line is the ratio of
the partitions-view time at ``days`` to the time at ``window``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
import sqlalchemy as sa
import yaml

REPO = Path(__file__).resolve().parents[1]
REPEATS = 3

PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey primaryDimEndKey primaryDimStartTime primaryDimEndTime
            secondaryDim {
              ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
              ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
"""

PARTITION_STATS_QUERY = """
query AssetCatalogPartitionStats {
  assetNodes { assetKey { path } partitionStats { numMaterialized numPartitions numFailed numMaterializing } }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_database(admin_url: str) -> str:
    name = f"hydra_bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'create database "{name}"'))
    engine.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    name = sa.engine.make_url(url).database
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'drop database if exists "{name}" with (force)'))
    engine.dispose()


def environment(home: Path, start: dt.date) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HYDRA_NIGHTS_START": start.isoformat(),
        "HYDRA_ROSTER_DIR": str(home / "roster"),
        "HYDRA_STORAGE_ROOT": str(home / "storage"),
        "HYDRA_CATALOG_URL": f"sqlite:///{home / 'catalog.db'}",
        "PYTHONPATH": str(REPO),
    }


def run_child(script: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child process failed:\n{out.stderr[-3000:]}")
    return out.stdout


def fill_instance(env: dict[str, str], queens: int) -> tuple[int, float]:
    """Partitions and a materialization of every approved_images partition, in a child process
    that imports the code location with this calendar."""
    # The event log's batch write (what run workers use) instead of one round trip per event:
    # a bench-only shortcut through Dagster internals so 73,000 events take a minute, not an hour.
    script = f"""
import time, dagster as dg
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID
from hydra_assets.partitions import QUEENS, nights_partitions, queen_night_key
queens = [f"queen-{{i:04d}}" for i in range({queens})]
with dg.DagsterInstance.get() as instance:
    instance.add_dynamic_partitions(QUEENS, queens)
    nights = nights_partitions.get_partition_keys()
    started = time.perf_counter()
    def entry(partition):
        event = DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            event_specific_data=StepMaterializationData(dg.AssetMaterialization("approved_images", partition=partition)),
            job_name=RUNLESS_JOB_NAME,
        )
        return EventLogEntry(user_message="", level=20, job_name=RUNLESS_JOB_NAME, run_id=RUNLESS_RUN_ID,
                             error_info=None, timestamp=time.time(), dagster_event=event)
    keys = [str(queen_night_key(queen, night)) for night in nights for queen in queens]
    for start in range(0, len(keys), 2000):
        instance.event_log_storage.store_event_batch([entry(key) for key in keys[start:start + 2000]])
    print(len(keys), time.perf_counter() - started)
"""
    count, seconds = run_child(script, env).split()[-2:]
    return int(count), float(seconds)


def timed_query(port: int, query: str, variables: dict | None = None) -> tuple[float, dict]:
    timings, body = [], {}
    for _ in range(REPEATS):
        started = time.perf_counter()
        response = requests.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}}, timeout=600
        )
        timings.append(time.perf_counter() - started)
        body = response.json()
        if response.status_code != 200 or body.get("errors"):
            raise SystemExit(f"GraphQL query failed: {response.status_code} {str(body)[:2000]}")
    return statistics.median(timings), body


def serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"webserver exited: {log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                return process, port
        except requests.ConnectionError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit(f"webserver did not start: {log.read_text()[-3000:]}")


def automation_seconds(env: dict[str, str]) -> float:
    """One evaluation of the code location's automation conditions over this history."""
    script = """
import time, dagster as dg
from hydra_assets.definitions import defs
with dg.DagsterInstance.get() as instance:
    started = time.perf_counter()
    dg.evaluate_automation_conditions(defs=defs, instance=instance)
    print(time.perf_counter() - started)
"""
    return float(run_child(script, env).split()[-1])


def measure(label: str, home: Path, start: dt.date, queens: int, admin_url: str | None) -> dict[str, float]:
    """``admin_url`` None: the embedded SQLite instance under ``home``."""
    home.mkdir(parents=True)
    (home / "roster").mkdir()
    url = create_database(admin_url) if admin_url else None
    config = yaml.safe_load((REPO / "instance" / "dagster.yaml").read_text())
    if url:
        config["storage"] = {"postgres": {"postgres_url": url}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = environment(home, start)
    try:
        count, fill_seconds = fill_instance(env, queens)
        process, port = serve(env, home / "webserver.log")
        try:
            health, _ = timed_query(port, PARTITION_HEALTH_QUERY, {"assetKey": {"path": ["approved_images"]}})
            report, _ = timed_query(port, PARTITION_HEALTH_QUERY, {"assetKey": {"path": ["quality_report"]}})
            stats, body = timed_query(port, PARTITION_STATS_QUERY)
            [approved] = [n for n in body["data"]["assetNodes"] if n["assetKey"]["path"] == ["approved_images"]]
            seen = approved["partitionStats"]["numMaterialized"]
            if seen != count:
                raise SystemExit(f"the UI sees {seen} materialized partitions of {count} written")
        finally:
            process.terminate()
            process.wait(timeout=60)
        automation = automation_seconds(env)
    finally:
        if url:
            drop_database(admin_url, url)
    print(
        f"{label}: {count} approved_images partitions (filled in {fill_seconds:.0f} s); "
        f"partitions view {health * 1000:.0f} ms, report partitions {report * 1000:.0f} ms, "
        f"catalog partition stats {stats * 1000:.0f} ms, automation tick {automation * 1000:.0f} ms"
    )
    return {"health": health, "report": report, "stats": stats, "automation": automation}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queens", type=int, default=100)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--postgres", default=os.environ.get("HYDRA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--sqlite", action="store_true", help="the embedded SQLite instance instead of PostgreSQL")
    args = parser.parse_args()
    admin = None if args.sqlite else args.postgres
    today = dt.date.today()
    with tempfile.TemporaryDirectory() as tmp:
        full = measure(f"{args.queens} queens x {args.days} nights", Path(tmp) / "full", today - dt.timedelta(days=args.days - 1), args.queens, admin)
        window = measure(f"{args.queens} queens x {args.window} nights", Path(tmp) / "window", today - dt.timedelta(days=args.window - 1), args.queens, admin)
    print(f"ratio automation tick {args.days} / {args.window} nights: {full['automation'] / window['automation']:.1f}")
    print(f"ratio partitions view {args.days} / {args.window} nights: {full['health'] / window['health']:.1f}")


if __name__ == "__main__":
    main()
