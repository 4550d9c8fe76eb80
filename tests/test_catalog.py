"""The catalog's upserts converge on one row per natural key, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from hydra_assets.domain.roster import Queen
from resources.catalog import (
    CatalogResource,
    CatalogUnavailableError,
    GeneratedAssetRow,
    LoraModelRow,
    QualityMetricRow,
    QueenRow,
    VoiceModelRow,
)

PERIOD = datetime(2025, 3, 1, tzinfo=UTC)


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
