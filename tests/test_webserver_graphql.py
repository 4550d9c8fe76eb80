"""The studio's way in: the webserver on the embedded instance, driven through GraphQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
from dagster_graphql import DagsterGraphQLClient

from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.partitions import QUEENS, queen_night_key
from tests.helpers import hydra_definitions

REPO = Path(__file__).resolve().parents[1]
SLUG = "nova-sterling"
NIGHT = "2026-11-20"
STARTUP_TIMEOUT = 180
RUN_TIMEOUT = 300

LINEAGE_QUERY = """
query Lineage($path: [String!]!) {
  assetNodes(assetKeys: [{path: $path}]) {
    assetKey { path }
    dependencyKeys { path }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_webserver(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"webserver exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    raise AssertionError(f"webserver not up on port {port} after {STARTUP_TIMEOUT}s:\n{log.read_text()[-4000:]}")


def lineage(port: int, asset: str) -> set[str]:
    response = requests.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": LINEAGE_QUERY, "variables": {"path": [asset]}},
        timeout=30,
    )
    response.raise_for_status()
    [node] = response.json()["data"]["assetNodes"]
    return {"/".join(key["path"]) for key in node["dependencyKeys"]}


@pytest.mark.slow
@pytest.mark.timeout(900)  # webserver start-up (up to STARTUP_TIMEOUT) plus a run (up to RUN_TIMEOUT)
def test_launch_a_demo_partition_through_graphql_and_read_lineage(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    # Runs launch at once: no daemon here to dequeue them (and none to start the sensors).
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    write_demo_data(tmp_path / "roster", tmp_path / "storage" / "reference_images")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HYDRA_ROSTER_DIR": str(tmp_path / "roster"),
        "HYDRA_STORAGE_ROOT": str(tmp_path / "storage"),
        "HYDRA_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
    }
    # What the overnight run stands on (references, LoRA), materialized in this process on the same
    # instance and storage the webserver will use.
    defs = hydra_definitions(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        for job_name in ("queen_reference_job", "queen_lora_job"):
            assert defs.resolve_job_def(job_name).execute_in_process(partition_key=SLUG, instance=instance).success

    port = free_port()
    log = tmp_path / "webserver.log"
    webserver = Path(sys.executable).with_name("dagster-webserver")
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [str(webserver), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_webserver(port, process, log)
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        started = time.monotonic()
        key = queen_night_key(SLUG, NIGHT)
        run_id = client.submit_job_execution(
            "overnight_job",
            tags={"dagster/partition": key, "dagster/partition/queen": SLUG, "dagster/partition/night": NIGHT},
        )
        status = None
        while time.monotonic() - started < RUN_TIMEOUT:
            status = client.get_run_status(run_id)
            if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
                break
            time.sleep(1)
        wall = time.monotonic() - started
        print(f"GraphQL run {run_id}: {status} in {wall:.1f}s")
        assert status == dg.DagsterRunStatus.SUCCESS, log.read_text()[-4000:]
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_materialized_partitions(dg.AssetKey("approved_images")) == {key}
        # lineage from a published image back to the queen's references
        assert lineage(port, "approved_images") == {"image_scores"}
        assert lineage(port, "image_scores") == {"generated_images", "night_scores", "reference_identity"}
        assert lineage(port, "night_scores") == {"generated_images"}
        assert lineage(port, "generated_images") == {"queen_profile", "queen_lora"}
        assert lineage(port, "queen_lora") == {"reference_images", "reference_identity"}
    finally:
        process.terminate()
        process.wait(timeout=30)
