"""How the overnight stages work for a generation task: its run config, and the task row they keep current.

The queue's sensor (sensors/generation_tasks.py) starts overnight_job for the task's queen ×
night with the task in generated_images' config and its id in the run's tags; each stage moves
the row one rung: generated_images running (completed = images made), image_scores
quality_check, approved_images completed (approved / rejected).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import platform
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from hydra_assets.domain import generation_tasks as tasks
from hydra_assets.run_tags import TASK_TAG
from hydra_assets.settings import SETTINGS
from resources.catalog import CatalogResource


class GenerationTaskRun(dg.Config):
    """The task a generated_images run makes images for, instead of the nightly targets."""

    task_id: int = Field(ge=1)
    asset_type: str
    count: int = Field(ge=tasks.MIN_COUNT, le=tasks.MAX_COUNT)
    prompt_addition: str = Field(default="", max_length=tasks.PROMPT_ADDITION_MAX)


def task_run_config(task_id: int, config: tasks.TaskConfig) -> dict[str, Any]:
    """overnight_job's run config for a task: the task and its sampling overrides, for generated_images."""
    task = {"task_id": task_id, "asset_type": config.asset_type, "count": config.count, "prompt_addition": config.prompt_addition}
    return {"ops": {"generated_images": {"config": {"task": task, **config.sampling_overrides()}}}}


def run_task_id(context: dg.AssetExecutionContext) -> int | None:
    """The task this run works for, from its tags; None for a nightly run."""
    value = context.run.tags.get(TASK_TAG)
    return int(value) if value and value.isdigit() else None


def task_images(entries: Iterable[Mapping[str, Any]], task_id: int) -> list[Mapping[str, Any]]:
    return [e for e in entries if tasks.task_of_image(str(e.get("image_id", ""))) == task_id]


def mark_running(catalog: CatalogResource, task: GenerationTaskRun, context: dg.AssetExecutionContext) -> None:
    """Running, on this host; on the cluster the run's Kubernetes job (K8sRunLauncher's ``dagster-run-{run id}``)."""
    job = f"dagster-run-{context.run_id}" if SETTINGS.env == "cluster" else None
    catalog.update_task(task.task_id, status="running", started_at=datetime.now(UTC), total_count=task.count,
                        assigned_node=platform.node(), k8s_job_name=job)
    context.log.info(f"generation task {task.task_id}: {task.count} {task.asset_type} images")


def mark_quality_check(catalog: CatalogResource, context: dg.AssetExecutionContext) -> None:
    if (task_id := run_task_id(context)) is not None:
        catalog.update_task(task_id, status="quality_check")


def mark_decided(catalog: CatalogResource, context: dg.AssetExecutionContext, rows: list[Mapping[str, Any]]) -> None:
    """The task's approved and rejected counts from the partition's score rows; the task is done."""
    if (task_id := run_task_id(context)) is None:
        return
    mine = task_images(rows, task_id)
    approved = sum(1 for row in mine if bool(row["approved"]))
    catalog.update_task(task_id, status="completed", approved_count=approved, rejected_count=len(mine) - approved)
    context.log.info(f"generation task {task_id}: {approved} of {len(mine)} images approved")
