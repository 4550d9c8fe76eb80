"""The overnight batch: the 22:00 schedule, and generation following a new LoRA version."""

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg

from hydra_assets.domain.roster import roster_files, slug_for_file
from hydra_assets.partitions import QUEENS, nights_partitions, queen_night_key, queen_nights_partitions
from hydra_assets.settings import SETTINGS
from jobs import OVERNIGHT_TAG, overnight_job, quality_report_job
from resources.storage import HydraStorage
from sensors.events import cursor_after_latest

OVERNIGHT_JOB = overnight_job.name
OVERNIGHT_CRON = "0 22 * * *"
PARTITION_TAG = "dagster/partition"
QUEEN_LORA = dg.AssetKey("queen_lora")
LORA_EVENTS_PER_TICK = 500


def night_of(moment: dt.datetime) -> str:
    """The batch date a moment belongs to, in the studio's timezone (22:00 on the 20th → 2026-11-20)."""
    return moment.astimezone(ZoneInfo(SETTINGS.timezone)).strftime("%Y-%m-%d")


def ready_queens(instance: dg.DagsterInstance, roster_slugs: set[str]) -> list[str]:
    """Queens with a roster file, a partition and a materialized LoRA: two queries, whatever the history.

    A removed roster file keeps its partition (the roster sensor never deletes history), so
    the roster folder itself decides who is still in production.
    """
    queens = set(instance.get_dynamic_partitions(QUEENS)) & roster_slugs
    return sorted(queens & instance.get_materialized_partitions(QUEEN_LORA))


def overnight_request(queen: str, night: str, reason: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"{reason}:{night}|{queen}",
        partition_key=queen_night_key(queen, night),
        tags={OVERNIGHT_TAG: "true", "hydra/trigger": reason},
    )


def build_overnight_schedule(default_status: dg.DefaultScheduleStatus) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="overnight_schedule",
        cron_schedule=OVERNIGHT_CRON,
        execution_timezone=SETTINGS.timezone,
        job_name=OVERNIGHT_JOB,
        default_status=default_status,
        description="Tonight's generate → score → publish for every queen whose LoRA is ready.",
    )
    def overnight_schedule(context: dg.ScheduleEvaluationContext, storage: HydraStorage):
        night = night_of(context.scheduled_execution_time)
        first_night = nights_partitions.start.strftime("%Y-%m-%d")
        if night < first_night:
            return dg.SkipReason(f"{night} is before the nights calendar starts ({first_night}, HYDRA_NIGHTS_START)")
        queens = ready_queens(context.instance, {slug_for_file(p) for p in roster_files(Path(storage.roster_dir))})
        if not queens:
            return dg.SkipReason(f"no queen has a LoRA yet; nothing to generate for {night}")
        context.log.info(f"{night}: {len(queens)} queens with a ready LoRA")
        return [overnight_request(queen, night, "schedule") for queen in queens]

    return overnight_schedule


def build_lora_ready_sensor(default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name="lora_ready_sensor",
        job_name=OVERNIGHT_JOB,
        minimum_interval_seconds=60,
        default_status=default_status,
        description="When a queen's LoRA gets a new version, her current night's generation follows.",
    )
    def lora_ready_sensor(context: dg.SensorEvaluationContext):
        if not context.cursor:
            start = json.dumps({"events": cursor_after_latest(context.instance, QUEEN_LORA)})
            return dg.SensorResult(skip_reason=dg.SkipReason("started: following LoRA versions from now on"), cursor=start)
        records = context.instance.fetch_materializations(
            QUEEN_LORA, limit=LORA_EVENTS_PER_TICK, cursor=json.loads(context.cursor)["events"], ascending=True
        )
        night = night_of(dt.datetime.now(ZoneInfo(SETTINGS.timezone)))
        requests: dict[str, dg.RunRequest] = {}
        cursor = json.dumps({"events": records.cursor})
        for record in records.records:
            materialization = record.asset_materialization
            if materialization is None or materialization.partition is None:
                continue
            changed = materialization.metadata.get("current_changed")
            if changed is not None and not changed.value:
                continue  # the current LoRA is the one it was: tonight's images already use it
            version = materialization.metadata.get("version")
            reason = f"lora-v{version.value if version else record.storage_id}"
            requests[materialization.partition] = overnight_request(materialization.partition, night, reason)
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new LoRA version"), cursor=cursor)
        context.log.info(f"new LoRA versions for {sorted(requests)}: generating {night}")
        return dg.SensorResult(run_requests=list(requests.values()), cursor=cursor)

    return lora_ready_sensor


def build_report_after_overnight_sensor(default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    """quality_report is per night, the overnight job per queen × night: each finished queen refreshes the report."""

    @dg.run_status_sensor(
        name="report_after_overnight_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[overnight_job],
        request_job=quality_report_job,
        default_status=default_status,
        description="After a queen's overnight run succeeds, rebuild that night's quality report.",
    )
    def report_after_overnight_sensor(context: dg.RunStatusSensorContext):
        run = context.dagster_run
        key = run.tags.get(PARTITION_TAG)
        if key is None:
            return dg.SkipReason(f"run {run.run_id} has no partition tag")
        night = queen_nights_partitions.get_partition_key_from_str(key).keys_by_dimension["night"]
        return dg.RunRequest(run_key=f"report:{night}:{run.run_id}", partition_key=night)

    return report_after_overnight_sensor
