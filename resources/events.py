"""Events: every HydraEvent goes to the catalog's ``events`` table and, on the cluster, to Redis.

The table is the record; Redis is the live feed the dashboards subscribe to. Emission never
fails a step: a Redis or catalog failure is logged once per step and counted in the step's
``EmissionStats``, which the asset puts in its metadata. A batch of events is one catalog
transaction and one Redis round trip, so a night's hundreds of image events cost little.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import alembic.util
import dagster as dg
import redis
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from redis.backoff import NoBackoff
from redis.retry import Retry

from hydra_assets.domain.events import EventMetadata, EventType, HydraEvent, Payload, event_metadata
from resources.catalog import CatalogResource
from resources.catalog_schema import EventRow

_TICK = timedelta(microseconds=1)
_CATALOG_ERRORS = (sa.exc.SQLAlchemyError, OSError, ValueError, alembic.util.CommandError)
"""What reaching, migrating or writing the catalog raises (OSError covers its unavailable and timeout errors)."""


def _row(event: HydraEvent) -> dict[str, Any]:
    document = event.to_dict()
    return {
        "id": event.id,
        "event_type": event.type.value,
        "source": event.source,
        "payload": document["payload"],
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "metadata": document["metadata"],
        "created_at": event.timestamp,
    }


def _event(row: EventRow) -> HydraEvent:
    return HydraEvent.model_validate(
        {
            "id": row.id,
            "type": row.event_type,
            "source": row.source,
            "timestamp": row.created_at,
            "payload": row.payload,
            "correlationId": row.correlation_id,
            "causationId": row.causation_id,
            "metadata": row.metadata_,
        }
    )


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for log lines (SQLAlchemy's URL parser, any scheme)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"


@dataclass
class EmissionStats:
    """What one step's emission did; ``published`` counts events, not channel messages."""

    emitted: int = 0
    written: int = 0
    published: int = 0
    redis_failures: int = 0
    catalog_failures: int = 0

    def as_metadata(self) -> dict[str, int]:
        return {
            "events_emitted": self.emitted,
            "events_written": self.written,
            "events_published": self.published,
            "events_redis_failures": self.redis_failures,
            "events_catalog_failures": self.catalog_failures,
        }


class EventPublisher(dg.ConfigurableResource):
    """Writes events to the catalog and, when ``redis_url`` is set, publishes them on their channels.

    Use one ``EventStream`` per step (``for_step``): it carries the run's correlation id, counts,
    and logs each kind of failure once.
    """

    catalog_url: str = Field(description="the catalog's SQLAlchemy URL (sqlite or postgresql), the same as the catalog resource's")
    redis_url: str | None = Field(default=None, description="e.g. redis://redis.hydra:6379/0; unset: catalog only")
    environment: str = Field(default="local", description="HYDRA_ENV, recorded in every event's metadata")
    node: str | None = Field(default=None, description="recorded as metadata.node; unset: the hostname (the pod's name)")
    socket_timeout_s: float = Field(default=1.0, gt=0, description="Redis connect and read timeout")
    lock_timeout_seconds: float = Field(default=5.0, gt=0, description="longest wait for a locked catalog table")
    redis_retry_after_s: float = Field(
        default=15.0, ge=0, description="after a Redis failure, events skip Redis (counted as failures) this long"
    )

    _catalog: CatalogResource | None = PrivateAttr(default=None)
    _redis: redis.Redis | None = PrivateAttr(default=None)

    def for_step(self, context: dg.AssetExecutionContext | dg.OpExecutionContext, *, source: str | None = None) -> EventStream:
        """The step's stream: correlation id = the run id, source = the op (asset) name unless given."""
        return self.stream(correlation_id=context.run.run_id, source=source or context.op_def.name, log=context.log)

    def stream(self, *, correlation_id: str, source: str, log: Any = None) -> EventStream:
        """A stream outside a step (a sensor, the CLI): the caller names the correlation id."""
        return EventStream(self, correlation_id=correlation_id, source=source, log=log or logging.getLogger(__name__))

    def envelope_metadata(self) -> EventMetadata:
        return event_metadata(self.environment, self.node)

    def catalog(self) -> CatalogResource:
        if self._catalog is None:
            self._catalog = CatalogResource(url=self.catalog_url, lock_timeout_seconds=self.lock_timeout_seconds)
        return self._catalog

    def redis_client(self) -> redis.Redis | None:
        """The client, or None without a URL; no retries of its own, the stream decides when to try again."""
        if self.redis_url and self._redis is None:
            self._redis = redis.Redis.from_url(
                self.redis_url,
                socket_timeout=self.socket_timeout_s,
                socket_connect_timeout=self.socket_timeout_s,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        return self._redis

    def queen_id(self, slug: str) -> int | None:
        """The queen's catalog id for payloads; None when she has no row yet or the catalog cannot be read."""
        try:
            return self.catalog().queen_id(slug)
        except _CATALOG_ERRORS:
            return None

    def write(self, events: Sequence[HydraEvent]) -> None:
        """Insert the events in one transaction; raises what the database raises."""
        if events:
            with self.catalog().session() as session, session.begin():
                session.execute(sa.insert(EventRow.__table__), [_row(event) for event in events])

    def publish(self, events: Sequence[HydraEvent]) -> None:
        """Publish every event on each of its channels in one round trip; raises what Redis raises."""
        client = self.redis_client()
        if client is None or not events:
            return
        pipe = client.pipeline(transaction=False)
        for event in events:
            message = event.to_json()
            for channel in event.channels:
                pipe.publish(channel, message)
        pipe.execute()

    def read(
        self, *, correlation_id: str | None = None, types: Iterable[EventType | str] | None = None
    ) -> list[HydraEvent]:
        """Events from the table in the order they happened, optionally of one run and some types."""
        query = sa.select(EventRow).order_by(EventRow.created_at, EventRow.id)
        if correlation_id is not None:
            query = query.where(EventRow.correlation_id == correlation_id)
        if types is not None:
            query = query.where(EventRow.event_type.in_([EventType(t).value for t in types]))
        with self.catalog().session() as session:
            return [_event(row) for row in session.scalars(query)]

    def dispose(self) -> None:
        if self._catalog is not None:
            self._catalog.dispose()
            self._catalog = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.dispose()


class EventStream:
    """One step's events: builds envelopes, writes, publishes, counts; never raises for a backend."""

    def __init__(self, publisher: EventPublisher, *, correlation_id: str, source: str, log: Any) -> None:
        self.publisher = publisher
        self.correlation_id = correlation_id
        self.source = source
        self.log = log
        self.stats = EmissionStats()
        self._metadata = publisher.envelope_metadata()
        self._last: datetime | None = None
        self._redis_skip_until = 0.0
        self._logged: set[str] = set()

    def event(self, event_type: EventType | str, payload: Payload, *, causation_id: str | None = None) -> HydraEvent:
        """A new envelope; timestamps strictly increase within the stream, so the table keeps its order."""
        now = datetime.now(UTC)
        if self._last is not None and now <= self._last:
            now = self._last + _TICK
        self._last = now
        return HydraEvent(
            type=event_type,
            source=self.source,
            timestamp=now,
            payload=payload,
            correlation_id=self.correlation_id,
            causation_id=causation_id,
            metadata=self._metadata,
        )

    def emit(self, event_type: EventType | str, payload: Payload, *, causation_id: str | None = None) -> HydraEvent:
        return self.emit_many([self.event(event_type, payload, causation_id=causation_id)])[0]

    def emit_many(self, events: Iterable[HydraEvent | tuple[EventType | str, Payload]]) -> list[HydraEvent]:
        """Emit a batch: one catalog transaction, then one Redis round trip. Returns the envelopes."""
        batch = [item if isinstance(item, HydraEvent) else self.event(*item) for item in events]
        if not batch:
            return batch
        self.stats.emitted += len(batch)
        try:
            self.publisher.write(batch)
        except _CATALOG_ERRORS as exc:
            self.stats.catalog_failures += len(batch)
            self._once("catalog", f"events not written to the catalog {redact_url(self.publisher.catalog_url)}: {exc}")
        else:
            self.stats.written += len(batch)
        self._publish(batch)
        return batch

    def _publish(self, batch: list[HydraEvent]) -> None:
        if not self.publisher.redis_url:
            return
        if time.monotonic() < self._redis_skip_until:
            self.stats.redis_failures += len(batch)
            return
        try:
            self.publisher.publish(batch)
        except (redis.RedisError, OSError) as exc:
            self.stats.redis_failures += len(batch)
            self._redis_skip_until = time.monotonic() + self.publisher.redis_retry_after_s
            self._once(
                "redis",
                f"events not published to Redis {redact_url(self.publisher.redis_url)} ({type(exc).__name__}: {exc}); "
                "they are still written to the catalog, and further Redis failures in this step are only counted",
            )
        else:
            self.stats.published += len(batch)

    def _once(self, kind: str, message: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            self.log.warning(message)

    def metadata(self) -> dict[str, int]:
        """The counters, for the asset's materialization metadata."""
        return self.stats.as_metadata()
