"""The overnight job on the cluster's kind of instance: dagster-postgres, with the catalog on the same server."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.domain.storage import StorageLayout
from hydra_assets.partitions import QUEENS, queen_night_key
from tests.helpers import hydra_definitions

REPO = Path(__file__).resolve().parents[1]
SLUG = "nova-sterling"
NIGHT = "2026-11-20"


def postgres_instance_overrides(url: str) -> dict:
    """The repo's dagster.yaml (queue, tag limits, pools, monitoring) with dagster-postgres storage."""
    config = yaml.safe_load((REPO / "instance" / "dagster.yaml").read_text())
    config["storage"] = {"postgres": {"postgres_url": url}}
    return config


@pytest.mark.slow
@pytest.mark.postgres
def test_overnight_job_on_postgres_instance_writes_the_catalog(tmp_path, postgres_database_url):
    write_demo_data(tmp_path / "roster", tmp_path / "storage" / "reference_images")
    defs = hydra_definitions(tmp_path, catalog_url=postgres_database_url)
    with dg.instance_for_test(overrides=postgres_instance_overrides(postgres_database_url)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        concurrency = instance.get_concurrency_config()
        limits = {limit["key"]: limit for limit in concurrency.run_queue_config.tag_concurrency_limits}
        assert concurrency.run_queue_config.max_concurrent_runs == 2
        assert limits["hydra/overnight"]["limit"] == 1
        assert limits["hydra/lora-queen"]["value"] == {"applyLimitPerUniqueValue": True}
        assert concurrency.pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled

        instance.add_dynamic_partitions(QUEENS, [SLUG])
        for job_name, key in (
            ("queen_reference_job", SLUG),
            ("queen_lora_job", SLUG),
            ("overnight_job", queen_night_key(SLUG, NIGHT)),
        ):
            result = defs.resolve_job_def(job_name).execute_in_process(partition_key=key, instance=instance)
            assert result.success, job_name
            if job_name == "queen_lora_job":  # the per-queen training lock dagster.yaml limits
                assert instance.get_run_by_id(result.run_id).tags["hydra/lora-queen"] == SLUG
        overnight_run = instance.get_run_by_id(result.run_id)
        assert overnight_run.tags["hydra/overnight"] == "true"
        assert instance.get_materialized_partitions(dg.AssetKey("approved_images")) == {queen_night_key(SLUG, NIGHT)}
        # a step of an asset with a pool claims a slot in it: the pool now exists on the instance
        assert "gpu-5070ti" in instance.event_log_storage.get_concurrency_keys()

    manifest = json.loads((StorageLayout(tmp_path / "storage").generated_dir(NIGHT, SLUG) / "manifest.json").read_text())
    engine = sa.create_engine(postgres_database_url)
    with engine.connect() as connection:
        assets = connection.execute(sa.text(
            "select g.file_hash, g.approved, g.rejection_reason from generated_assets g "
            "join queens q on q.id = g.queen_id where q.slug = :slug"), {"slug": SLUG}).all()
        lora = connection.execute(sa.text(
            "select l.version, l.status, l.base_model from lora_models l join queens q on q.id = l.queen_id "
            "where q.slug = :slug"), {"slug": SLUG}).all()
        counts = connection.execute(sa.text(
            "select portrait_count + expression_count + pose_count from queens where slug = :slug"),
            {"slug": SLUG}).scalar_one()
        events = dict(connection.execute(sa.text(
            "select event_type, count(*) from events where correlation_id = :run group by event_type"),
            {"run": overnight_run.run_id}).all())
    engine.dispose()
    assert sorted(a.file_hash for a in assets) == sorted(e["sha256"] for e in manifest["images"])
    assert all(a.approved or a.rejection_reason for a in assets)
    assert [(v, s) for v, s, _ in lora] == [(1, "ready")]
    assert counts == sum(1 for a in assets if a.approved) > 0
    assert events == {
        "pipeline.overnight.started": 1, "generation.image.created": len(assets),
        "generation.image.approved": counts,
        **({"generation.image.rejected": len(assets) - counts} if len(assets) > counts else {}),
        "pipeline.overnight.completed": 1,
    }
