"""The catalog: the PostgreSQL tables the game and the control plane read (SPEC "Catalog tables").

Every write is an upsert by the row's natural key, so re-running an asset or replaying a run
converges on the same rows instead of piling up duplicates. SQLite serves local development
and tests; the cluster uses PostgreSQL. Both get the same schema and the same statements.

The models below are the source of the schema; ``resources/catalog_migrations`` holds its
Alembic revisions, and the resource upgrades a database to the newest one on first use.
Every connection has a lock and a statement timeout, so a locked table fails the step with
the table's name instead of holding it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import alembic.command
import alembic.config
import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hydra_assets.domain.roster import Queen, QueenStatus, Tier

APPROVAL_METHODS = ("auto", "manual")
LORA_STATUSES = ("training", "ready", "failed")
VOICE_MODEL_TYPES = ("gpt-sovits", "kokoro", "xtts", "rvc", "espeak")
VOICE_STATUSES = ("pending", "training", "ready", "failed")
GRANULARITIES = ("hourly", "daily", "weekly")
COUNTED_ASSET_TYPES = ("portrait", "expression", "pose", "voice_line")

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
"""The dialects whose INSERT ... ON CONFLICT DO UPDATE the upserts rely on."""
_SCHEMA_LOCK_KEY = 0x48594452  # "HYDR": PostgreSQL advisory lock held while migrating
MIGRATIONS = Path(__file__).with_name("catalog_migrations")
"""Alembic's script folder, inside the package so an installed wheel carries it."""
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


class CatalogUnavailableError(ConnectionError):
    """The catalog database could not be reached; the message names the URL, password hidden."""


class CatalogTimeoutError(TimeoutError):
    """A catalog statement waited longer than its lock or statement timeout; names the table."""


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
    no ``alembic_version``: it is stamped as the baseline, then upgraded like any other.
    """
    config = migration_config(connection, script_location)
    tables = set(sa.inspect(connection).get_table_names())
    if "alembic_version" not in tables and QueenRow.__tablename__ in tables:
        alembic.command.stamp(config, BASELINE_REVISION)
    alembic.command.upgrade(config, "head")


def _upsert(
    session: Session,
    table: sa.Table,
    values: Mapping[str, Any],
    conflict: Sequence[sa.ColumnElement[Any]],
    *,
    insert_only: Mapping[str, Any] | None = None,
) -> int:
    """Insert one row or update the row with the same natural key; return its id.

    Only the given ``values`` are overwritten on conflict, so a partial update leaves the other
    columns as they were; ``insert_only`` values seed a new row and never overwrite.
    """
    insert = _INSERTS[session.get_bind().dialect.name]
    stmt = insert(table).values({**(insert_only or {}), **values})
    update = {name: stmt.excluded[name] for name in values}
    if "updated_at" in table.c:
        update["updated_at"] = _utcnow()
    stmt = stmt.on_conflict_do_update(index_elements=list(conflict), set_=update).returning(table.c.id)
    return session.execute(stmt).scalar_one()


def _checked(
    table: sa.Table, row: Mapping[str, Any], *, set_by_catalog: Collection[str], defaults: Collection[str] = ()
) -> dict[str, Any]:
    """Refuse keys that are not columns (a typo would vanish silently) and rows lacking a required column.

    Required columns must come with every row, updates too: the database checks NOT NULL on
    the row proposed for insert before it looks for a conflicting one.
    """
    settable = {c.name for c in table.c if not c.primary_key and c.name not in set_by_catalog}
    unknown = sorted(set(row) - settable)
    if unknown:
        raise ValueError(f"{table.name}: not columns the caller may set: {', '.join(unknown)}")
    required = {c.name for c in table.c if c.name in settable and not c.nullable and c.default is None}
    missing = sorted(required - set(row) - set(defaults))
    if missing:
        raise ValueError(f"{table.name}: every row needs {', '.join(missing)}")
    return dict(row)


def _queen_id(session: Session, slug: str, table: str) -> int:
    queen_id = session.scalar(sa.select(QueenRow.id).where(QueenRow.slug == slug))
    if queen_id is None:
        raise _unknown_queen(slug, table)
    return queen_id


def _unknown_queen(slug: str, table: str) -> LookupError:
    return LookupError(f"{table}: no queen {slug!r} in the catalog's queens table (upsert the queen first)")


class CatalogResource(dg.ConfigurableResource):
    """Read and write the catalog tables; the engine is created once per resource instance."""

    url: str = Field(description="SQLAlchemy URL, e.g. sqlite:////data/catalog.db or postgresql://user:pw@host/db")
    lock_timeout_seconds: float = Field(
        default=10.0, gt=0, description="longest wait for a lock (PostgreSQL lock_timeout, SQLite busy timeout)"
    )
    statement_timeout_seconds: float = Field(
        default=120.0, gt=0, description="longest statement (PostgreSQL statement_timeout; SQLite has none)"
    )
    connect_timeout_seconds: int = Field(default=10, gt=0, description="longest wait to reach PostgreSQL")

    _engine: sa.Engine | None = PrivateAttr(default=None)

    @property
    def _safe_url(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def _create_engine(self, url: sa.URL, **kwargs: Any) -> sa.Engine:
        if url.get_backend_name() == "sqlite":
            engine = sa.create_engine(url, connect_args={"timeout": self.lock_timeout_seconds}, **kwargs)
            sa.event.listen(engine, "connect", _sqlite_foreign_keys_on)
            return engine
        options = (
            f"-c lock_timeout={round(self.lock_timeout_seconds * 1000)}"
            f" -c statement_timeout={round(self.statement_timeout_seconds * 1000)}"
        )
        connect_args = {"options": options, "connect_timeout": self.connect_timeout_seconds}
        return sa.create_engine(url, connect_args=connect_args, **kwargs)

    def _connect(self) -> sa.Engine:
        """Create the engine and migrate the schema on first use; a failed attempt is not cached."""
        if self._engine is None:
            url = sa.make_url(self.url)
            backend = url.get_backend_name()
            if backend not in _INSERTS:
                raise ValueError(f"catalog URL {self._safe_url}: unsupported database (use sqlite or postgresql)")
            if backend == "sqlite" and url.database not in (None, "", ":memory:"):
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = self._create_engine(url, pool_pre_ping=True)
            try:
                self._migrate(url)
            except sa.exc.OperationalError as exc:
                engine.dispose()
                if _is_timeout(exc):
                    raise self._timeout_error(exc, "alembic_version (schema migration)") from exc
                message = f"cannot reach the catalog database {self._safe_url}: {exc.orig}"
                raise CatalogUnavailableError(message) from exc
            self._engine = engine
        return self._engine

    def _migrate(self, url: sa.URL) -> None:
        """``alembic upgrade head``, one process at a time.

        A run's steps start in parallel processes; unlocked, two of them migrating a fresh
        database collide. PostgreSQL: an advisory lock; SQLite: the write lock up front.
        """
        if url.get_backend_name() == "sqlite":
            engine = self._create_engine(url, poolclass=sa.pool.NullPool)
            sa.event.listen(engine, "connect", _sqlite_manual_transactions)
            sa.event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
        else:
            engine = self._create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as connection:
                if url.get_backend_name() == "postgresql":
                    connection.execute(sa.text("select pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                upgrade_schema(connection)
        finally:
            engine.dispose()

    def _timeout_error(self, exc: sa.exc.OperationalError, table: str | None) -> CatalogTimeoutError:
        table = table or _table_of(exc.statement) or "(unknown table)"
        if _is_statement_timeout(exc):
            what = f"a statement ran longer than the statement timeout ({self.statement_timeout_seconds:g} s)"
        else:
            what = f"waited longer than the lock timeout ({self.lock_timeout_seconds:g} s) for a lock another transaction holds"
        return CatalogTimeoutError(f"catalog table {table} on {self._safe_url}: {what}; nothing of this step was written")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for reads; loaded objects stay readable after it closes.

        A lock or statement timeout surfaces as :class:`CatalogTimeoutError` naming the table.
        """
        try:
            with Session(self._connect(), expire_on_commit=False) as session:
                yield session
        except sa.exc.OperationalError as exc:
            if _is_timeout(exc):
                raise self._timeout_error(exc, None) from exc
            raise

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """All of a call's writes or none of them."""
        with self.session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close pooled connections (tests, and the end of a run)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.dispose()

    def queen_id(self, slug: str) -> int | None:
        with self.session() as session:
            return session.scalar(sa.select(QueenRow.id).where(QueenRow.slug == slug))

    def upsert_queen(self, queen: Queen, *, status: str | None = None) -> int:
        """Mirror a roster queen; counts are the pipeline's, so they are never touched here.

        Without ``status`` a new row starts at the roster's status and an existing row keeps
        the one the pipeline has moved it to.
        """
        initial_status = {"status": QueenStatus(status or queen.status).value}
        values = {
            "slug": queen.slug,
            "name": queen.name,
            "title": queen.title,
            "tier": queen.tier,
            "physical_dna": queen.physical_dna.model_dump(mode="json"),
            "personality_dna": queen.personality_dna.model_dump(mode="json"),
            "voice_dna": queen.voice_dna.model_dump(mode="json"),
            "generation_config": queen.generation_config.model_dump(mode="json"),
            **(initial_status if status else {}),
        }
        with self._transaction() as session:
            return _upsert(session, QueenRow.__table__, values, [QueenRow.slug], insert_only=initial_status)

    def set_queen_counts(self, slug: str, **counts: int) -> None:
        """Set any of ``portrait``, ``expression``, ``pose``, ``voice_line`` (``_count`` suffix optional)."""
        columns = {f"{name.removesuffix('_count')}_count": count for name, count in counts.items()}
        unknown = sorted(set(columns) - {f"{t}_count" for t in COUNTED_ASSET_TYPES})
        if unknown:
            raise ValueError(f"queens: no count column {', '.join(unknown)}; counted: {', '.join(COUNTED_ASSET_TYPES)}")
        self._update_queen(slug, columns)

    def set_queen_status(self, slug: str, status: str) -> None:
        self._update_queen(slug, {"status": QueenStatus(status).value})

    def _update_queen(self, slug: str, values: dict[str, Any]) -> None:
        with self._transaction() as session:
            result = session.execute(
                sa.update(QueenRow).where(QueenRow.slug == slug).values(**values, updated_at=_utcnow())
            )
            if result.rowcount == 0:
                raise _unknown_queen(slug, "queens")

    def upsert_generated_assets(self, slug: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record images by ``file_path``; a later row for the same file updates only its given columns.

        Returns how many rows were written.
        """
        table = GeneratedAssetRow.__table__
        written = 0
        with self._transaction() as session:
            queen_id = _queen_id(session, slug, table.name)
            for row in rows:
                values = _checked(table, row, set_by_catalog={"queen_id"})
                _upsert(session, table, {**values, "queen_id": queen_id}, [table.c.file_path])
                written += 1
        return written

    def record_lora_version(self, slug: str, **fields: Any) -> int:
        """Create or update one LoRA version (``version`` is required); returns its id.

        ``model_name`` defaults to ``{slug}_lora``, the SPEC's file name stem.
        """
        table = LoraModelRow.__table__
        defaults = {"model_name": f"{slug}_lora"}
        values = _checked(table, fields, set_by_catalog={"queen_id"}, defaults=defaults)
        with self._transaction() as session:
            values["queen_id"] = _queen_id(session, slug, table.name)
            return _upsert(session, table, values, [table.c.queen_id, table.c.version], insert_only=defaults)

    def upsert_voice_model(self, slug: str, **fields: Any) -> int:
        """Create or update the queen's model for one backend (``model_type`` is required); returns its id."""
        table = VoiceModelRow.__table__
        values = _checked(table, fields, set_by_catalog={"queen_id"})
        with self._transaction() as session:
            values["queen_id"] = _queen_id(session, slug, table.name)
            return _upsert(session, table, values, [table.c.queen_id, table.c.model_type])

    def upsert_quality_metrics(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Upsert aggregates by (period_start, granularity, queen, task_type).

        A row names its queen with ``queen_slug``; without one it is the global row.
        Returns how many rows were written.
        """
        table = QualityMetricRow.__table__
        written = 0
        with self._transaction() as session:
            for row in rows:
                values = dict(row)
                slug = values.pop("queen_slug", None)
                values = _checked(table, values, set_by_catalog={"queen_id"})
                values["queen_id"] = _queen_id(session, slug, table.name) if slug is not None else None
                _upsert(session, table, values, _QUALITY_METRICS_KEY)
                written += 1
        return written


def _sqlite_foreign_keys_on(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_manual_transactions(dbapi_connection: Any, connection_record: Any) -> None:
    """Let SQLAlchemy emit BEGIN itself (pysqlite would not begin before DDL); SQLAlchemy's recipe."""
    dbapi_connection.isolation_level = None


_PG_LOCK_NOT_AVAILABLE = "55P03"
_PG_QUERY_CANCELED = "57014"
_TABLE_IN_SQL = re.compile(r'\b(?:INTO|UPDATE|FROM|TABLE|JOIN)\s+"?(\w+)"?', re.IGNORECASE)


def _is_statement_timeout(exc: sa.exc.OperationalError) -> bool:
    return getattr(exc.orig, "pgcode", None) == _PG_QUERY_CANCELED


def _is_timeout(exc: sa.exc.OperationalError) -> bool:
    """A lock or statement timeout (PostgreSQL), or SQLite's busy timeout running out."""
    if getattr(exc.orig, "pgcode", None) in (_PG_LOCK_NOT_AVAILABLE, _PG_QUERY_CANCELED):
        return True
    return "database is locked" in str(exc.orig)


def _table_of(statement: str | None) -> str | None:
    """The first table a SQL statement names (for messages)."""
    match = _TABLE_IN_SQL.search(statement or "")
    return match.group(1) if match else None
