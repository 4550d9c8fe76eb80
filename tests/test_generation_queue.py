"""The generation queue: requests refused or queued, claimed once, run by the real overnight job, retried."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from hydra_assets.domain import generation_tasks as tasks
from hydra_assets.domain.demo_data import DEMO_QUEENS, write_demo_data
from hydra_assets.domain.roster import load_queen
from hydra_assets.domain.storage import StorageLayout
from hydra_assets.partitions import QUEENS, queen_night_key
from hydra_assets.run_tags import TASK_TAG
from resources.catalog import CatalogResource
from resources.catalog_schema import GenerationTaskRow
from sensors.generation_tasks import SENSOR_NAME, evaluate_queue
from sensors.overnight import night_of
from hydra_assets.definitions import local_resources
from tests.helpers import hydra_definitions, temp_settings

SLUG = DEMO_QUEENS[0].slug
REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def request(queen=SLUG, roster=(SLUG,), **config):
    return tasks.validate_request(queen=queen, roster_slugs=list(roster), config={"asset_type": "expression", "count": 3, **config})


# --- refused at creation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queen": "nobody"}, "generation task queen: no roster file for 'nobody' (known: nova-sterling)"),
        ({"queen": "Bad Slug!"}, "generation task queen: 'Bad Slug!' is not a valid slug"),
        ({"asset_type": "selfie"}, "config.asset_type: must be one of the configured types portrait, expression, pose (got 'selfie')"),
        ({"count": 0}, "config.count: Input should be greater than or equal to 1 (got '0')"),
        ({"count": 201}, "config.count: Input should be less than or equal to 200 (got '201')"),
        ({"prompt_addition": "smile\x00"}, "config.prompt_addition: Value error, must not contain NUL"),
        ({"prompt_addition": "x" * 501}, "config.prompt_addition: String should have at most 500 characters"),
        ({"steps": 0}, "config.steps: Input should be greater than or equal to 1"),
        ({"width": 1004}, "config.width: Input should be a multiple of 8"),
        ({"cfg": 31}, "config.cfg: Input should be less than or equal to 30"),
        ({"colour": "red"}, "config.colour: is not a known field"),
    ],
)
def test_a_bad_request_is_refused_naming_the_field_and_the_rule(kwargs, message):
    queen = kwargs.pop("queen", SLUG)
    with pytest.raises(tasks.TaskRequestError) as refused:
        request(queen=queen, **kwargs)
    assert message in str(refused.value)


def test_priority_task_type_and_config_shape_are_checked():
    with pytest.raises(tasks.TaskRequestError, match="priority: must be one of critical, high, normal, low, idle"):
        tasks.validate_request(queen=SLUG, roster_slugs=[SLUG], config={"asset_type": "pose", "count": 1}, priority="urgent")
    with pytest.raises(tasks.TaskRequestError, match="task_type: must be 'image_generation'"):
        tasks.validate_request(queen=SLUG, roster_slugs=[SLUG], config={"asset_type": "pose", "count": 1}, task_type="lora")
    with pytest.raises(tasks.TaskRequestError, match="config: must be a JSON object"):
        tasks.validate_request(queen=SLUG, roster_slugs=[SLUG], config=["pose"])  # type: ignore[arg-type]
    good = request(prompt_addition="  soft window light ", steps=12)
    assert good.config.prompt_addition == "soft window light" and good.config.sampling_overrides() == {"steps": 12}


def test_retry_back_off_and_run_priorities_follow_the_spec():
    assert [tasks.retry_delay_seconds(a) for a in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert [tasks.run_priority(p) for p in ("critical", "high", "normal", "low", "idle")] == [1000, 100, 10, 1, 0]


def test_task_image_ids_never_clash_with_nightly_ones():
    nightly = f"{SLUG}-2026-11-20-expression-003"
    task = tasks.task_image_id(SLUG, "2026-11-20", 12, "expression", 3)
    assert task == f"{SLUG}-2026-11-20-T12-expression-003" and task != nightly
    assert tasks.task_of_image(task) == 12 and tasks.task_of_image(nightly) is None
    assert tasks.task_of_image(f"{SLUG}-2026-11-20-t12-expression-000") is None  # a lower-case type named t12


# --- the catalog's claim ---------------------------------------------------------------------


def catalog_with_queen(url: str, roster: Path) -> CatalogResource:
    catalog = CatalogResource(url=url)
    catalog.upsert_queen(load_queen(roster / f"{SLUG}.yaml"))
    return catalog


@pytest.fixture(scope="module")
def roster(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("queue-roster")
    write_demo_data(root / "roster", root / "storage" / "reference_images")
    return root / "roster"


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_claimers_racing_never_get_the_same_task(backend, request, tmp_path, roster):
    url = f"sqlite:///{tmp_path / 'catalog.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_database_url")
    catalog = catalog_with_queen(url, roster)
    ids = [catalog.create_task(tasks.validate_request(queen=SLUG, roster_slugs=[SLUG], config={"asset_type": "pose", "count": 1},
                                                      priority=p)) for p in ["low", "critical", "normal"] * 10]
    claimed: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def claim(n: int) -> None:
        other = CatalogResource(url=url)  # its own engine, as another sensor process would have
        start.wait()
        while rows := other.claim_tasks(3, node=f"node-{n}"):
            claimed[n] += [row.id for row, _ in rows]
        other.dispose()

    threads = [threading.Thread(target=claim, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed[0] + claimed[1]) == sorted(ids), "every task claimed, none twice"
    assert not set(claimed[0]) & set(claimed[1])
    assert {row.status for row, _ in catalog.tasks(("assigned",))} == {"assigned"}
    assert catalog.claim_tasks(10) == []
    catalog.dispose()


def test_claim_takes_the_most_urgent_due_task_first(tmp_path, roster):
    catalog = catalog_with_queen(f"sqlite:///{tmp_path / 'catalog.db'}", roster)
    low, high = (catalog.create_task(tasks.validate_request(queen=SLUG, roster_slugs=[SLUG], priority=p,
                                                            config={"asset_type": "pose", "count": 1})) for p in ("low", "high"))
    [(first, slug)] = catalog.claim_tasks(1)
    assert (first.id, slug, first.status) == (high, SLUG, "assigned") and first.assigned_node
    catalog.update_task(low, status="cancelled")
    assert catalog.claim_tasks(5) == []
    catalog.update_task(low, status="running")  # a final task stays final
    assert catalog.task(low).status == "cancelled"
    catalog.dispose()


def test_a_row_the_control_plane_inserted_badly_is_failed_not_run(tmp_path, roster):
    catalog = catalog_with_queen(f"sqlite:///{tmp_path / 'catalog.db'}", roster)
    with catalog.session() as session, session.begin():
        bad = GenerationTaskRow(task_type="image_generation", priority="high", queen_id=catalog.queen_id(SLUG),
                                config={"asset_type": "expression", "count": 500}, created_by="control-plane")
        session.add(bad)
    with dg.instance_for_test() as instance:
        requests = evaluate_queue(instance, catalog, {SLUG}, dt.datetime.now(dt.UTC), dg.get_dagster_logger())
    row = catalog.task(bad.id)
    assert requests == [] and row.status == "failed"
    assert row.last_error == "generation task config.count: Input should be less than or equal to 200 (got '500')"
    catalog.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_sensor_ticks_racing_request_one_run_key(backend, request, tmp_path, roster):
    url = f"sqlite:///{tmp_path / 'catalog.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_database_url")
    catalog = catalog_with_queen(url, roster)
    task_id = catalog.create_task(tasks.validate_request(
        queen=SLUG, roster_slugs=[SLUG], priority="critical",
        config={"asset_type": "expression", "count": 2, "prompt_addition": "soft light", "steps": 12}))
    requested: list[dg.RunRequest] = []
    start = threading.Barrier(2)
    with dg.instance_for_test() as instance:
        def tick() -> None:
            other = CatalogResource(url=url)
            start.wait()
            requested.extend(evaluate_queue(instance, other, {SLUG}, dt.datetime.now(dt.UTC), dg.get_dagster_logger()))
            other.dispose()

        threads = [threading.Thread(target=tick) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert requested and {r.run_key for r in requested} == {f"generation-task-{task_id}-attempt-0"}
    run_request = requested[0]
    assert run_request.tags["dagster/priority"] == "1000" and run_request.tags[TASK_TAG] == str(task_id)
    assert run_request.run_config == {"ops": {"generated_images": {"config": {
        "task": {"task_id": task_id, "asset_type": "expression", "count": 2, "prompt_addition": "soft light"}, "steps": 12}}}}
    assert catalog.task(task_id).status == "assigned"
    catalog.dispose()


# --- hydra request ---------------------------------------------------------------------------


def hydra(tmp_path: Path, roster: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_ROSTER_DIR": str(roster),
           "HYDRA_STORAGE_ROOT": str(tmp_path / "storage"), "HYDRA_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}"}
    return subprocess.run([sys.executable, "-m", "hydra_assets.cli", "request", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_hydra_request_queues_a_task_or_refuses_it(tmp_path, roster):
    refused = hydra(tmp_path, roster, SLUG, "--type", "expression", "--count", "0")
    assert refused.returncode == 2 and "config.count: Input should be greater than or equal to 1" in refused.stderr
    done = hydra(tmp_path, roster, SLUG, "--type", "expression", "--count", "12", "--prompt", "warm smile",
                 "--priority", "high", "--by", "ines")
    assert done.returncode == 0, done.stderr
    catalog = CatalogResource(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    row = catalog.task(int(done.stdout.strip()))
    assert (row.status, row.priority, row.total_count, row.created_by, row.retry_count, row.max_retries) == (
        "queued", "high", 12, "ines", 0, 3)
    assert row.config == {"asset_type": "expression", "count": 12, "prompt_addition": "warm smile"}
    catalog.dispose()


# --- the sensor and the real overnight job ---------------------------------------------------


def task_rows(url: str, task_id: int) -> list[dict]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("select generation_params, approved from generated_assets")).all()
    engine.dispose()
    return [json.loads(p) | {"approved": a} for p, a in rows if json.loads(p).get("task_id") == task_id]


def run_requested(defs: dg.Definitions, instance, run_request: dg.RunRequest, **kwargs) -> dg.ExecuteInProcessResult:
    """What the daemon does with a run request: the job, its partition, config and tags."""
    return defs.resolve_job_def(run_request.job_name).execute_in_process(
        partition_key=run_request.partition_key, run_config=run_request.run_config, tags=run_request.tags,
        instance=instance, **kwargs,
    )


def tick(defs: dg.Definitions, instance, tmp_path: Path) -> list[dg.RunRequest]:
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    resources = {k: v for k, v in local_resources(temp_settings(tmp_path)).items() if k in ("catalog", "storage")}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    return list(result.run_requests) if isinstance(result, dg.SensorResult) else []


@pytest.mark.slow
def test_a_task_is_run_once_by_the_real_overnight_job_and_its_counts_are_kept(tmp_path):
    write_demo_data(tmp_path / "roster", tmp_path / "storage" / "reference_images")
    defs = hydra_definitions(tmp_path)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        assert defs.resolve_job_def("queen_reference_job").execute_in_process(partition_key=SLUG, instance=instance).success
        queued = hydra(tmp_path, tmp_path / "roster", SLUG, "--type", "expression", "--count", "3", "--prompt", "soft window light",
                       "--priority", "high")
        assert queued.returncode == 0, queued.stderr
        task_id = int(queued.stdout)

        first, second = tick(defs, instance, tmp_path), tick(defs, instance, tmp_path)
        assert len(first) == 1 and {r.run_key for r in first + second} == {first[0].run_key}, "one run key, whatever the ticks"
        night = night_of(dt.datetime.now(dt.UTC))
        assert first[0].partition_key == queen_night_key(SLUG, night)
        assert first[0].tags["dagster/priority"] == "100" and first[0].tags[TASK_TAG] == str(task_id)
        result = run_requested(defs, instance, first[0])
        assert result.success
        assert tick(defs, instance, tmp_path) == [], "a finished task is not run again"

        catalog = CatalogResource(url=url)
        row = catalog.task(task_id)
        print(f"final generation_tasks row: { {c.name: getattr(row, c.name) for c in GenerationTaskRow.__table__.c} }")
        assert (row.status, row.total_count, row.completed_count) == ("completed", 3, 3)
        assert row.approved_count + row.rejected_count == 3 and row.started_at <= row.completed_at
        mine = task_rows(url, task_id)
        assert len(mine) == 3 and sum(bool(r["approved"]) for r in mine) == row.approved_count
        assert all("soft window light" in r["prompt"] for r in mine)

        # the nightly run of the same partition keeps the task's images; a crash mid-task redoes only what is missing
        layout = StorageLayout(tmp_path / "storage")
        manifest_path = layout.generated_dir(night, SLUG) / "manifest.json"
        nightly = defs.resolve_job_def("overnight_job").execute_in_process(
            partition_key=queen_night_key(SLUG, night), instance=instance, asset_selection=[dg.AssetKey("generated_images")])
        assert nightly.success
        images = json.loads(manifest_path.read_text())["images"]
        assert sum(tasks.task_of_image(e["image_id"]) == task_id for e in images) == 3
        assert sum(tasks.task_of_image(e["image_id"]) is None for e in images) > 0
        task_files = [e["file"] for e in images if tasks.task_of_image(e["image_id"]) == task_id]
        (manifest_path.parent / task_files[-1]).unlink()
        again = run_requested(defs, instance, first[0], asset_selection=[dg.AssetKey("generated_images")])
        [materialization] = again.asset_materializations_for_node("generated_images")
        assert (materialization.metadata["new"].value, materialization.metadata["reused"].value) == (1, 2)
        assert len(json.loads(manifest_path.read_text())["images"]) == len(images)
        catalog.dispose()


def test_a_failing_task_is_retried_with_back_off_then_failed_for_good(tmp_path):
    """No references: every run's generated_images fails; 1 run + 3 retries, then the task fails."""
    write_demo_data(tmp_path / "roster", tmp_path / "storage" / "reference_images")
    defs = hydra_definitions(tmp_path)
    catalog = catalog_with_queen(f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "roster")
    task_id = catalog.create_task(request(count=1))
    now, keys, delays = dt.datetime.now(dt.UTC), [], []
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        for _ in range(10):
            requests = evaluate_queue(instance, catalog, {SLUG}, now, dg.get_dagster_logger())
            row = catalog.task(task_id)
            if row.status == "failed":
                break
            if requests:
                [run_request] = requests
                keys.append(run_request.run_key)
                assert not run_requested(defs, instance, run_request, raise_on_error=False).success
            elif row.status == "queued":
                delays.append((row.queued_at - now).total_seconds())
                assert evaluate_queue(instance, catalog, {SLUG}, now, dg.get_dagster_logger()) == [], "not before its back-off"
                now = row.queued_at
    assert keys == [f"generation-task-{task_id}-attempt-{n}" for n in range(4)]
    assert delays == [10, 20, 40]
    assert (row.status, row.retry_count) == ("failed", 3)
    assert "step generated_images" in row.last_error and "materialize reference_images" in row.last_error
    catalog.dispose()
