"""The overnight batch: the 22:00 schedule, generation following a new LoRA version, the automation of
night_scores and the report, and each queen's publish run after her night's scores."""

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg

from hydra_assets.domain.roster import roster_files, slug_for_file
from hydra_assets.partitions import QUEENS, nights_partitions, queen_night_key
from hydra_assets.lora import QUEEN_LORA_KEY as QUEEN_LORA
from hydra_assets.domain.raw_scores import STATUS_FAILED
from hydra_assets.quality.night_scores import night_scores
from hydra_assets.quality.report import OVERNIGHT_START_HOUR, quality_report
from hydra_assets.settings import SETTINGS
from hydra_assets.run_tags import OVERNIGHT_TAG, TRIGGER_TAG
from jobs import overnight_generation_job, overnight_publish_job
from resources.storage import HydraStorage
from sensors.events import cursor_after_latest

OVERNIGHT_JOB = overnight_generation_job.name
"""What the schedule and a new LoRA version request per queen: generation; scoring and publishing follow."""
PUBLISH_JOB = overnight_publish_job.name
OVERNIGHT_CRON = f"0 {OVERNIGHT_START_HOUR} * * *"
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
        tags={OVERNIGHT_TAG: "true", TRIGGER_TAG: reason},
    )


def build_overnight_schedule(default_status: dg.DefaultScheduleStatus) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="overnight_schedule",
        cron_schedule=OVERNIGHT_CRON,
        execution_timezone=SETTINGS.timezone,
        job_name=OVERNIGHT_JOB,
        default_status=default_status,
        description="Tonight's generation for every queen whose LoRA is ready; night_scores and each queen's "
        "publish run follow.",
    )
    def overnight_schedule(context: dg.ScheduleEvaluationContext, storage: HydraStorage):
        night = night_of(context.scheduled_execution_time)
        if before_calendar := calendar_not_started(night):
            return dg.SkipReason(before_calendar)
        queens = ready_queens(context.instance, {slug_for_file(p) for p in roster_files(Path(storage.roster_dir))})
        if not queens:
            return dg.SkipReason(f"no queen has a LoRA yet; nothing to generate for {night}")
        context.log.info(f"{night}: {len(queens)} queens with a ready LoRA")
        return [overnight_request(queen, night, "schedule") for queen in queens]

    return overnight_schedule


def calendar_not_started(night: str) -> str | None:
    """Why ``night`` has no partition yet, when the calendar starts after it (a skip, not an error)."""
    first_night = nights_partitions.start.strftime("%Y-%m-%d")
    if night < first_night:
        return f"{night} is before the nights calendar starts ({first_night}, HYDRA_NIGHTS_START)"
    return None


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
        cursor = json.dumps({"events": records.cursor})
        if before_calendar := calendar_not_started(night):
            return dg.SensorResult(skip_reason=dg.SkipReason(before_calendar), cursor=cursor)
        requests: dict[str, dg.RunRequest] = {}
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


REPORT_AUTOMATION_SENSOR = "quality_report_automation_sensor"


def build_report_automation_sensor(default_status: dg.DefaultSensorStatus) -> dg.AutomationConditionSensorDefinition:
    """Evaluates night_scores' and quality_report's automation conditions: the night scored once its
    queens are generated, one report per night once its queens are done."""
    return dg.AutomationConditionSensorDefinition(
        REPORT_AUTOMATION_SENSOR,
        target=dg.AssetSelection.assets(night_scores, quality_report),
        default_status=default_status,
        minimum_interval_seconds=60,
        run_tags={TRIGGER_TAG: "automation"},
        description="Requests night_scores after the night's last generation run and the night's quality report "
        "after the last of its queens' publish runs.",
    )


NIGHT_PUBLISH_SENSOR = "night_publish_sensor"
SCORES_EVENTS_PER_TICK = 100


def publish_request(queen: str, night: str, storage_id: int) -> dg.RunRequest:
    return dg.RunRequest(
        job_name=PUBLISH_JOB,
        run_key=f"publish:{night}|{queen}|{storage_id}",
        partition_key=queen_night_key(queen, night),
        tags={OVERNIGHT_TAG: "true", TRIGGER_TAG: "night_scores"},
    )


def build_night_publish_sensor(default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    """After each night_scores materialization, one publish run per queen whose raw scores changed or who failed.

    A failed queen's publish run fails on her own partition (or scores her in-step when the
    cause is gone), so the UI shows her; an unchanged queen is not published twice.
    """

    @dg.sensor(
        name=NIGHT_PUBLISH_SENSOR,
        job_name=PUBLISH_JOB,
        minimum_interval_seconds=30,
        default_status=default_status,
        description="Each queen's image_scores → approved_images run after her night's night_scores.",
    )
    def night_publish_sensor(context: dg.SensorEvaluationContext):
        key = night_scores.key
        if not context.cursor:
            start = json.dumps({"events": cursor_after_latest(context.instance, key)})
            return dg.SensorResult(skip_reason=dg.SkipReason("started: following night_scores from now on"), cursor=start)
        records = context.instance.fetch_materializations(
            key, limit=SCORES_EVENTS_PER_TICK, cursor=json.loads(context.cursor)["events"], ascending=True
        )
        requests = []
        for record in records.records:
            materialization = record.asset_materialization
            status = materialization.metadata.get("status") if materialization else None
            if materialization is None or materialization.partition is None or status is None:
                continue
            for queen, line in sorted(status.value.items()):
                if not context.instance.has_dynamic_partition(QUEENS, queen):
                    context.log.warning(f"night_scores {materialization.partition} lists {queen}, who is no queens partition")
                    continue
                if line.get("status") == STATUS_FAILED or line.get("changed"):
                    requests.append(publish_request(queen, materialization.partition, record.storage_id))
        cursor = json.dumps({"events": records.cursor})
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason("no night with changed scores"), cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return night_publish_sensor
