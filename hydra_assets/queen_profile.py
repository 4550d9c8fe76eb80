"""queen_profile: the validated roster entry every later stage reads."""


import json

import dagster as dg

from hydra_assets.domain.prompts import build_prompts
from hydra_assets.domain.roster import RosterError
from hydra_assets.domain.storage import atomic_write_json, sha256_bytes, sha256_file
from hydra_assets.failures import roster_failure
from hydra_assets.partitions import queens_partitions
from resources.catalog import CatalogResource
from resources.storage import HydraStorage


@dg.asset(
    partitions_def=queens_partitions,
    group_name="roster",
    kinds={"yaml", "json"},
    description="The queen's roster entry, validated, with the prompt text built from her DNA.",
)
def queen_profile(context: dg.AssetExecutionContext, storage: HydraStorage, catalog: CatalogResource):
    slug = context.partition_key
    try:
        path = storage.roster_file(slug)
        queen = storage.load_queen(slug)
    except RosterError as error:
        raise roster_failure(error) from error
    prompts = build_prompts(queen)
    document = {
        "queen": queen.model_dump(mode="json"),
        "prompts": {"positive": prompts.positive, "negative": prompts.negative},
        "roster_file": str(path),
        "roster_sha256": sha256_file(path),
    }
    profile_path = atomic_write_json(storage.layout.profile_path(slug), document)
    queen_id = catalog.upsert_queen(queen)
    content_hash = sha256_bytes(json.dumps(document["queen"], sort_keys=True).encode())
    return dg.MaterializeResult(
        metadata={
            "name": queen.name,
            "title": queen.title,
            "tier": queen.tier,
            "roster_file": dg.MetadataValue.path(str(path)),
            "profile": dg.MetadataValue.path(str(profile_path)),
            "positive_prompt": dg.MetadataValue.text(prompts.positive),
            "negative_prompt": dg.MetadataValue.text(prompts.negative),
            "targets": dg.MetadataValue.json(queen.generation_config.targets),
            "catalog_queen_id": queen_id,
        },
        data_version=dg.DataVersion(content_hash[:16]),
    )
