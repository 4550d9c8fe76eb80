"""The catalog: the PostgreSQL tables the game and the control plane read (SPEC "Catalog tables").

Every write is an upsert by the row's natural key, so re-running an asset or replaying a run
converges on the same rows instead of piling up duplicates. SQLite serves local development
and tests; the cluster uses PostgreSQL. Both get the same schema and the same statements.

The schema (models and Alembic migrations) is in ``resources/catalog_schema.py``; the resource
upgrades a database to the newest revision on first use.
Every connection has a lock and a statement timeout, so a locked table fails the step with
the table's name instead of holding it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from hydra_assets.domain.roster import Queen, QueenStatus
from resources.catalog_schema import (  # noqa: F401 - the schema's names, re-exported for callers
    APPROVAL_METHODS,
    BASELINE_REVISION,
    COUNTED_ASSET_TYPES,
    GRANULARITIES,
    LORA_STATUSES,
    MIGRATIONS,
    VERSION_TABLE,
    VOICE_MODEL_TYPES,
    VOICE_STATUSES,
    Base,
    GeneratedAssetRow,
    LoraModelRow,
    QualityMetricRow,
    QueenRow,
    UTCDateTime,
    VoiceModelRow,
    _QUALITY_METRICS_KEY,
    _utcnow,
    migration_config,
    upgrade_schema,
)

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
"""The dialects whose INSERT ... ON CONFLICT DO UPDATE the upserts rely on."""
_SCHEMA_LOCK_KEY = 0x48594452  # "HYDR": PostgreSQL advisory lock held while migrating


class CatalogUnavailableError(ConnectionError):
    """The catalog database could not be reached; the message names the URL, password hidden."""


class CatalogTimeoutError(TimeoutError):
    """A catalog statement waited longer than its lock or statement timeout; names the table."""


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
                    raise self._timeout_error(exc, f"{VERSION_TABLE} (schema migration)") from exc
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
