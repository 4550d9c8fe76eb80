"""The HydraEvent envelope and its payloads (SPEC "Control plane contracts"), without Dagster.

The studio's dashboards read these as JSON with camelCase keys, from the catalog's ``events``
table and from Redis channels. The models are pydantic with camelCase aliases; Python code
uses the snake_case names. Optional payload fields (``?`` in the SPEC) are left out of the
JSON when unset; every other key is always present (``null`` where it has no value).
"""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from importlib import metadata as importlib_metadata
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator
from pydantic.alias_generators import to_camel

PACKAGE = "hydra-assets"


class EventType(StrEnum):
    TASK_CREATED = "generation.task.created"
    TASK_STARTED = "generation.task.started"
    TASK_PROGRESS = "generation.task.progress"
    TASK_COMPLETED = "generation.task.completed"
    TASK_FAILED = "generation.task.failed"
    IMAGE_CREATED = "generation.image.created"
    IMAGE_APPROVED = "generation.image.approved"
    IMAGE_REJECTED = "generation.image.rejected"
    LORA_STARTED = "training.lora.started"
    LORA_PROGRESS = "training.lora.progress"
    LORA_COMPLETED = "training.lora.completed"
    LORA_FAILED = "training.lora.failed"
    OVERNIGHT_STARTED = "pipeline.overnight.started"
    OVERNIGHT_COMPLETED = "pipeline.overnight.completed"
    REPORT_GENERATED = "pipeline.report.generated"


class Channel(StrEnum):
    GENERATION = "events:generation"
    TRAINING = "events:training"
    SYSTEM = "events:system"


PROGRESS_CHANNEL = "progress:{task_id}"
"""A task's own channel: its progress events, for a page that follows one task."""


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")


class Payload(_Camel):
    """A payload: ``OPTIONAL`` names the SPEC's ``?`` fields, omitted from the JSON when None."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_unset_optionals(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name in self.OPTIONAL:
            field = type(self).model_fields[name]
            key = field.alias or name
            for candidate in (key, name):
                if candidate in data and data[candidate] is None:
                    del data[candidate]
        return data


TaskStatus = Literal["queued", "assigned", "running", "quality_check", "completed", "failed", "cancelled"]


class GenerationTaskEvent(Payload):
    OPTIONAL = frozenset({"progress", "generated", "approved", "error"})

    task_id: str
    queen_id: int | None = Field(description="the catalog's queens.id; None while the catalog has no row for her")
    queen_slug: str
    task_type: str
    status: TaskStatus
    progress: float | None = Field(default=None, ge=0.0, le=1.0, description="fraction done, 0..1")
    generated: int | None = Field(default=None, ge=0)
    approved: int | None = Field(default=None, ge=0)
    error: str | None = None


class ImageScores(_Camel):
    aesthetic: float | None = None
    technical: float | None = None
    face_match: float | None = None


class ImageEvent(Payload):
    OPTIONAL = frozenset({"rejection_reason"})

    image_id: str
    task_id: str | None = Field(description="the generation task that asked for it; None for the nightly targets")
    queen_id: int | None
    path: str
    scores: ImageScores = Field(default_factory=ImageScores, description="all None until the image is scored")
    approved: bool | None = Field(default=None, description="None until the gate has decided")
    rejection_reason: str | None = None


class TrainingEvent(Payload):
    OPTIONAL = frozenset({"loss", "output_path"})

    job_id: str
    queen_id: int | None
    model_type: Literal["lora", "voice", "embedding"]
    step: int = Field(ge=0)
    total_steps: int = Field(ge=0)
    loss: float | None = None
    output_path: str | None = None


class PipelineStats(_Camel):
    total_tasks: int = Field(ge=0)
    completed_tasks: int = Field(ge=0)
    failed_tasks: int = Field(ge=0)
    total_generated: int = Field(ge=0)
    total_approved: int = Field(ge=0)


class PipelineEvent(Payload):
    OPTIONAL = frozenset({"stats"})

    pipeline_id: str
    pipeline_name: str
    stage: str
    status: Literal["started", "completed", "failed"]
    stats: PipelineStats | None = None


AnyPayload = GenerationTaskEvent | ImageEvent | TrainingEvent | PipelineEvent

PAYLOAD_TYPES: dict[str, type[Payload]] = {"generation.task": GenerationTaskEvent, "generation.image": ImageEvent}
PAYLOAD_TYPES.update({"training.lora": TrainingEvent, "pipeline.overnight": PipelineEvent, "pipeline.report": PipelineEvent})
"""Event type family (the type without its last part) -> the payload model it carries."""

CHANNELS: dict[str, Channel] = {"generation": Channel.GENERATION, "training": Channel.TRAINING, "pipeline": Channel.SYSTEM}
"""The type's first part -> the Redis channel every event of it is published on."""


def payload_type(event_type: EventType | str) -> type[Payload]:
    return PAYLOAD_TYPES[EventType(event_type).rsplit(".", 1)[0]]


class EventMetadata(_Camel):
    version: str
    environment: str
    node: str


@cache
def package_version() -> str:
    """This package's installed version; ``0+unknown`` when run from a source tree that is not installed."""
    try:
        return importlib_metadata.version(PACKAGE)
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def event_metadata(environment: str, node: str | None = None) -> EventMetadata:
    """``node``: the host (on the cluster the pod's hostname is its name) unless given."""
    return EventMetadata(version=package_version(), environment=environment, node=node or socket.gethostname())


class HydraEvent(_Camel):
    """The envelope. ``correlation_id`` is the Dagster run; ``causation_id`` the event (or run) that caused it."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: EventType
    source: str = Field(min_length=1)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    payload: AnyPayload
    correlation_id: str = Field(min_length=1)
    causation_id: str | None = None
    metadata: EventMetadata

    @model_validator(mode="before")
    @classmethod
    def _payload_for_type(cls, data: Any) -> Any:
        """Parse a payload given as a mapping with the model its type names, so JSON round-trips typed."""
        if isinstance(data, dict):
            event_type = data.get("type")
            payload = data.get("payload")
            if isinstance(payload, dict) and event_type in EventType._value2member_map_:
                data = {**data, "payload": payload_type(event_type).model_validate(payload)}
        return data

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must carry its time zone (UTC)")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _payload_matches_type(self) -> HydraEvent:
        expected = payload_type(self.type)
        if not isinstance(self.payload, expected):
            raise ValueError(f"{self.type} carries {expected.__name__}, not {type(self.payload).__name__}")
        return self

    @property
    def channels(self) -> tuple[str, ...]:
        return channels_for(self.type, self.payload)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> HydraEvent:
        return cls.model_validate_json(text)


def channels_for(event_type: EventType | str, payload: Payload) -> tuple[str, ...]:
    """Its family's channel; a task's progress also goes to ``progress:{taskId}``."""
    event_type = EventType(event_type)
    channels: tuple[str, ...] = (CHANNELS[event_type.split(".", 1)[0]].value,)
    if event_type is EventType.TASK_PROGRESS and isinstance(payload, GenerationTaskEvent):
        channels += (PROGRESS_CHANNEL.format(task_id=payload.task_id),)
    return channels
