"""The HydraEvent envelope and payloads carry exactly the SPEC's camelCase keys; types map to channels."""

from __future__ import annotations

import json
import socket
import uuid
from datetime import datetime, timedelta, timezone
from importlib import metadata

import pytest
from pydantic import ValidationError

from hydra_assets.domain.events import (
    EventType,
    GenerationTaskEvent,
    HydraEvent,
    ImageEvent,
    ImageScores,
    PipelineEvent,
    PipelineStats,
    TrainingEvent,
    channels_for,
    event_metadata,
    payload_type,
)

TASK = GenerationTaskEvent(
    task_id="t-7", queen_id=3, queen_slug="nova-sterling", task_type="expression", status="running",
    progress=0.25, generated=3, approved=2, error="one image failed",
)
IMAGE = ImageEvent(
    image_id="nova-sterling/2026-03-01/portrait-000", task_id="t-7", queen_id=3, path="/s/portrait-000.png",
    scores=ImageScores(aesthetic=6.5, technical=7.0, face_match=0.8), approved=False, rejection_reason="face_match",
)
TRAINING = TrainingEvent(
    job_id="run-1", queen_id=3, model_type="lora", step=50, total_steps=50, loss=0.12, output_path="/l/x.safetensors"
)
PIPELINE = PipelineEvent(
    pipeline_id="run-1", pipeline_name="overnight", stage="generation", status="completed",
    stats=PipelineStats(total_tasks=1, completed_tasks=1, failed_tasks=0, total_generated=12, total_approved=9),
)
PAYLOADS = {
    "generation.task": TASK, "generation.image": IMAGE, "training.lora": TRAINING,
    "pipeline.overnight": PIPELINE, "pipeline.report": PIPELINE,
}

# SPEC "Control plane contracts", key for key.
SPEC_KEYS = {
    GenerationTaskEvent: ({"taskId", "queenId", "queenSlug", "taskType", "status"}, {"progress", "generated", "approved", "error"}),
    ImageEvent: ({"imageId", "taskId", "queenId", "path", "scores", "approved"}, {"rejectionReason"}),
    TrainingEvent: ({"jobId", "queenId", "modelType", "step", "totalSteps"}, {"loss", "outputPath"}),
    PipelineEvent: ({"pipelineId", "pipelineName", "stage", "status"}, {"stats"}),
}
FULL = {GenerationTaskEvent: TASK, ImageEvent: IMAGE, TrainingEvent: TRAINING, PipelineEvent: PIPELINE}
MINIMAL = {
    GenerationTaskEvent: GenerationTaskEvent(task_id="t", queen_id=None, queen_slug="a", task_type="portrait", status="queued"),
    ImageEvent: ImageEvent(image_id="i", task_id=None, queen_id=None, path="p"),
    TrainingEvent: TrainingEvent(job_id="j", queen_id=1, model_type="voice", step=0, total_steps=10),
    PipelineEvent: PipelineEvent(pipeline_id="p", pipeline_name="overnight", stage="s", status="started"),
}
EXPECTED_CHANNELS = {
    "generation.task.created": ("events:generation",),
    "generation.task.started": ("events:generation",),
    "generation.task.progress": ("events:generation", "progress:t-7"),
    "generation.task.completed": ("events:generation",),
    "generation.task.failed": ("events:generation",),
    "generation.image.created": ("events:generation",),
    "generation.image.approved": ("events:generation",),
    "generation.image.rejected": ("events:generation",),
    "training.lora.started": ("events:training",),
    "training.lora.progress": ("events:training",),
    "training.lora.completed": ("events:training",),
    "training.lora.failed": ("events:training",),
    "pipeline.overnight.started": ("events:system",),
    "pipeline.overnight.completed": ("events:system",),
    "pipeline.report.generated": ("events:system",),
}


def envelope(event_type: str = "generation.image.created", payload=IMAGE, **fields) -> HydraEvent:
    return HydraEvent(
        type=event_type, source="generated_images", payload=payload, correlation_id="run-1",
        metadata=event_metadata("local"), **fields,
    )


def test_the_envelope_has_the_spec_keys_and_a_utc_iso_timestamp() -> None:
    document = json.loads(envelope(causation_id="cause-1").to_json())

    assert set(document) == {"id", "type", "source", "timestamp", "payload", "correlationId", "causationId", "metadata"}
    assert set(document["metadata"]) == {"version", "environment", "node"}
    assert uuid.UUID(document["id"]).version == 4
    assert document["type"] == "generation.image.created"
    assert (document["correlationId"], document["causationId"]) == ("run-1", "cause-1")
    stamp = datetime.fromisoformat(document["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)
    assert json.loads(envelope().to_json())["causationId"] is None


def test_metadata_names_the_package_version_the_environment_and_the_node() -> None:
    assert event_metadata("cluster").model_dump() == {
        "version": metadata.version("hydra-assets"), "environment": "cluster", "node": socket.gethostname(),
    }
    assert event_metadata("local", node="hydra-compute-7f9").node == "hydra-compute-7f9"


@pytest.mark.parametrize("model", list(SPEC_KEYS), ids=lambda m: m.__name__)
def test_payload_keys_are_the_spec_names_and_unset_optionals_are_left_out(model) -> None:
    required, optional = SPEC_KEYS[model]
    assert set(FULL[model].model_dump(mode="json", by_alias=True)) == required | optional
    assert set(MINIMAL[model].model_dump(mode="json", by_alias=True)) == required


def test_nested_payload_keys_are_camel_case_too() -> None:
    assert IMAGE.model_dump(by_alias=True)["scores"] == {"aesthetic": 6.5, "technical": 7.0, "faceMatch": 0.8}
    assert PIPELINE.model_dump(by_alias=True)["stats"] == {
        "totalTasks": 1, "completedTasks": 1, "failedTasks": 0, "totalGenerated": 12, "totalApproved": 9,
    }
    unscored = MINIMAL[ImageEvent].model_dump(by_alias=True)
    assert unscored["scores"] == {"aesthetic": None, "technical": None, "faceMatch": None}
    assert unscored["approved"] is None and unscored["taskId"] is None


def test_every_spec_event_type_exists_and_goes_to_its_channel() -> None:
    assert {t.value for t in EventType} == set(EXPECTED_CHANNELS)
    for event_type, channels in EXPECTED_CHANNELS.items():
        payload = PAYLOADS[event_type.rsplit(".", 1)[0]]
        assert channels_for(event_type, payload) == channels, event_type
        assert envelope(event_type, payload).channels == channels


def test_json_round_trip_gives_back_the_typed_payload() -> None:
    for event_type in EventType:
        event = envelope(event_type.value, PAYLOADS[event_type.value.rsplit(".", 1)[0]], causation_id="c")
        again = HydraEvent.from_json(event.to_json())
        assert again == event
        assert type(again.payload) is payload_type(event_type)


def test_a_dashboards_camel_case_document_parses() -> None:
    document = {
        "id": str(uuid.uuid4()), "type": "training.lora.progress", "source": "queen_lora",
        "timestamp": "2026-03-01T22:15:00Z", "correlationId": "run-9", "causationId": None,
        "metadata": {"version": "0.1.0", "environment": "cluster", "node": "pod-1"},
        "payload": {"jobId": "run-9", "queenId": 4, "modelType": "lora", "step": 10, "totalSteps": 50, "loss": 0.3},
    }
    event = HydraEvent.model_validate(document)
    assert event.payload == TrainingEvent(job_id="run-9", queen_id=4, model_type="lora", step=10, total_steps=50, loss=0.3)
    assert event.to_dict()["payload"] == document["payload"]


@pytest.mark.parametrize(
    ("event_type", "payload", "reason"),
    [
        ("training.lora.started", IMAGE, "carries TrainingEvent, not ImageEvent"),
        ("generation.image.approved", TASK, "carries ImageEvent, not GenerationTaskEvent"),
        ("generation.image.deleted", IMAGE, "generation.image.deleted"),
    ],
)
def test_a_payload_of_the_wrong_kind_or_an_unknown_type_is_refused(event_type, payload, reason) -> None:
    with pytest.raises(ValidationError, match=reason):
        envelope(event_type, payload)


def test_bad_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        envelope(timestamp=datetime(2026, 3, 1, 22, 0))
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        GenerationTaskEvent(task_id="t", queen_id=1, queen_slug="a", task_type="portrait", status="running", progress=12)
    with pytest.raises(ValidationError, match="modelType|model_type"):
        TrainingEvent(job_id="j", queen_id=1, model_type="checkpoint", step=0, total_steps=1)
    with pytest.raises(ValidationError, match="status"):
        PipelineEvent(pipeline_id="p", pipeline_name="overnight", stage="s", status="paused")
    with pytest.raises(ValidationError, match="extra"):
        ImageEvent.model_validate({"imageId": "i", "taskId": None, "queenId": 1, "path": "p", "score": 3})


def test_a_timestamp_in_another_zone_is_stored_as_utc() -> None:
    event = envelope(timestamp=datetime(2026, 3, 1, 23, 0, tzinfo=timezone(timedelta(hours=1))))
    assert event.to_dict()["timestamp"] == "2026-03-01T22:00:00Z"


def test_a_score_row_becomes_its_decision_event_with_missing_scores_as_null() -> None:
    from hydra_assets.domain.stage_events import image_decided

    row = {
        "image_id": "nova/2026-03-01/pose-000", "file_path": "overnight/2026-03-01/generated/nova/pose/0.png",
        "aesthetic_score": 6.1, "technical_score": 80.0, "face_match_score": float("nan"),
        "approved": False, "rejection_reason": "no_face",
    }
    event_type, payload = image_decided(row, queen_id=3)
    assert event_type is EventType.IMAGE_REJECTED
    assert payload.model_dump(mode="json", by_alias=True) == {
        "imageId": "nova/2026-03-01/pose-000", "taskId": None, "queenId": 3,
        "path": "overnight/2026-03-01/generated/nova/pose/0.png",
        "scores": {"aesthetic": 6.1, "technical": 80.0, "faceMatch": None}, "approved": False, "rejectionReason": "no_face",
    }
    event_type, payload = image_decided({**row, "approved": True, "rejection_reason": None, "face_match_score": 0.9}, queen_id=3)
    assert event_type is EventType.IMAGE_APPROVED and "rejectionReason" not in payload.model_dump(by_alias=True)
