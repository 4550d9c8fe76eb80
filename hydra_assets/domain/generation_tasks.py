"""The generation queue, its rules: what a task may ask for, its status ladder, its retries, its images.

A task (SPEC "Control plane contracts", ``generation_tasks``) asks for images beyond the
nightly targets: "12 expressions of nova-sterling, this prompt addition, priority high". The
same rules refuse a bad request at creation (``hydra request``) and a bad row the control
plane inserted directly (the sensor fails it with ``last_error``). A task's images are extra
slots in the queen × night partition it ran in; their ids carry ``T{task id}``, which no
nightly id can (asset types are lower case), and their params carry ``task_id``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hydra_assets.domain.night_plan import (
    DEFAULT_ASSET_TYPES,
    GenerationRequest,
    image_file,
    image_seed,
    params_hash,
)
from hydra_assets.domain.roster import is_valid_slug
from hydra_assets.domain.workloads import PRIORITIES

TASK_TYPE = "image_generation"
"""The only task type the pipeline runs (the seed's n8n flow queues image generation)."""
STATUSES = ("queued", "assigned", "running", "quality_check", "completed", "failed", "cancelled")
ACTIVE_STATUSES = ("assigned", "running", "quality_check")
FINAL_STATUSES = ("completed", "failed", "cancelled")
MIN_COUNT, MAX_COUNT = 1, 200
"""Images per task: at least one, at most a whole night's worth of extra work (SPEC budget 48 x 4)."""
PROMPT_ADDITION_MAX = 500
DEFAULT_MAX_RETRIES = 3
RETRY_BASE_SECONDS, RETRY_CAP_SECONDS = 10, 300
TASK_ID_PART = re.compile(r"-T(\d+)-")
"""Slugs, nights and asset types are lower case or digits: only a task image's id has this."""


class TaskRequestError(ValueError):
    """A request the queue refuses; names the field and the rule."""

    def __init__(self, field_name: str, rule: str):
        self.field = field_name
        self.rule = rule
        super().__init__(f"generation task {field_name}: {rule}")


class TaskConfig(BaseModel):
    """The task's ``config`` JSON: what to add to the prompt, optional sampling overrides.

    The override ranges are generated_images' GenerationConfig ranges, so a task can never ask
    for what a run config would refuse.
    """

    model_config = ConfigDict(extra="forbid")

    asset_type: str = Field(description="one of the configured image types (portrait, expression, pose)")
    count: int = Field(ge=MIN_COUNT, le=MAX_COUNT)
    prompt_addition: str = Field(default="", max_length=PROMPT_ADDITION_MAX)
    steps: int | None = Field(default=None, ge=1, le=200)
    cfg: float | None = Field(default=None, ge=0.0, le=30.0)
    sampler: str | None = Field(default=None, min_length=1, max_length=64)
    scheduler: str | None = Field(default=None, min_length=1, max_length=64)
    width: int | None = Field(default=None, ge=64, le=4096, multiple_of=8)
    height: int | None = Field(default=None, ge=64, le=4096, multiple_of=8)

    @field_validator("prompt_addition", "sampler", "scheduler")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 and c not in "\t\n" for c in value):
            raise ValueError("must not contain NUL or other control characters")
        return value.strip() if value is not None else None

    def sampling_overrides(self) -> dict[str, Any]:
        """The GenerationConfig fields this task sets (the run config of its generated_images)."""
        fields = ("steps", "cfg", "sampler", "scheduler", "width", "height")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


@dataclass(frozen=True)
class TaskRequest:
    """A request that passed every rule: what the catalog row holds."""

    queen: str
    priority: str
    config: TaskConfig
    created_by: str
    task_type: str = TASK_TYPE


def validate_request(
    *,
    queen: str,
    roster_slugs: Sequence[str],
    config: Mapping[str, Any],
    priority: str = "normal",
    task_type: str = TASK_TYPE,
    created_by: str = "cli",
    asset_types: Sequence[str] = DEFAULT_ASSET_TYPES,
) -> TaskRequest:
    """The request, checked; raises :class:`TaskRequestError` on the first broken rule."""
    if task_type != TASK_TYPE:
        raise TaskRequestError("task_type", f"must be {TASK_TYPE!r} (got {task_type!r})")
    if not isinstance(queen, str) or not is_valid_slug(queen):
        raise TaskRequestError("queen", f"{queen!r} is not a valid slug")
    if queen not in roster_slugs:
        raise TaskRequestError("queen", f"no roster file for {queen!r} (known: {', '.join(sorted(roster_slugs)) or 'none'})")
    if priority not in PRIORITIES:
        raise TaskRequestError("priority", f"must be one of {', '.join(PRIORITIES)} (got {priority!r})")
    if not isinstance(config, Mapping):
        raise TaskRequestError("config", f"must be a JSON object (got {type(config).__name__})")
    try:
        checked = TaskConfig.model_validate(dict(config))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "(config)"
        rule = "is not a known field" if error["type"] == "extra_forbidden" else error["msg"]
        if "input" in error and not isinstance(error["input"], (dict, list)) and error["type"] != "missing":
            rule += f" (got {str(error['input'])[:60]!r})"
        raise TaskRequestError(f"config.{where}", rule) from exc
    if checked.asset_type not in asset_types:
        raise TaskRequestError(
            "config.asset_type", f"must be one of the configured types {', '.join(asset_types)} (got {checked.asset_type!r})"
        )
    if not created_by or len(created_by) > 100 or "\x00" in created_by:
        raise TaskRequestError("created_by", "must be 1-100 characters without NUL")
    return TaskRequest(queen=queen, priority=priority, config=checked, created_by=created_by, task_type=task_type)


def run_priority(priority: str) -> int:
    """SPEC run priority of a task (critical 1000 … idle 0); an unknown name is normal's."""
    return PRIORITIES.get(priority, PRIORITIES["normal"])


def retry_delay_seconds(attempt: int) -> int:
    """The SPEC back-off before attempt ``attempt + 1``: min(10 · 2^attempt, 300) seconds."""
    return min(RETRY_BASE_SECONDS * 2 ** max(0, attempt), RETRY_CAP_SECONDS)


# --- the task's images ---------------------------------------------------------------------


def task_image_id(queen: str, night: str, task_id: int, asset_type: str, index: int) -> str:
    return f"{queen}-{night}-T{task_id}-{asset_type}-{index:03d}"


def task_of_image(image_id: str) -> int | None:
    """The task an image of the partition was made for; None for a nightly image."""
    match = TASK_ID_PART.search(image_id)
    return int(match.group(1)) if match else None


def task_plan(plan: Sequence[GenerationRequest], task_id: int, prompt_addition: str) -> list[GenerationRequest]:
    """A nightly-style plan turned into the task's slots: own ids and seeds, the addition in
    the prompt, ``task_id`` in the params (so in the PNG, the manifest and the catalog)."""
    planned = []
    for request in plan:
        slot = task_image_id(request.queen, request.night, task_id, request.asset_type, request.index)
        seed = image_seed(request.queen, f"{request.night}/T{task_id}", request.asset_type, request.index)
        prompt = ", ".join(p for p in (request.prompt, prompt_addition) if p)
        params = {**request.params, "prompt": prompt, "seed": seed, "task_id": task_id, "prompt_addition": prompt_addition}
        digest = params_hash(params)
        planned.append(
            replace(request, image_id=slot, seed=seed, params=params, params_hash=digest,
                    file=image_file(request.asset_type, slot, digest))
        )
    return planned


def split_by_task(entries: Sequence[Mapping[str, Any]], task_id: int | None) -> tuple[list, list]:
    """(entries of this run's scope, the others): a task run keeps the nightly images and other
    tasks' as they are, and the nightly run keeps every task's."""
    mine, others = [], []
    for entry in entries:
        owner = task_of_image(str(entry.get("image_id", "")))
        (mine if owner == task_id else others).append(entry)
    return mine, others


def scoped_manifest(
    previous: Mapping[str, Any] | None, header: Mapping[str, Any], task_id: int | None
) -> tuple[dict[str, Any] | None, dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """(the previous manifest as this run's scope sees it, what it carries over, its header).

    The header keeps the nightly ``planned`` counts through a task's run and lists every
    task's own under ``tasks``, so neither kind of run hides the other's plan.
    """
    header = dict(header)
    if not previous:
        if task_id is not None:
            header["tasks"], header["planned"] = {str(task_id): header.get("planned", {})}, {}
        return None, {}, header
    scoped: dict[str, Any] = dict(previous)
    carried: dict[str, list[dict[str, Any]]] = {}
    for part in ("images", "failed", "superseded"):
        scoped[part], carried[part] = split_by_task(previous.get(part) or [], task_id)
    planned_tasks = dict(previous.get("tasks") or {})
    if task_id is not None:
        planned_tasks[str(task_id)] = header.get("planned", {})
        header["planned"] = previous.get("planned", {})
    if planned_tasks:
        header["tasks"] = planned_tasks
    return scoped, carried, header
