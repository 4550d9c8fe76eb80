"""Events on a real redis-server: subscribers get them in order; Redis going away loses no row and fails nothing."""

import logging
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from hydra_assets.domain.events import (
    EventType,
    GenerationTaskEvent,
    HydraEvent,
    ImageEvent,
    PipelineEvent,
    TrainingEvent,
)
from resources.events import EventPublisher
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture

LOG = logging.getLogger("test_events_redis")
CHANNELS = ("events:generation", "events:training", "events:system", "progress:t-1")


def image(index: int) -> ImageEvent:
    return ImageEvent(image_id=f"nova/2026-03-01/portrait-{index:03d}", task_id="t-1", queen_id=1, path=f"/s/{index}.png")


def progress(done: int) -> GenerationTaskEvent:
    return GenerationTaskEvent(
        task_id="t-1", queen_id=1, queen_slug="nova", task_type="portrait", status="running", progress=done / 4, generated=done
    )


def lora(step: int) -> TrainingEvent:
    return TrainingEvent(job_id="run-1", queen_id=1, model_type="lora", step=step, total_steps=20, loss=1 / (step + 1))


OVERNIGHT = PipelineEvent(pipeline_id="run-1", pipeline_name="overnight", stage="generation", status="started")


class Subscriber:
    def __init__(self, server: RedisServer) -> None:
        self.client = server.client()
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(*CHANNELS)
        confirmed = 0
        while confirmed < len(CHANNELS):
            message = self.pubsub.get_message(timeout=5)
            assert message is not None, "no subscribe confirmation"
            confirmed += message["type"] == "subscribe"

    def receive(self, count: int, timeout: float = 5.0) -> list[tuple[str, HydraEvent]]:
        received: list[tuple[str, HydraEvent]] = []
        deadline = time.monotonic() + timeout
        while len(received) < count and time.monotonic() < deadline:
            message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                received.append((message["channel"].decode(), HydraEvent.from_json(message["data"])))
        return received

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def subscriber(redis_server: RedisServer) -> Iterator[Subscriber]:  # noqa: F811
    listening = Subscriber(redis_server)
    yield listening
    listening.close()


def publisher_for(server: RedisServer, tmp_path, **fields) -> EventPublisher:
    return EventPublisher(catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}", redis_url=server.url, environment="cluster", **fields)


def by_channel(received: list[tuple[str, HydraEvent]]) -> dict[str, list[HydraEvent]]:
    channels: dict[str, list[HydraEvent]] = {}
    for channel, event in received:
        channels.setdefault(channel, []).append(event)
    return channels


def test_a_subscriber_receives_every_event_in_order_on_its_channels(redis_server, subscriber, tmp_path) -> None:  # noqa: F811
    publisher = publisher_for(redis_server, tmp_path)
    stream = publisher.stream(correlation_id="run-1", source="overnight", log=LOG)
    emitted = [stream.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)]
    emitted += stream.emit_many([(EventType.IMAGE_CREATED, image(i)) for i in range(5)])
    for done in range(1, 4):
        emitted.append(stream.emit(EventType.TASK_PROGRESS, progress(done)))
    emitted += stream.emit_many([(EventType.LORA_PROGRESS, lora(step)) for step in range(0, 20, 5)])

    received = by_channel(subscriber.receive(len(emitted) + 3))
    assert received["events:system"] == emitted[:1]
    assert received["events:generation"] == emitted[1:9]
    assert received["progress:t-1"] == emitted[6:9]
    assert received["events:training"] == emitted[9:]
    assert received["events:generation"][0].metadata.environment == "cluster"
    assert (stream.stats.published, stream.stats.redis_failures) == (len(emitted), 0)
    assert publisher.read(correlation_id="run-1") == emitted
    publisher.dispose()


def test_redis_stopped_mid_run_loses_no_row_fails_nothing_and_is_logged_once(
    redis_server, subscriber, tmp_path, caplog  # noqa: F811
) -> None:
    publisher = publisher_for(redis_server, tmp_path, redis_retry_after_s=0)
    stream = publisher.stream(correlation_id="run-1", source="generated_images", log=LOG)
    before = stream.emit_many([(EventType.IMAGE_CREATED, image(i)) for i in range(3)])
    assert [e for _, e in subscriber.receive(3)] == before

    redis_server.stop()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="test_events_redis"):
        during = [stream.emit(EventType.IMAGE_CREATED, image(i)) for i in range(3, 8)]
        during += stream.emit_many([(EventType.IMAGE_CREATED, image(i)) for i in range(8, 18)])
    assert time.monotonic() - started < 5, "a refused connection must not wait"
    warnings = [r.message for r in caplog.records if r.name == "test_events_redis"]
    assert len(warnings) == 1 and redis_server.url in warnings[0] and "still written to the catalog" in warnings[0]

    redis_server.start()
    subscriber.close()
    listening = Subscriber(redis_server)
    after = stream.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)
    assert [e for _, e in listening.receive(1)] == [after]
    listening.close()

    assert publisher.read(correlation_id="run-1") == [*before, *during, after]
    assert stream.stats.as_metadata() == {
        "events_emitted": 19, "events_written": 19, "events_published": 4,
        "events_redis_failures": 15, "events_catalog_failures": 0,
    }
    publisher.dispose()


def test_after_a_failure_redis_is_skipped_for_a_while_and_counted(redis_server, tmp_path) -> None:  # noqa: F811
    publisher = publisher_for(redis_server, tmp_path, redis_retry_after_s=60)
    stream = publisher.stream(correlation_id="run-1", source="s", log=LOG)
    redis_server.stop()
    stream.emit(EventType.IMAGE_CREATED, image(0))
    redis_server.start()
    stream.emit_many([(EventType.IMAGE_CREATED, image(i)) for i in range(1, 4)])
    assert (stream.stats.published, stream.stats.redis_failures, stream.stats.written) == (0, 4, 4)
    # A new step (stream) tries again at once.
    fresh = publisher.stream(correlation_id="run-1", source="s", log=LOG)
    fresh.emit(EventType.IMAGE_CREATED, image(4))
    assert (fresh.stats.published, fresh.stats.redis_failures) == (1, 0)
    publisher.dispose()


def test_a_redis_that_never_answers_costs_one_timeout_not_one_per_event(tmp_path, caplog) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel accepts connections; nobody ever reads or answers
    host, port = silent.getsockname()
    publisher = EventPublisher(
        catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}", redis_url=f"redis://:s3cret@{host}:{port}/0", socket_timeout_s=0.3
    )
    stream = publisher.stream(correlation_id="run-1", source="s", log=LOG)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="test_events_redis"):
        for i in range(20):
            stream.emit(EventType.IMAGE_CREATED, image(i))
    elapsed = time.monotonic() - started
    silent.close()
    assert elapsed < 3, f"20 events against a silent Redis took {elapsed:.1f} s"
    assert (stream.stats.written, stream.stats.published, stream.stats.redis_failures) == (20, 0, 20)
    (warning,) = [r.message for r in caplog.records if r.name == "test_events_redis"]
    assert f"redis://:***@{host}:{port}/0" in warning and "s3cret" not in warning
    publisher.dispose()


def test_the_catalog_down_still_publishes(redis_server, subscriber) -> None:  # noqa: F811
    publisher = EventPublisher(catalog_url="postgresql://postgres@127.0.0.1:1/catalog", redis_url=redis_server.url)
    stream = publisher.stream(correlation_id="run-1", source="s", log=LOG)
    event = stream.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)
    assert [e for _, e in subscriber.receive(1)] == [event]
    assert (stream.stats.catalog_failures, stream.stats.published) == (1, 1)
    publisher.dispose()


def test_no_redis_url_means_catalog_only(tmp_path) -> None:
    publisher = EventPublisher(catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}")
    stream = publisher.stream(correlation_id="run-1", source="s", log=LOG)
    stream.emit(EventType.OVERNIGHT_STARTED, OVERNIGHT)
    assert publisher.redis_client() is None
    assert (stream.stats.written, stream.stats.published, stream.stats.redis_failures) == (1, 0, 0)
    with pytest.raises(redis.ConnectionError):
        EventPublisher(catalog_url="sqlite://", redis_url="redis://127.0.0.1:1/0").publish([stream.event("pipeline.overnight.started", OVERNIGHT)])
