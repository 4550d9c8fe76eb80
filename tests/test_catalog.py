"""The catalog's upserts converge on one row per natural key, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from hydra_assets.domain.roster import Queen
from resources.catalog import (
    MIGRATIONS,
    VERSION_TABLE,
    Base,
    CatalogResource,
    CatalogTimeoutError,
    CatalogUnavailableError,
    GeneratedAssetRow,
    LoraModelRow,
    QualityMetricRow,
    QueenRow,
    VoiceModelRow,
    migration_config,
    upgrade_schema,
)

PERIOD = datetime(2025, 3, 1, tzinfo=UTC)

# SQLite cannot reflect the expression index on quality_metrics; the schema tests compare its SQL.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index"),
    pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index"),
]


def make_queen(slug: str = "emilie-ekstrom", **changes: object) -> Queen:
    document = {
        "slug": slug,
        "name": "Emilie Ekström",
        "title": "Nordic Ice",
        "tier": "elite",
        "physical_dna": {"hair": {"color": "platinum"}, "eyes": {"color": "blue"}, "skin": {"tone": "fair"}},
        "generation_config": {"target_portraits": 20},
    }
    return Queen.model_validate({**document, **changes})


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog(request: pytest.FixtureRequest, tmp_path) -> Iterator[CatalogResource]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'not-yet' / 'catalog.db'}"
    else:
        url = request.getfixturevalue("postgres_database_url")
    resource = CatalogResource(url=url)
    yield resource
    resource.dispose()


def count(catalog: CatalogResource, model: type) -> int:
    with catalog.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_upsert_queen_twice_keeps_one_row_and_follows_changes(catalog: CatalogResource) -> None:
    first = catalog.upsert_queen(make_queen())
    with catalog.session() as session:
        created = session.get(QueenRow, first)
    assert catalog.upsert_queen(make_queen()) == first
    assert count(catalog, QueenRow) == 1

    catalog.set_queen_counts("emilie-ekstrom", portrait=12, voice_line_count=3)
    catalog.set_queen_status("emilie-ekstrom", "lora_ready")
    assert catalog.upsert_queen(make_queen(title="Ice Queen", tier="alpha")) == first

    with catalog.session() as session:
        row = session.get(QueenRow, first)
    assert (row.title, row.tier) == ("Ice Queen", "alpha")
    assert row.generation_config["targets"]["portrait"] == 20
    assert row.physical_dna["hair"]["color"] == "platinum"
    assert (row.portrait_count, row.voice_line_count, row.pose_count) == (12, 3, 0)
    assert row.status == "lora_ready", "the pipeline's status must survive a roster re-sync"
    assert row.created_at == created.created_at
    assert row.updated_at >= created.updated_at
    assert row.updated_at.tzinfo is not None

    catalog.upsert_queen(make_queen(), status="complete")
    assert catalog.queen_id("emilie-ekstrom") == first
    with catalog.session() as session:
        assert session.get(QueenRow, first).status == "complete"
    assert catalog.queen_id("nobody") is None


def test_generated_assets_upsert_by_file_path(catalog: CatalogResource) -> None:
    queen_id = catalog.upsert_queen(make_queen())
    rows = [
        {
            "asset_type": "portrait",
            "file_path": f"overnight/2025-03-01/generated/p{i}.png",
            "file_hash": f"{i:064x}",
            "seed": 2**40 + i,
            "generation_params": {"steps": 30, "cfg": 6.5},
        }
        for i in range(2)
    ]
    assert catalog.upsert_generated_assets("emilie-ekstrom", rows) == 2
    approved_at = datetime(2025, 3, 2, 6, 30, tzinfo=UTC)
    scores = {
        "file_path": rows[0]["file_path"],
        "asset_type": "portrait",
        "aesthetic_score": 7.2,
        "technical_score": 81.0,
        "face_match_score": 0.83,
        "approved": True,
        "approval_method": "auto",
        "approved_at": approved_at,
    }
    assert catalog.upsert_generated_assets("emilie-ekstrom", [scores]) == 1

    assert count(catalog, GeneratedAssetRow) == 2
    with catalog.session() as session:
        row = session.scalars(sa.select(GeneratedAssetRow).filter_by(file_path=scores["file_path"])).one()
    assert (row.queen_id, row.aesthetic_score, row.approved, row.approval_method) == (queen_id, 7.2, True, "auto")
    assert row.file_hash == f"{0:064x}", "columns the second upsert did not give are kept"
    assert row.seed == 2**40
    assert row.generation_params == {"steps": 30, "cfg": 6.5}
    assert row.approved_at == approved_at

    with pytest.raises(ValueError, match="not columns the caller may set: aesthetic"):
        catalog.upsert_generated_assets("emilie-ekstrom", [{**scores, "aesthetic": 7.0}])
    with pytest.raises(ValueError, match="every row needs asset_type"):
        catalog.upsert_generated_assets("emilie-ekstrom", [{"file_path": scores["file_path"], "approved": False}])
    with pytest.raises(sa.exc.IntegrityError):
        catalog.upsert_generated_assets("emilie-ekstrom", [{**scores, "approval_method": "vibes"}])


def test_lora_versions_are_unique_per_queen(catalog: CatalogResource) -> None:
    catalog.upsert_queen(make_queen())
    catalog.upsert_queen(make_queen("aria-vale", name="Aria Vale"))

    v1 = catalog.record_lora_version("emilie-ekstrom", version=1, model_name="emilie-v1", network_dim=32)
    done = datetime(2025, 3, 1, 4, tzinfo=UTC)
    again = catalog.record_lora_version(
        "emilie-ekstrom", version=1, status="ready", final_loss=0.071, completed_at=done, test_scores={"face": 0.8}
    )
    v2 = catalog.record_lora_version("emilie-ekstrom", version=2)
    other = catalog.record_lora_version("aria-vale", version=1)

    assert again == v1
    assert len({v1, v2, other}) == 3
    assert count(catalog, LoraModelRow) == 3
    with catalog.session() as session:
        row = session.get(LoraModelRow, v1)
    assert (row.status, row.final_loss, row.network_dim, row.completed_at) == ("ready", 0.071, 32, done)
    assert (row.model_name, row.test_scores) == ("emilie-v1", {"face": 0.8})
    with catalog.session() as session:
        assert session.get(LoraModelRow, other).model_name == "aria-vale_lora"
    with pytest.raises(sa.exc.IntegrityError):
        catalog.record_lora_version("emilie-ekstrom", version=3, model_name="x", status="done")


def test_voice_model_is_unique_per_queen_and_backend(catalog: CatalogResource) -> None:
    catalog.upsert_queen(make_queen())
    first = catalog.upsert_voice_model("emilie-ekstrom", model_type="espeak", reference_clips=["a.wav"])
    again = catalog.upsert_voice_model("emilie-ekstrom", model_type="espeak", status="ready", similarity_score=0.6)
    other = catalog.upsert_voice_model("emilie-ekstrom", model_type="gpt-sovits")

    assert again == first != other
    assert count(catalog, VoiceModelRow) == 2
    with catalog.session() as session:
        row = session.get(VoiceModelRow, first)
    assert (row.status, row.similarity_score, row.reference_clips) == ("ready", 0.6, ["a.wav"])
    with pytest.raises(sa.exc.IntegrityError):
        catalog.upsert_voice_model("emilie-ekstrom", model_type="kazoo")


def test_global_quality_metrics_row_is_upserted_not_duplicated(catalog: CatalogResource) -> None:
    catalog.upsert_queen(make_queen())
    period = {"period_start": PERIOD, "period_end": PERIOD + timedelta(days=1), "granularity": "daily"}
    catalog.upsert_quality_metrics([{**period, "total_generated": 10, "total_approved": 4, "approval_rate": 0.4}])
    catalog.upsert_quality_metrics([{**period, "total_generated": 12, "total_approved": 6, "approval_rate": 0.5}])
    catalog.upsert_quality_metrics(
        [{**period, "queen_slug": "emilie-ekstrom", "total_generated": 12, "rejection_breakdown": {"no_face": 2}}]
    )

    with catalog.session() as session:
        rows = session.scalars(sa.select(QualityMetricRow).order_by(QualityMetricRow.id)).all()
    summary = [(r.queen_id is None, r.total_generated, r.approval_rate) for r in rows]
    assert summary == [(True, 12, 0.5), (False, 12, None)]
    assert rows[1].rejection_breakdown == {"no_face": 2}
    assert rows[0].period_start == PERIOD

    # The database itself refuses a second global row, not only the upsert path.
    with pytest.raises(sa.exc.IntegrityError), catalog.session() as session, session.begin():
        session.add(QualityMetricRow(**period, task_type="all"))


def test_unknown_queen_slug_raises_lookup_error_naming_it(catalog: CatalogResource) -> None:
    calls = {
        "generated_assets": lambda: catalog.upsert_generated_assets(
            "ghost", [{"asset_type": "pose", "file_path": "x"}]
        ),
        "lora_models": lambda: catalog.record_lora_version("ghost", version=1, model_name="ghost_lora"),
        "voice_models": lambda: catalog.upsert_voice_model("ghost", model_type="xtts"),
        "quality_metrics": lambda: catalog.upsert_quality_metrics(
            [{"queen_slug": "ghost", "period_start": PERIOD, "period_end": PERIOD, "granularity": "hourly"}]
        ),
        "queens": lambda: catalog.set_queen_status("ghost", "complete"),
    }
    for table, call in calls.items():
        with pytest.raises(LookupError, match=rf"^{table}: no queen 'ghost'"):
            call()


def test_unreachable_database_error_names_url_without_password() -> None:
    catalog = CatalogResource(url="postgresql://postgres:s3cret@127.0.0.1:1/x")
    with pytest.raises(CatalogUnavailableError) as raised:
        catalog.queen_id("emilie-ekstrom")
    message = str(raised.value)
    assert "postgresql://postgres:***@127.0.0.1:1/x" in message
    assert "s3cret" not in message


def test_resource_works_inside_a_dagster_run(tmp_path) -> None:
    @dg.asset
    def catalog_queen(catalog: CatalogResource) -> int:
        return catalog.upsert_queen(make_queen())

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = dg.materialize([catalog_queen], resources={"catalog": CatalogResource(url=url)})
    assert result.success
    assert CatalogResource(url=url).queen_id("emilie-ekstrom") == result.output_for_node("catalog_queen")


# --- schema migrations (Alembic) -------------------------------------------------------------


def _url(backend: str, request: pytest.FixtureRequest, tmp_path, name: str = "catalog.db") -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / name}"
    return request.getfixturevalue("postgres_database_url")


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
BASELINE_TABLES = ("queens", "generated_assets", "lora_models", "voice_models", "quality_metrics")
"""What main's create_all made before Alembic (revision 0001)."""


def schema(url: str) -> dict[str, object]:
    """Everything the game and the control plane could depend on, per table, comparable across databases."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        result = {}
        for table in sorted(set(inspector.get_table_names()) - {VERSION_TABLE}):
            result[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("comment")) for c in inspector.get_columns(table)
                ],
                "pk": inspector.get_pk_constraint(table)["constrained_columns"],
                "fks": sorted((fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"]) for fk in inspector.get_foreign_keys(table)),
                "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
                "indexes": sorted((i["name"], i["unique"], tuple(str(c) for c in i["column_names"])) for i in inspector.get_indexes(table)),
                "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table)),
                "index_sql": index_sql(engine, table),  # expression indexes too, which reflection skips
            }
        return result
    finally:
        engine.dispose()


def index_sql(engine: sa.Engine, table: str) -> list[str]:
    if engine.dialect.name == "sqlite":
        query = "select sql from sqlite_master where type = 'index' and tbl_name = :t and sql is not null"
    else:
        query = "select indexdef from pg_indexes where tablename = :t"
    with engine.connect() as connection:
        return sorted(row[0] for row in connection.execute(sa.text(query), {"t": table}))


def catalog_differences(connection: sa.Connection) -> list:
    """What autogenerate would change in the catalog's own tables (not the version table, not Dagster's)."""
    opts = {
        "compare_type": True,
        "include_object": lambda obj, name, type_, reflected, compare_to: type_ != "table" or name in Base.metadata.tables,
    }
    return compare_metadata(MigrationContext.configure(connection, opts=opts), Base.metadata)


def version_of(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(sa.text(f"select version_num from {VERSION_TABLE}"))]
    finally:
        engine.dispose()



@pytest.mark.parametrize("backend", BACKENDS)
def test_the_baseline_migration_creates_exactly_the_tables_create_all_made(backend, request, tmp_path) -> None:
    migrated_url = _url(backend, request, tmp_path, "migrated.db")
    catalog = CatalogResource(url=migrated_url)
    catalog.queen_id("nobody")  # first use migrates
    catalog.dispose()
    if backend == "sqlite":
        created_url = f"sqlite:///{tmp_path / 'created.db'}"
    else:
        created_url = request.getfixturevalue("postgres_database_url")
        created_url = sa.make_url(created_url).set(database=f"{sa.make_url(created_url).database}_b")
        created_url = created_url.render_as_string(hide_password=False)
        admin = sa.create_engine(request.getfixturevalue("postgres_server_url"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'create database "{sa.make_url(created_url).database}"'))
        request.addfinalizer(admin.dispose)
        request.addfinalizer(
            lambda: admin.connect().execute(sa.text(f'drop database "{sa.make_url(created_url).database}" with (force)'))
        )
    engine = sa.create_engine(created_url)
    Base.metadata.create_all(engine)
    engine.dispose()
    assert schema(migrated_url) == schema(created_url)
    assert set(schema(migrated_url)) == {*BASELINE_TABLES, "events", "generation_tasks"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_models_and_migrations_agree(backend, request, tmp_path) -> None:
    """A model change without its revision fails here: autogenerate finds nothing to do at head."""
    url = _url(backend, request, tmp_path)
    catalog = CatalogResource(url=url)
    catalog.queen_id("nobody")
    catalog.dispose()
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        differences = catalog_differences(connection)
    engine.dispose()
    assert differences == []
    assert version_of(url) == [ScriptDirectory.from_config(migration_config()).get_current_head()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_catalog_from_before_alembic_is_adopted_and_keeps_its_rows(backend, request, tmp_path) -> None:
    """main's databases were made by create_all and have no version table."""
    url = _url(backend, request, tmp_path)
    engine = sa.create_engine(url)
    # the baseline's tables only: later revisions' tables did not exist before Alembic
    Base.metadata.create_all(engine, tables=[Base.metadata.tables[name] for name in BASELINE_TABLES])
    with engine.begin() as connection:
        connection.execute(
            sa.insert(QueenRow).values(
                slug="old-queen", name="Old", tier="core", physical_dna={}, personality_dna={}, voice_dna={},
                generation_config={},
            )
        )
    engine.dispose()
    catalog = CatalogResource(url=url)
    assert catalog.queen_id("old-queen") is not None
    catalog.upsert_queen(make_queen())
    catalog.dispose()
    assert version_of(url) == [ScriptDirectory.from_config(migration_config()).get_current_head()]
    assert "events" in schema(url), "the later revisions ran after the stamp"


ADD_COLUMN = '''
from alembic import op
import sqlalchemy as sa

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("queens") as batch:
        batch.add_column(sa.Column("nickname", sa.String(100), nullable=False, server_default=""))


def downgrade():
    with op.batch_alter_table("queens") as batch:
        batch.drop_column("nickname")
'''


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_column_added_by_a_later_revision_migrates_an_existing_catalog(backend, request, tmp_path) -> None:
    url = _url(backend, request, tmp_path)
    catalog = CatalogResource(url=url)
    catalog.upsert_queen(make_queen())  # a catalog in use, at today's head
    catalog.dispose()
    head = version_of(url)[0]

    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9001_queen_nickname.py").write_text(ADD_COLUMN.format(head=head))
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        upgrade_schema(connection, scripts)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("select slug, nickname from queens")).all()
    engine.dispose()
    assert rows == [("emilie-ekstrom", "")]
    assert version_of(url) == ["9001"]
    assert "nickname" in [c[0] for c in schema(url)["queens"]["columns"]]


# --- lock and statement timeouts ---------------------------------------------------------------


def test_a_locked_sqlite_catalog_fails_within_the_timeout_naming_the_table(tmp_path) -> None:
    path = tmp_path / "catalog.db"
    catalog = CatalogResource(url=f"sqlite:///{path}", lock_timeout_seconds=0.5)
    catalog.upsert_queen(make_queen())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write
    try:
        started = time.monotonic()
        with pytest.raises(CatalogTimeoutError) as raised:
            catalog.set_queen_status("emilie-ekstrom", "complete")
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "catalog table queens" in str(raised.value) and "lock timeout (0.5 s)" in str(raised.value)
    assert 0.4 < elapsed < 5
    catalog.set_queen_status("emilie-ekstrom", "complete")  # the lock is gone: the write goes through
    catalog.dispose()


@pytest.mark.postgres
def test_a_locked_postgres_table_fails_within_the_lock_timeout_naming_it(postgres_database_url) -> None:
    catalog = CatalogResource(url=postgres_database_url, lock_timeout_seconds=0.5)
    catalog.upsert_queen(make_queen())
    holder = sa.create_engine(postgres_database_url)
    try:
        with holder.connect() as connection, connection.begin():
            connection.execute(sa.text("lock table generated_assets in access exclusive mode"))
            started = time.monotonic()
            with pytest.raises(CatalogTimeoutError) as raised:
                catalog.upsert_generated_assets("emilie-ekstrom", [{"asset_type": "portrait", "file_path": "a.png"}])
            elapsed = time.monotonic() - started
    finally:
        holder.dispose()
    assert "catalog table generated_assets" in str(raised.value) and "lock timeout (0.5 s)" in str(raised.value)
    assert elapsed < 5
    assert count(catalog, GeneratedAssetRow) == 0  # all-or-nothing: nothing half-written
    assert catalog.upsert_generated_assets("emilie-ekstrom", [{"asset_type": "portrait", "file_path": "a.png"}]) == 1
    catalog.dispose()


@pytest.mark.postgres
def test_a_slow_postgres_statement_fails_at_the_statement_timeout(postgres_database_url) -> None:
    catalog = CatalogResource(url=postgres_database_url, statement_timeout_seconds=0.3)
    catalog.upsert_queen(make_queen())
    started = time.monotonic()
    with pytest.raises(CatalogTimeoutError, match=r"catalog table queens .*statement timeout \(0.3 s\)"):
        with catalog.session() as session:
            session.execute(sa.text("select pg_sleep(5) from queens"))
    assert time.monotonic() - started < 3
    catalog.dispose()


def _first_use(url: str) -> int | None:
    catalog = CatalogResource(url=url)
    try:
        return catalog.queen_id("nobody")
    finally:
        catalog.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_steps_migrating_a_fresh_catalog_do_not_collide(backend, request, tmp_path) -> None:
    """A run's steps start in parallel processes, each migrating on first use."""
    url = _url(backend, request, tmp_path)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_first_use, [url] * 4) == [None] * 4
    assert version_of(url) == [ScriptDirectory.from_config(migration_config()).get_current_head()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_shared_with_dagsters_own_migrations_is_left_to_them(backend, request, tmp_path) -> None:
    """dagster-postgres keeps its Alembic revision in alembic_version; the catalog's is its own."""
    url = _url(backend, request, tmp_path)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("create table alembic_version (version_num varchar(32) primary key)"))
        connection.execute(sa.text("insert into alembic_version values ('29b539ebc72a')"))
    catalog = CatalogResource(url=url)
    catalog.upsert_queen(make_queen())
    catalog.dispose()
    with engine.connect() as connection:
        assert connection.execute(sa.text("select version_num from alembic_version")).all() == [("29b539ebc72a",)]
        differences = catalog_differences(connection)
    engine.dispose()
    assert version_of(url) == [ScriptDirectory.from_config(migration_config()).get_current_head()]
    assert differences == []
