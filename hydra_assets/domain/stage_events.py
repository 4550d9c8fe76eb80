"""The payloads each stage emits, built from what the stage already has (manifest entries, score rows).

Paths are relative to the storage root, as in the catalog's ``generated_assets.file_path``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra_assets.domain import quality
from hydra_assets.domain.events import EventType, ImageEvent, ImageScores, PipelineEvent, PipelineStats, TrainingEvent
from hydra_assets.domain.score_table import none_if_nan

OVERNIGHT = "overnight"


def image_created(entry: Mapping[str, Any], *, path: str, queen_id: int | None, task_id: str | None = None) -> ImageEvent:
    """A manifest entry just written: no scores or decision yet."""
    return ImageEvent(image_id=str(entry["image_id"]), task_id=task_id, queen_id=queen_id, path=path)


def image_decided(
    row: Mapping[str, Any], *, queen_id: int | None, task_id: str | None = None
) -> tuple[EventType, ImageEvent]:
    """A score row after the gate: approved or rejected, its scores (None where there is none, e.g. no face)."""
    approved = bool(row["approved"])
    reason = row.get("rejection_reason")
    payload = ImageEvent(
        image_id=str(row["image_id"]),
        task_id=task_id,
        queen_id=queen_id,
        path=str(row["file_path"]),
        scores=ImageScores(
            aesthetic=none_if_nan(row.get(quality.AESTHETIC)),
            technical=none_if_nan(row.get(quality.TECHNICAL)),
            face_match=none_if_nan(row.get(quality.FACE_MATCH)),
        ),
        approved=approved,
        rejection_reason=None if approved or none_if_nan(reason) is None else str(reason),
    )
    return (EventType.IMAGE_APPROVED if approved else EventType.IMAGE_REJECTED), payload


def night_stats(*, planned: int, generated: int, failed: int, approved: int) -> PipelineStats:
    """A queen × night run's figures: its tasks are the planned images."""
    return PipelineStats(
        total_tasks=planned, completed_tasks=generated, failed_tasks=failed, total_generated=generated, total_approved=approved
    )


def pipeline(
    run_id: str, stage: str, status: str, stats: PipelineStats | None = None, *, name: str = OVERNIGHT
) -> PipelineEvent:
    """``pipelineId`` is the run (the events' correlation id); ``stage`` the asset that emits it."""
    return PipelineEvent(pipeline_id=run_id, pipeline_name=name, stage=stage, status=status, stats=stats)


def lora_training(
    run_id: str, queen_id: int | None, step: int, total_steps: int, *, loss: float | None = None, output_path: str | None = None
) -> TrainingEvent:
    """``jobId`` is the training run."""
    return TrainingEvent(
        job_id=run_id, queen_id=queen_id, model_type="lora", step=step, total_steps=total_steps, loss=loss, output_path=output_path
    )
