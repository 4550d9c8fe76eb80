"""Asset jobs: named selections the sensors, schedules, the UI and `hydra demo` run.

Each job carries the SPEC run priority of its most urgent GPU step, so the queued run
coordinator starts urgent work first; jobs whose runs must not overlap carry the tags that
``dagster.yaml`` limits.
"""

import dagster as dg

from hydra_assets.gpu import run_priority_tags
from hydra_assets.partitions import queens_partitions
from hydra_assets.run_tags import LORA_LOCK_TAG, OVERNIGHT_TAG

REFERENCE_ASSETS = ("queen_profile", "reference_images", "reference_identity")
OVERNIGHT_ASSETS = ("generated_images", "image_scores", "approved_images")

queen_reference_job = dg.define_asset_job(
    "queen_reference_job",
    selection=dg.AssetSelection.assets(*REFERENCE_ASSETS),
    description="Profile, references and identity of one queen: what the roster sensor runs on a change.",
)


def _lora_lock(partition_key: str) -> dict[str, str]:
    return {LORA_LOCK_TAG: partition_key}


queen_lora_job = dg.define_asset_job(
    "queen_lora_job",
    selection=dg.AssetSelection.assets("queen_lora"),
    tags=run_priority_tags("lora-training-sdxl"),
    config=dg.PartitionedConfig(
        partitions_def=queens_partitions,
        run_config_for_partition_key_fn=lambda _key: {},
        tags_for_partition_key_fn=_lora_lock,
    ),
    description=f"Train (or reuse) one queen's LoRA; one training per queen at a time ({LORA_LOCK_TAG} tag).",
)


overnight_job = dg.define_asset_job(
    "overnight_job",
    selection=dg.AssetSelection.assets(*OVERNIGHT_ASSETS),
    tags={OVERNIGHT_TAG: "true", **run_priority_tags("image-generation-sdxl", "quality-scoring")},
    description="One queen × night: generate → score → publish. The night's report follows the last queen's run.",
)

quality_report_job = dg.define_asset_job(
    "quality_report_job",
    selection=dg.AssetSelection.assets("quality_report"),
    description="The night's quality report over every queen with images that night.",
)

queen_voice_job = dg.define_asset_job(
    "queen_voice_job",
    selection=dg.AssetSelection.assets("voice_lines"),
    tags=run_priority_tags("voice-synthesis"),
    description="Synthesise the queen's dialogue; unchanged lines are reused.",
)

CHAPTER_ASSETS = ("chapter_script", "chapter_dialogue", "scene_images", "chapter_bundle")

chapter_job = dg.define_asset_job(
    "chapter_job",
    selection=dg.AssetSelection.assets(*CHAPTER_ASSETS),
    tags=run_priority_tags("image-generation-sdxl", "voice-synthesis"),
    description="One chapter: parse its script, voice its lines, make its scene images, swap in its bundle.",
)

ALL_JOBS = [queen_reference_job, queen_lora_job, overnight_job, quality_report_job, queen_voice_job, chapter_job]
