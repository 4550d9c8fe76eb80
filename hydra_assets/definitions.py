"""The code location: one Definitions, resources picked by HYDRA_ENV in this one place."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_k8s import k8s_job_executor

from hydra_assets.chapters import CHAPTER_ASSETS
from hydra_assets.chapters.dialogue import build_chapter_dialogue, chapter_dialogue
from hydra_assets.domain import embeddings as embedding_contract
from hydra_assets.generation import generated_images
from hydra_assets.lora import queen_lora
from hydra_assets.quality import QUALITY_ASSETS
from hydra_assets.queen_profile import queen_profile
from hydra_assets.references import reference_identity, reference_images
from hydra_assets.settings import SETTINGS, Settings
from hydra_assets.voice import build_voice_lines, voice_lines
from jobs import jobs_for
from resources.alerts import WebhookNotifier
from resources.catalog import CatalogResource
from resources.chapters import ChapterScripts
from resources.embeddings import EmbeddingStore
from resources.events import EventPublisher
from resources.face import DlibFaceBackend, InsightFaceBackend
from resources.image import ComfyUIBackend, DemoRenderer
from resources.llm import llm_resources
from resources.lora_training import LoraTrainer
from resources.metrics import MetricsPusher
from resources.scoring import ClassicalTechnical, ImageStatsAestheticProxy, LaionAesthetic, Musiq
from resources.storage import HydraStorage
from resources.voice import EspeakBackend, GptSovitsBackend, VoiceBackend
from sensors import (
    build_lora_ready_sensor,
    build_night_publish_sensor,
    build_chapters_sensor,
    build_generation_task_sensor,
    build_low_approval_sensor,
    build_overnight_schedule,
    build_report_automation_sensor,
    build_roster_sensor,
    build_run_failure_sensor,
    chapter_index,
    roster_index,
)

ASSETS = [
    queen_profile,
    reference_images,
    reference_identity,
    roster_index,
    queen_lora,
    generated_images,
    *QUALITY_ASSETS,
    voice_lines,
    chapter_index,
    *CHAPTER_ASSETS,
]


def local_resources(settings: Settings = SETTINGS) -> dict[str, Any]:
    """Embedded default: files under ./var, SQLite catalog, dlib faces; no GPU, server or network."""
    return {
        "storage": HydraStorage(root=settings.storage_root, roster_dir=settings.roster_dir),
        "catalog": CatalogResource(url=settings.catalog_url),
        # catalog only unless HYDRA_REDIS_URL is set
        "events": EventPublisher(catalog_url=settings.catalog_url, redis_url=settings.redis_url, environment=settings.env),
        "face": DlibFaceBackend(),
        "webhook": WebhookNotifier(url=settings.webhook_url),
        "metrics": MetricsPusher(pushgateway_url=settings.pushgateway_url),
        # A tiny diffusion model built in code: the real training loop, on CPU, in seconds.
        "lora_trainer": LoraTrainer(base_model="tiny", max_steps=50, max_resolution=64, batch_size=2, cpu_threads=1),
        "image_backend": DemoRenderer(),
        # no endpoint (HYDRA_LLM_BASE_URL unset): template prompts and the writer's lines
        **llm_resources(settings.llm_base_url, model=settings.llm_model),
        "aesthetic": ImageStatsAestheticProxy(),
        "technical": ClassicalTechnical(),
        "voice": EspeakBackend(loudness_target_lufs=settings.loudness_target_lufs),
        # qdrant-client's local mode in a folder under the storage root (a server when HYDRA_QDRANT_URL is set);
        # sizes of dlib and the tiny-image embedding
        "embeddings": EmbeddingStore(
            path=str(Path(settings.storage_root) / "qdrant"),
            url=settings.qdrant_url,
            face_size=embedding_contract.DLIB_FACE_SIZE,
            style_size=embedding_contract.TINY_IMAGE_SIZE,
            visual_size=embedding_contract.TINY_IMAGE_SIZE,
        ),
        "chapter_scripts": ChapterScripts(chapters_dir=settings.chapters_dir),
    }


def cluster_resources() -> dict[str, Any]:
    """The studio's cluster: every location and secret from the pod's environment."""
    return {
        "storage": HydraStorage(root=dg.EnvVar("HYDRA_STORAGE_ROOT"), roster_dir=dg.EnvVar("HYDRA_ROSTER_DIR")),
        "catalog": CatalogResource(url=dg.EnvVar("HYDRA_CATALOG_URL")),
        "events": EventPublisher(
            catalog_url=dg.EnvVar("HYDRA_CATALOG_URL"), redis_url=dg.EnvVar("HYDRA_REDIS_URL"), environment="cluster"
        ),
        "face": InsightFaceBackend(model_root=dg.EnvVar("HYDRA_INSIGHTFACE_ROOT")),
        "webhook": WebhookNotifier(url=dg.EnvVar("HYDRA_WEBHOOK_URL")),
        "metrics": MetricsPusher(pushgateway_url=dg.EnvVar("HYDRA_PUSHGATEWAY_URL")),
        "lora_trainer": LoraTrainer(
            base_model="sdxl",
            model_path=dg.EnvVar("HYDRA_SDXL_MODEL_PATH"),
            mixed_precision="bf16",
            batch_size=1,
            gradient_checkpointing=True,
            log_every=50,
        ),
        "image_backend": ComfyUIBackend(base_url=dg.EnvVar("HYDRA_COMFYUI_URL"), workflows_dir=SETTINGS.workflows_dir),
        # the studio's LLM when the deployment names one; its key from the Secret
        **llm_resources(
            dg.EnvVar("HYDRA_LLM_BASE_URL") if SETTINGS.llm_base_url else None,
            model=SETTINGS.llm_model,
            api_key=dg.EnvVar("HYDRA_LLM_API_KEY"),
        ),
        "aesthetic": LaionAesthetic(
            clip_checkpoint_path=dg.EnvVar("HYDRA_CLIP_CHECKPOINT"), mlp_path=dg.EnvVar("HYDRA_LAION_MLP")
        ),
        "technical": Musiq(model_path=dg.EnvVar("HYDRA_MUSIQ_WEIGHTS")),
        "voice": GptSovitsBackend(url=dg.EnvVar("HYDRA_GPT_SOVITS_URL"), loudness_target_lufs=SETTINGS.loudness_target_lufs),
        "embeddings": EmbeddingStore(
            url=dg.EnvVar("HYDRA_QDRANT_URL"),
            api_key=dg.EnvVar("HYDRA_QDRANT_API_KEY"),
            face_size=embedding_contract.INSIGHTFACE_SIZE,
            style_size=embedding_contract.CLIP_VIT_L14_SIZE,
            visual_size=embedding_contract.CLIP_VIT_L14_SIZE,
        ),
        "chapter_scripts": ChapterScripts(chapters_dir=dg.EnvVar("HYDRA_CHAPTERS_DIR")),
    }


def assets_for(resources: Mapping[str, Any]) -> list[Any]:
    """ASSETS, with voice steps tagged for where the configured voice backend runs its model."""
    voice = resources.get("voice")
    if not isinstance(voice, VoiceBackend):
        return list(ASSETS)
    profile = voice.workload_profile()
    rebuilt = {id(voice_lines): build_voice_lines(profile), id(chapter_dialogue): build_chapter_dialogue(profile)}
    return [rebuilt.get(id(asset), asset) for asset in ASSETS]


EXECUTOR_BY_ENV = {"local": None, "cluster": k8s_job_executor}
"""Embedded: Dagster's default multiprocess executor. Cluster: one pod per step, so each GPU
asset's step gets the pod its workload profile describes (dagster-k8s/config op tags); the
queen × night jobs override it with the in-process executor (jobs.jobs_for)."""


def build_definitions(resources: Mapping[str, Any], *, env: str = "local") -> dg.Definitions:
    """Sensors and the schedule run by default in the embedded profile; on the cluster an operator turns them on."""
    running = env == "local"
    sensor_status = dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
    schedule_status = dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED
    return dg.Definitions(
        assets=assets_for(resources),
        jobs=jobs_for(env),
        schedules=[build_overnight_schedule(schedule_status)],
        sensors=[
            build_roster_sensor(sensor_status),
            build_lora_ready_sensor(sensor_status),
            build_report_automation_sensor(sensor_status),
            build_night_publish_sensor(sensor_status),
            build_low_approval_sensor(sensor_status),
            build_run_failure_sensor(sensor_status),
            build_chapters_sensor(sensor_status),
            build_generation_task_sensor(sensor_status),
        ],
        resources=dict(resources),
        executor=EXECUTOR_BY_ENV[env],
    )


RESOURCES_BY_ENV = {"local": local_resources, "cluster": cluster_resources}

defs = build_definitions(RESOURCES_BY_ENV[SETTINGS.env](), env=SETTINGS.env)
