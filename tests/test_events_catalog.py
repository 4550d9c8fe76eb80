"""Events land in the catalog's ``events`` table (SQLite and PostgreSQL); a failing catalog never fails a step."""

import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import pytest
import sqlalchemy as sa

from hydra_assets.domain.events import EventType, ImageEvent, ImageScores, PipelineEvent, TrainingEvent
from resources.catalog import CatalogResource
from resources.events import EventPublisher, EventRow

LOG = logging.getLogger("test_events")
SPEC_COLUMNS = {"id", "event_type", "source", "payload", "correlation_id", "causation_id", "metadata", "created_at"}


def image(index: int, **fields) -> ImageEvent:
    return ImageEvent(image_id=f"nova/2026-03-01/portrait-{index:03d}", task_id=None, queen_id=1, path=f"/s/{index}.png", **fields)


OVERNIGHT = PipelineEvent(pipeline_id="run-1", pipeline_name="overnight", stage="generation", status="started")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh' / 'catalog.db'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture
def publisher(catalog_url: str) -> Iterator[EventPublisher]:
    resource = EventPublisher(catalog_url=catalog_url, environment="local", node="test-node")
    yield resource
    resource.dispose()


def raw_rows(url: str) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(sa.text("select * from events order by created_at"))]
    finally:
        engine.dispose()


def test_rows_have_the_spec_columns_and_the_envelope_in_them(publisher: EventPublisher, catalog_url: str) -> None:
    stream = publisher.stream(correlation_id="run-1", source="generated_images", log=LOG)
    started = stream.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)
    created = stream.emit_many([(EventType.IMAGE_CREATED, image(i)) for i in range(3)])
    scored = image(0, scores=ImageScores(aesthetic=6.0, technical=7.5, face_match=0.9), approved=True)
    approved = stream.emit(EventType.IMAGE_APPROVED, scored, causation_id=str(created[0].id))

    rows = raw_rows(catalog_url)
    assert set(rows[0]) == SPEC_COLUMNS
    assert [r["event_type"] for r in rows] == ["pipeline.overnight.started", *["generation.image.created"] * 3, "generation.image.approved"]
    assert {r["correlation_id"] for r in rows} == {"run-1"} and {r["source"] for r in rows} == {"generated_images"}
    last = rows[-1]
    assert uuid.UUID(str(last["id"])) == approved.id
    assert last["causation_id"] == str(created[0].id) and rows[0]["causation_id"] is None
    stored = publisher.read(correlation_id="run-1")
    assert stored == [started, *created, approved]
    assert stored[-1].to_dict()["payload"]["scores"] == {"aesthetic": 6.0, "technical": 7.5, "faceMatch": 0.9}
    assert stored[-1].metadata.model_dump() == {"version": approved.metadata.version, "environment": "local", "node": "test-node"}
    assert stored[0].timestamp.tzinfo is not None
    assert stream.stats.as_metadata() == {
        "events_emitted": 5, "events_written": 5, "events_published": 0,
        "events_redis_failures": 0, "events_catalog_failures": 0,
    }


def test_read_filters_by_run_and_type_and_keeps_the_order_of_a_batch(publisher: EventPublisher) -> None:
    first = publisher.stream(correlation_id="run-a", source="s", log=LOG)
    other = publisher.stream(correlation_id="run-b", source="s", log=LOG)
    batch = first.emit_many([(EventType.IMAGE_CREATED, image(i)) for i in range(40)])
    other.emit(EventType.LORA_STARTED, TrainingEvent(job_id="run-b", queen_id=1, model_type="lora", step=0, total_steps=5))
    first.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)

    assert [e.id for e in publisher.read(correlation_id="run-a", types=[EventType.IMAGE_CREATED])] == [e.id for e in batch]
    assert [e.type for e in publisher.read(types=["training.lora.started", "pipeline.overnight.started"])] == [
        EventType.LORA_STARTED, EventType.OVERNIGHT_STARTED,
    ]
    assert len({e.timestamp for e in batch}) == 40, "a stream's timestamps strictly increase"


def test_a_batch_is_one_transaction(publisher: EventPublisher, catalog_url: str, caplog) -> None:
    stream = publisher.stream(correlation_id="run-1", source="s", log=LOG)
    good = stream.event(EventType.IMAGE_CREATED, image(1))
    stream.emit_many([good])
    # The same id again makes the whole second batch fail; its new event must not be written alone.
    fresh = stream.event(EventType.IMAGE_CREATED, image(2))
    with caplog.at_level(logging.WARNING, logger="test_events"):
        stream.emit_many([fresh, good])
        stream.emit_many([good])
    assert [uuid.UUID(str(r["id"])) for r in raw_rows(catalog_url)] == [good.id]
    assert (stream.stats.written, stream.stats.catalog_failures, stream.stats.emitted) == (1, 3, 4)
    assert len([r for r in caplog.records if "not written to the catalog" in r.message]) == 1


def test_an_unreachable_catalog_is_logged_once_and_counted_never_raised(caplog) -> None:
    publisher = EventPublisher(catalog_url="postgresql://postgres:s3cret@127.0.0.1:1/catalog")
    stream = publisher.stream(correlation_id="run-1", source="s", log=LOG)
    with caplog.at_level(logging.WARNING, logger="test_events"):
        stream.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)
        stream.emit_many([(EventType.IMAGE_CREATED, image(i)) for i in range(4)])
    warnings = [r.message for r in caplog.records if r.name == "test_events"]
    assert len(warnings) == 1
    assert "postgresql://postgres:***@127.0.0.1:1/catalog" in warnings[0] and "s3cret" not in warnings[0]
    assert (stream.stats.emitted, stream.stats.written, stream.stats.catalog_failures) == (5, 0, 5)


def test_a_locked_catalog_costs_the_lock_timeout_and_is_counted(tmp_path, caplog) -> None:
    path = tmp_path / "catalog.db"
    publisher = EventPublisher(catalog_url=f"sqlite:///{path}", lock_timeout_seconds=0.3)
    stream = publisher.stream(correlation_id="run-1", source="s", log=LOG)
    stream.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="test_events"):
            stream.emit_many([(EventType.IMAGE_CREATED, image(i)) for i in range(3)])
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert elapsed < 3
    assert (stream.stats.written, stream.stats.catalog_failures) == (1, 3)
    assert any("events not written to the catalog" in r.message and "lock timeout" in r.message for r in caplog.records)
    stream.emit(EventType.IMAGE_CREATED, image(9))  # the lock is gone: rows are written again
    assert len(publisher.read()) == 2
    publisher.dispose()


def test_the_table_is_created_with_the_catalogs_tables(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = CatalogResource(url=url)
    with catalog.session():
        pass
    catalog.dispose()
    engine = sa.create_engine(url)
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {"queens", "generated_assets", EventRow.__tablename__} <= tables


@dg.asset
def night_events(context: dg.AssetExecutionContext, events: EventPublisher) -> dg.MaterializeResult:
    stream = events.for_step(context)
    stream.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)
    stream.emit_many([(EventType.IMAGE_CREATED, image(i)) for i in range(2)])
    return dg.MaterializeResult(metadata=stream.metadata())


def test_a_step_stream_carries_the_run_id_and_its_counts_reach_the_metadata(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    publisher = EventPublisher(catalog_url=url, environment="local")
    with dg.instance_for_test() as instance:
        result = dg.materialize([night_events], resources={"events": publisher}, instance=instance)
    assert result.success
    stored = EventPublisher(catalog_url=url).read()
    assert [e.type.value for e in stored] == ["pipeline.overnight.started", "generation.image.created", "generation.image.created"]
    assert {e.correlation_id for e in stored} == {result.run_id}
    assert {e.source for e in stored} == {"night_events"}
    metadata = result.asset_materializations_for_node("night_events")[0].metadata
    assert metadata["events_written"].value == 3 and metadata["events_catalog_failures"].value == 0


def test_created_at_is_the_events_timestamp_in_utc(publisher: EventPublisher, catalog_url: str) -> None:
    stream = publisher.stream(correlation_id="run-1", source="s", log=LOG)
    event = stream.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)
    (stored,) = publisher.read()
    assert stored.timestamp == event.timestamp
    assert abs((datetime.now(UTC) - stored.timestamp).total_seconds()) < 60
