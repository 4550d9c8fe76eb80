"""Alerts the studio asked for: low approval per queen and night, and failed runs."""

import json

import dagster as dg

from hydra_assets.domain.quality import APPROVAL_ALERT_RATE
from hydra_assets.partition_mappings import queen_and_night
from hydra_assets.quality.publishing import approved_images
from hydra_assets.run_tags import PARTITION_TAG
from resources.alerts import WebhookNotifier, webhook_body
from sensors.events import cursor_after_latest

APPROVED_IMAGES = approved_images.key
ALERTED_MEMORY = 2000
"""Partition keys remembered as alerted; far more than a few weeks of queens × nights."""
EVENTS_PER_TICK = 500


def build_low_approval_sensor(default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name="low_approval_sensor",
        minimum_interval_seconds=60,
        default_status=default_status,
        description=f"Posts an alert once per queen and night whose approval rate is below {APPROVAL_ALERT_RATE}.",
    )
    def low_approval_sensor(context: dg.SensorEvaluationContext, webhook: WebhookNotifier):
        if not context.cursor:
            start = json.dumps({"events": cursor_after_latest(context.instance, APPROVED_IMAGES), "alerted": []})
            return dg.SensorResult(skip_reason=dg.SkipReason("started: alerting on nights from now on"), cursor=start)
        state = json.loads(context.cursor)
        alerted: list[str] = state["alerted"]
        records = context.instance.fetch_materializations(
            APPROVED_IMAGES, limit=EVENTS_PER_TICK, cursor=state["events"], ascending=True
        )
        sent = 0
        for record in records.records:
            materialization = record.asset_materialization
            rate_value = materialization.metadata.get("approval_rate") if materialization else None
            if rate_value is None or materialization.partition is None:
                continue
            rate = float(rate_value.value)
            if rate >= APPROVAL_ALERT_RATE or materialization.partition in alerted:
                continue
            queen, night = queen_and_night(materialization.partition)
            message = f"approval rate {rate:.0%} for {queen} on {night} is below {APPROVAL_ALERT_RATE:.0%}"
            context.log.warning(message)
            webhook.notify(
                webhook_body(
                    "Low approval rate",
                    [message, f"run {record.run_id}"],
                    event="quality.approval_rate.low",
                    fields={"queen_slug": queen, "night": night, "approval_rate": rate, "run_id": record.run_id},
                )
            )
            alerted.append(materialization.partition)
            sent += 1
        cursor = json.dumps({"events": records.cursor, "alerted": alerted[-ALERTED_MEMORY:]})
        if not sent:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new low approval rates"), cursor=cursor)
        return dg.SensorResult(cursor=cursor)

    return low_approval_sensor


def build_run_failure_sensor(default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="run_failure_sensor",
        default_status=default_status,
        description="Posts the run id, job, failed step and the error's first line of every failed run.",
    )
    def run_failure_sensor(context: dg.RunFailureSensorContext, webhook: WebhookNotifier):
        run = context.dagster_run
        step_failures = context.get_step_failure_events()
        if step_failures:
            step = step_failures[0].step_key
            error = step_failures[0].step_failure_data.error
            # Dagster wraps the user's exception; the studio wants the user's message.
            while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
                error = error.cause
            message = error.message if error else "step failed"
        else:
            step = None
            message = context.failure_event.message or "run failed"
        first_line = next((line for line in message.strip().splitlines() if line.strip()), message)
        partition = run.tags.get(PARTITION_TAG)
        lines = [f"job {run.job_name}" + (f" partition {partition}" if partition else ""), f"run {run.run_id}"]
        if step:
            lines.append(f"step {step}")
        lines.append(first_line)
        context.log.error(" | ".join(lines))
        webhook.notify(
            webhook_body(
                "Run failed",
                lines,
                event="pipeline.run.failed",
                fields={"run_id": run.run_id, "job": run.job_name, "step": step, "error": first_line,
                        "partition": partition},
            )
        )

    return run_failure_sensor
