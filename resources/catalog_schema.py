"""The catalog's schema: SQLAlchemy models of the SPEC tables, and their Alembic migrations.

The models are the source; ``resources/catalog_migrations`` holds the revisions that bring a
database to them (README "Catalog": adding a table or a column). The resource in
``resources/catalog.py`` runs :func:`upgrade_schema` on first use.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import alembic.command
import alembic.config
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hydra_assets.domain.roster import QueenStatus, Tier

APPROVAL_METHODS = ("auto", "manual")
LORA_STATUSES = ("training", "ready", "failed")
VOICE_MODEL_TYPES = ("gpt-sovits", "kokoro", "xtts", "rvc", "espeak")
VOICE_STATUSES = ("pending", "training", "ready", "failed")
GRANULARITIES = ("hourly", "daily", "weekly")
COUNTED_ASSET_TYPES = ("portrait", "expression", "pose", "voice_line")
TASK_PRIORITIES = ("critical", "high", "normal", "low", "idle")
TASK_STATUSES = ("queued", "assigned", "running", "quality_check", "completed", "failed", "cancelled")
MIGRATIONS = Path(__file__).with_name("catalog_migrations")
"""Alembic's script folder, inside the package so an installed wheel carries it."""
VERSION_TABLE = "hydra_catalog_version"
"""Alembic's version table for the catalog (dagster-postgres uses ``alembic_version`` in the same database)."""
BASELINE_REVISION = "0001"
"""The schema main created with ``create_all`` before Alembic: such databases are stamped with it."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend; SQLite would otherwise hand back naive ones.

    Naive values are taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: Iterable[str]) -> sa.CheckConstraint:
    return sa.CheckConstraint(sa.column(column).in_(list(values)), name=f"{column}_valid")


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: sa.JSON(), list[Any]: sa.JSON()}


class QueenRow(Base):
    __tablename__ = "queens"
    __table_args__ = (_one_of("tier", [t.value for t in Tier]), _one_of("status", [s.value for s in QueenStatus]))

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(100), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    title: Mapped[str] = mapped_column(sa.String(200), default="")
    tier: Mapped[str] = mapped_column(sa.String(20))
    physical_dna: Mapped[dict[str, Any]]
    personality_dna: Mapped[dict[str, Any]]
    voice_dna: Mapped[dict[str, Any]]
    generation_config: Mapped[dict[str, Any]]
    portrait_count: Mapped[int] = mapped_column(default=0)
    expression_count: Mapped[int] = mapped_column(default=0)
    pose_count: Mapped[int] = mapped_column(default=0)
    voice_line_count: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.String(32), default=QueenStatus.draft.value)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=_utcnow)


class GeneratedAssetRow(Base):
    __tablename__ = "generated_assets"
    __table_args__ = (_one_of("approval_method", APPROVAL_METHODS), sa.Index(None, "queen_id", "asset_type"))

    id: Mapped[int] = mapped_column(primary_key=True)
    queen_id: Mapped[int] = mapped_column(sa.ForeignKey("queens.id"))
    asset_type: Mapped[str] = mapped_column(sa.String(50))
    file_path: Mapped[str] = mapped_column(sa.String(1024), unique=True)
    file_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    file_hash: Mapped[str | None] = mapped_column(sa.String(64), comment="sha256, hex")
    aesthetic_score: Mapped[float | None]
    technical_score: Mapped[float | None]
    face_match_score: Mapped[float | None]
    composite_score: Mapped[float | None]
    approved: Mapped[bool] = mapped_column(default=False)
    approval_method: Mapped[str | None] = mapped_column(sa.String(10))
    rejection_reason: Mapped[str | None] = mapped_column(sa.String(200))
    generation_params: Mapped[dict[str, Any] | None]
    prompt_used: Mapped[str | None] = mapped_column(sa.Text)
    seed: Mapped[int | None] = mapped_column(sa.BigInteger)
    generated_at: Mapped[datetime] = mapped_column(default=_utcnow)
    approved_at: Mapped[datetime | None]


class LoraModelRow(Base):
    __tablename__ = "lora_models"
    __table_args__ = (sa.UniqueConstraint("queen_id", "version"), _one_of("status", LORA_STATUSES))

    id: Mapped[int] = mapped_column(primary_key=True)
    queen_id: Mapped[int] = mapped_column(sa.ForeignKey("queens.id"))
    model_name: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int]
    base_model: Mapped[str | None] = mapped_column(sa.String(200))
    network_dim: Mapped[int | None]
    network_alpha: Mapped[float | None]
    training_config: Mapped[dict[str, Any] | None]
    training_images: Mapped[int | None] = mapped_column(comment="how many images it was trained on")
    training_steps: Mapped[int | None]
    final_loss: Mapped[float | None]
    model_path: Mapped[str | None] = mapped_column(sa.String(1024))
    model_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.String(10), default="training")
    test_scores: Mapped[dict[str, Any] | None]
    started_at: Mapped[datetime] = mapped_column(default=_utcnow)
    completed_at: Mapped[datetime | None]


class VoiceModelRow(Base):
    __tablename__ = "voice_models"
    __table_args__ = (
        sa.UniqueConstraint("queen_id", "model_type"),
        _one_of("model_type", VOICE_MODEL_TYPES),
        _one_of("status", VOICE_STATUSES),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    queen_id: Mapped[int] = mapped_column(sa.ForeignKey("queens.id"))
    model_type: Mapped[str] = mapped_column(sa.String(20))
    reference_clips: Mapped[list[Any]] = mapped_column(default=list)
    total_reference_duration: Mapped[float | None] = mapped_column(comment="seconds")
    model_path: Mapped[str | None] = mapped_column(sa.String(1024))
    status: Mapped[str] = mapped_column(sa.String(10), default="pending")
    similarity_score: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=_utcnow)


class QualityMetricRow(Base):
    __tablename__ = "quality_metrics"
    __table_args__ = (_one_of("granularity", GRANULARITIES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    granularity: Mapped[str] = mapped_column(sa.String(10))
    queen_id: Mapped[int | None] = mapped_column(sa.ForeignKey("queens.id"), comment="null: all queens")
    task_type: Mapped[str] = mapped_column(sa.String(50), default="all")
    total_generated: Mapped[int] = mapped_column(default=0)
    total_approved: Mapped[int] = mapped_column(default=0)
    total_rejected: Mapped[int] = mapped_column(default=0)
    approval_rate: Mapped[float | None]
    score_distributions: Mapped[dict[str, Any] | None]
    rejection_breakdown: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class GenerationTaskRow(Base):
    """A request for images beyond the nightly targets (SPEC ``generation_tasks``; the generation queue)."""

    __tablename__ = "generation_tasks"
    __table_args__ = (
        _one_of("priority", TASK_PRIORITIES),
        _one_of("status", TASK_STATUSES),
        sa.Index(None, "status", "queued_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_type: Mapped[str] = mapped_column(sa.String(50))
    priority: Mapped[str] = mapped_column(sa.String(10), default="normal")
    queen_id: Mapped[int] = mapped_column(sa.ForeignKey("queens.id"))
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(sa.String(20), default="queued")
    assigned_node: Mapped[str | None] = mapped_column(sa.String(200))
    assigned_gpu: Mapped[str | None] = mapped_column(sa.String(100))
    total_count: Mapped[int] = mapped_column(default=0)
    completed_count: Mapped[int] = mapped_column(default=0)
    approved_count: Mapped[int] = mapped_column(default=0)
    rejected_count: Mapped[int] = mapped_column(default=0)
    queued_at: Mapped[datetime] = mapped_column(default=_utcnow, comment="when it (re-)entered the queue; a retry's is after its back-off")
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    retry_count: Mapped[int] = mapped_column(default=0)
    max_retries: Mapped[int] = mapped_column(default=3)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_by: Mapped[str | None] = mapped_column(sa.String(100))
    k8s_job_name: Mapped[str | None] = mapped_column(sa.String(200))


_QUALITY_METRICS_KEY = (
    QualityMetricRow.period_start,
    QualityMetricRow.granularity,
    # A plain unique constraint lets any number of NULL (global) rows through on both
    # backends; folding NULL into 0 (never a real id) makes the global row unique too.
    # The literal must be rendered inline so ON CONFLICT matches the index expression.
    sa.func.coalesce(QualityMetricRow.queen_id, sa.literal_column("0")),
    QualityMetricRow.task_type,
)
sa.Index("uq_quality_metrics_period", *_QUALITY_METRICS_KEY, unique=True)


class EventRow(Base):
    """One HydraEvent (resources/events.py writes them); ``created_at`` is the event's timestamp."""

    __tablename__ = "events"
    __table_args__ = (sa.Index(None, "correlation_id", "created_at"), sa.Index(None, "event_type", "created_at"))

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    event_type: Mapped[str] = mapped_column(sa.String(64))
    source: Mapped[str] = mapped_column(sa.String(200))
    payload: Mapped[dict[str, Any]]
    correlation_id: Mapped[str] = mapped_column(sa.String(64), comment="the Dagster run")
    causation_id: Mapped[str | None] = mapped_column(sa.String(64))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    created_at: Mapped[datetime]


def migration_config(
    connection: sa.Connection | None = None, script_location: Path = MIGRATIONS
) -> alembic.config.Config:
    """Alembic's config built in code (no alembic.ini): the packaged script folder, this connection."""
    config = alembic.config.Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


def upgrade_schema(connection: sa.Connection, script_location: Path = MIGRATIONS) -> None:
    """Bring the catalog to the newest revision; a database from before Alembic is adopted first.

    A catalog created by ``create_all`` (main before migrations) has the baseline tables but
    no version table: it is stamped as the baseline, then upgraded like any other.
    """
    config = migration_config(connection, script_location)
    tables = set(sa.inspect(connection).get_table_names())
    if VERSION_TABLE not in tables and QueenRow.__tablename__ in tables:
        alembic.command.stamp(config, BASELINE_REVISION)
    alembic.command.upgrade(config, "head")
