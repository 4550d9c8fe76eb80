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
GENERATION_ASSETS = ("generated_images",)
PUBLISH_ASSETS = ("image_scores", "approved_images")

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


def _per_queen_night_jobs(executor_def: dg.ExecutorDefinition | None) -> list:
    """The queen × night jobs. On the cluster they run in their run's pod (in-process executor): their
    GPU work is ComfyUI's (a server) and night_scores' (one step pod per night), not theirs."""
    overnight = dg.define_asset_job(
        "overnight_job",
        selection=dg.AssetSelection.assets(*OVERNIGHT_ASSETS),
        tags={OVERNIGHT_TAG: "true", **run_priority_tags("image-generation-sdxl", "quality-scoring")},
        executor_def=executor_def,
        description="One queen × night: generate → score → publish in one run (`hydra demo`, a manual re-run). "
        "The night's report follows the last queen's run.",
    )
    generation = dg.define_asset_job(
        "overnight_generation_job",
        selection=dg.AssetSelection.assets(*GENERATION_ASSETS),
        tags={OVERNIGHT_TAG: "true", **run_priority_tags("image-generation-sdxl")},
        executor_def=executor_def,
        description="One queen × night: tonight's images (the schedule's runs); night_scores follows the night's last.",
    )
    publish = dg.define_asset_job(
        "overnight_publish_job",
        selection=dg.AssetSelection.assets(*PUBLISH_ASSETS),
        tags={OVERNIGHT_TAG: "true", **run_priority_tags("quality-scoring")},
        executor_def=executor_def,
        description="One queen × night: gate her images from night_scores' raw scores and publish them.",
    )
    return [overnight, generation, publish]


overnight_job, overnight_generation_job, overnight_publish_job = _per_queen_night_jobs(None)

night_scores_job = dg.define_asset_job(
    "night_scores_job",
    selection=dg.AssetSelection.assets("night_scores"),
    tags=run_priority_tags("quality-scoring"),
    description="One night: every queen's images scored in one GPU step (its automation condition runs it too).",
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

ALL_JOBS = [
    queen_reference_job, queen_lora_job, overnight_job, overnight_generation_job, night_scores_job,
    overnight_publish_job, quality_report_job, queen_voice_job, chapter_job,
]


def jobs_for(env: str) -> list:
    """ALL_JOBS; on the cluster the queen × night jobs get the in-process executor (one pod per run)."""
    if env != "cluster":
        return list(ALL_JOBS)
    per_queen = {job.name: job for job in _per_queen_night_jobs(dg.in_process_executor)}
    return [per_queen.get(job.name, job) for job in ALL_JOBS]
