"""generation_task_sensor: queued generation tasks become overnight runs; failed runs are retried.

Each tick first follows the tasks already handed out (a failed or cancelled run is requeued
with the SPEC back-off, or fails the task for good after ``max_retries``), then claims due
queued tasks. The claim is the catalog's atomic queued → assigned move, and the run key is
task id + attempt, so two ticks racing (or a tick re-requesting a task whose run it cannot
see yet) never start a task twice.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from hydra_assets.domain import generation_tasks as tasks
from hydra_assets.domain.roster import roster_files, slug_for_file
from hydra_assets.generation_tasks import task_run_config
from hydra_assets.partitions import QUEENS, queen_night_key
from hydra_assets.run_tags import OVERNIGHT_TAG, TASK_ATTEMPT_TAG, TASK_TAG, TRIGGER_TAG
from jobs import overnight_job
from resources.catalog import CatalogResource
from resources.catalog_schema import GenerationTaskRow
from resources.storage import HydraStorage
from sensors.overnight import night_of

SENSOR_NAME = "generation_task_sensor"
CLAIMS_PER_TICK = 20
PRIORITY_TAG = "dagster/priority"
ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def task_run_request(row: GenerationTaskRow, slug: str, night: str, config: tasks.TaskConfig) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"generation-task-{row.id}-attempt-{row.retry_count}",
        job_name=overnight_job.name,
        partition_key=queen_night_key(slug, night),
        run_config=task_run_config(row.id, config),
        tags={
            TASK_TAG: str(row.id),
            TASK_ATTEMPT_TAG: str(row.retry_count),
            PRIORITY_TAG: str(tasks.run_priority(row.priority)),
            TRIGGER_TAG: "generation-task",
            OVERNIGHT_TAG: "true",
        },
    )


def _validated(row: GenerationTaskRow, slug: str, roster: set[str]) -> tasks.TaskConfig:
    """The row checked as `hydra request` checks a request: the control plane may insert rows directly."""
    return tasks.validate_request(
        queen=slug, roster_slugs=sorted(roster), config=row.config or {}, priority=row.priority,
        task_type=row.task_type, created_by=row.created_by or "control-plane",
    ).config


def _run_error(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        error = event.step_failure_data.error if event and event.step_failure_data else None
        while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
            error = error.cause
        if error is not None:
            first = next((line for line in error.message.splitlines() if line.strip()), error.message)
            return f"run {run.run_id} ({run.status.value}) step {event.step_key}: {first}"
    return f"run {run.run_id} ended {run.status.value}"


def evaluate_queue(
    instance: dg.DagsterInstance, catalog: CatalogResource, roster: set[str], now: dt.datetime, log, limit: int = CLAIMS_PER_TICK
) -> list[dg.RunRequest]:
    """One tick at ``now``: what to (re-)request; failed runs and bad rows are written back to the catalog."""
    night = night_of(now)
    requests: list[dg.RunRequest] = []
    for row, slug in catalog.tasks(tasks.ACTIVE_STATUSES):
        runs = instance.get_runs(
            dg.RunsFilter(tags={TASK_TAG: str(row.id), TASK_ATTEMPT_TAG: str(row.retry_count)}), limit=1
        )
        if not runs:
            if row.status == "assigned":  # claimed by a tick that did not get to submit: same run key, so at most one run
                try:
                    requests.append(task_run_request(row, slug, night, _validated(row, slug, roster)))
                except tasks.TaskRequestError as error:
                    catalog.update_task(row.id, status="failed", last_error=str(error))
            continue
        run = runs[0]
        if run.status in ENDED_BADLY or (run.status == dg.DagsterRunStatus.SUCCESS and row.status != "completed"):
            error = _run_error(instance, run) if run.status in ENDED_BADLY else f"run {run.run_id} ended without publishing"
            status = catalog.fail_or_requeue_task(row.id, error, now=now)
            log.warning(f"generation task {row.id}: {error}; now {status}")
    for row, slug in catalog.claim_tasks(limit, now=now):
        try:
            config = _validated(row, slug, roster)
        except tasks.TaskRequestError as error:
            catalog.update_task(row.id, status="failed", last_error=str(error))
            log.warning(f"generation task {row.id} refused: {error}")
            continue
        requests.append(task_run_request(row, slug, night, config))
        log.info(f"generation task {row.id}: {config.count} {config.asset_type} of {slug} on {night}, priority {row.priority}")
    return requests


def build_generation_task_sensor(default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        job_name=overnight_job.name,  # by name: the cluster builds its own (in-process) overnight_job
        minimum_interval_seconds=30,
        default_status=default_status,
        description="Turns queued generation tasks into overnight runs of their queen × tonight; retries failed runs.",
    )
    def generation_task_sensor(context: dg.SensorEvaluationContext, catalog: CatalogResource, storage: HydraStorage):
        roster = {slug_for_file(p) for p in roster_files(Path(storage.roster_dir))}
        now = dt.datetime.now(dt.UTC)
        requests = evaluate_queue(context.instance, catalog, roster, now, context.log)
        if not requests:
            return dg.SkipReason("no generation task is due")
        partitions = sorted({r.partition_key.keys_by_dimension["queen"] for r in requests})
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[dg.AddDynamicPartitionsRequest(QUEENS, partitions)],
        )

    return generation_task_sensor
