"""The reference stages end to end for the demo queens, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.partitions import QUEENS
from hydra_assets.definitions import local_resources
from tests.helpers import hydra_definitions, temp_settings

DEMO_SLUGS = ["ada-marlowe", "nova-sterling"]


def run_reference_stages(tmp_path: Path, instance: dg.DagsterInstance, catalog_url: str | None = None) -> None:
    write_demo_data(tmp_path / "roster", tmp_path / "storage" / "reference_images")
    job = hydra_definitions(tmp_path, catalog_url).resolve_job_def("queen_reference_job")
    instance.add_dynamic_partitions(QUEENS, DEMO_SLUGS)
    for slug in DEMO_SLUGS:
        result = job.execute_in_process(partition_key=slug, instance=instance)
        assert result.success
        [check] = result.get_asset_check_evaluations()
        assert check.check_name == "enough_reference_faces" and check.passed


def assert_reference_outputs(tmp_path: Path, catalog_url: str) -> None:
    storage = tmp_path / "storage"
    for slug in DEMO_SLUGS:
        manifest = json.loads((storage / "assets" / "references" / slug / "manifest.json").read_text())
        reasons = {Path(e["source"]).name: e["reason"] for e in manifest["entries"] if e["status"] == "rejected"}
        assert list(reasons) == ["thumbnail.jpg"] and "short side" in reasons["thumbnail.jpg"]
        identity = json.loads((storage / "assets" / "identity" / slug / "identity.json").read_text())
        assert identity["no_face"] == ["full_body/backdrop.png"]
        assert identity["faces"] == 6 and identity["off_identity"] == []
        assert identity["spread"] >= 0.7
    with local_resources(temp_settings(tmp_path))["embeddings"].session() as store:
        for slug in DEMO_SLUGS:  # the six references with a face, as face vectors of the queen
            assert store.count("queen_embeddings", queen_slug=slug, embedding_type="reference") == 6
        points, _ = store.client.scroll("queen_embeddings", with_vectors=True, limit=100)
    assert {p.payload["source_file"] for p in points if p.payload["queen_slug"] == "nova-sterling"} == set(
        identity["with_face"])
    assert all(len(p.vector["face"]) == 128 and p.payload["queen_name"] and p.payload["tier"] for p in points)
    engine = sa.create_engine(catalog_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("select slug, status from queens order by slug")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(slug, "reference_ready") for slug in DEMO_SLUGS]


@pytest.mark.slow
def test_reference_stages_on_sqlite_instance(tmp_path):
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        run_reference_stages(tmp_path, instance)
        materialized = instance.get_materialized_partitions(dg.AssetKey("reference_identity"))
        assert materialized == set(DEMO_SLUGS)
    assert_reference_outputs(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")


@pytest.mark.slow
@pytest.mark.postgres
def test_reference_stages_on_postgres_instance(tmp_path, postgres_database_url):
    overrides = {"storage": {"postgres": {"postgres_url": postgres_database_url}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        run_reference_stages(tmp_path, instance, catalog_url=postgres_database_url)
        assert instance.get_materialized_partitions(dg.AssetKey("reference_images")) == set(DEMO_SLUGS)
    assert_reference_outputs(tmp_path, postgres_database_url)
