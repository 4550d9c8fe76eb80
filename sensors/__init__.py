"""Sensors and schedules."""

from sensors.alerts import build_low_approval_sensor, build_run_failure_sensor
from sensors.chapters import build_chapters_sensor, chapter_index
from sensors.generation_tasks import build_generation_task_sensor
from sensors.overnight import (
    build_lora_ready_sensor,
    build_night_publish_sensor,
    build_overnight_schedule,
    build_report_automation_sensor,
)
from sensors.roster import build_roster_sensor, roster_index

__all__ = [
    "build_chapters_sensor",
    "chapter_index",
    "build_generation_task_sensor",
    "build_lora_ready_sensor",
    "build_low_approval_sensor",
    "build_night_publish_sensor",
    "build_overnight_schedule",
    "build_report_automation_sensor",
    "build_roster_sensor",
    "build_run_failure_sensor",
    "roster_index",
]
