"""queen_lora: the queen's LoRA, trained on her references and versioned by what it was trained on."""


from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from PIL import Image
from safetensors import SafetensorError

from hydra_assets.domain import lora as domain
from hydra_assets.domain.damaged_files import DamagedFileError, identity_document, read_reference_manifest
from hydra_assets.domain.events import EventType
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.stage_events import lora_training
from hydra_assets.domain.storage import (
    StorageLayout,
    atomic_create_bytes,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    sha256_bytes,
    sha256_file,
)
from hydra_assets.failures import load_queen
from hydra_assets.gpu import gpu_asset_kwargs
from hydra_assets.domain.charts import loss_curve_png
from hydra_assets.metadata import png_preview, table
from hydra_assets.partitions import queens_partitions
from hydra_assets.run_tags import LORA_LOCK_TAG, PARTITION_TAG
from resources.catalog import CatalogResource, QueenRow
from resources.events import EventPublisher, EventStream
from resources.lora_files import read_lora_header, serialize_lora
from resources.lora_training import LoraTrainer, TrainingImage, TrainingProgress
from resources.storage import HydraStorage

WORKLOAD = "lora-training-sdxl"
LORA_JOB = "queen_lora_job"
QUEEN_LORA_KEY = dg.AssetKey("queen_lora")
IN_PROGRESS_STATUSES = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)


class QueenLoraConfig(dg.Config):
    faces_only: bool = True
    """Train only on references where the identity found the queen's face."""
    force_retrain: bool = False
    """Train a new version even when one with the same training hash exists."""


@dg.asset(
    partitions_def=queens_partitions,
    group_name="lora",
    deps=["reference_images", "reference_identity"],
    kinds={"pytorch", "safetensors"},
    description=(
        "The queen's LoRA (UNet attention, diffusers + peft) trained on her references; every version kept, "
        "the current one at assets/loras/{slug}_lora.safetensors for ComfyUI and diffusers."
    ),
    **gpu_asset_kwargs(WORKLOAD),
)
def queen_lora(
    context: dg.AssetExecutionContext,
    config: QueenLoraConfig,
    storage: HydraStorage,
    lora_trainer: LoraTrainer,
    catalog: CatalogResource,
    events: EventPublisher,
):
    slug = context.partition_key
    layout = storage.layout
    queen = load_queen(storage, slug)

    manifest_path = layout.reference_manifest(slug)
    identity_path = layout.identity_dir(slug) / "identity.json"
    try:
        manifest = read_reference_manifest(manifest_path, slug)
        identity = identity_document(identity_path, slug)
    except DamagedFileError as error:
        raise dg.Failure(str(error), metadata={"file": str(error.path)}) from error
    if manifest is None:
        raise dg.Failure(f"{manifest_path} is missing: materialize reference_images for {slug} first")
    if config.faces_only:
        if identity is None:
            raise dg.Failure(f"{identity_path} is missing: materialize reference_identity for {slug} first")
        if identity.get("reference_set_hash") != manifest["reference_set_hash"]:
            raise dg.Failure(
                f"{identity_path} was computed for other references than {manifest_path}: "
                f"materialize reference_identity for {slug} again"
            )

    settings = domain.training_settings(
        queen, max_steps=lora_trainer.max_steps, max_resolution=lora_trainer.max_resolution
    )
    try:
        examples, skipped = domain.select_training_examples(
            manifest, identity, queen, layout.normalized_references(slug), faces_only=config.faces_only
        )
    except domain.CaptionTemplateError as error:
        where = f"{storage.roster_file(slug)}: generation_config.lora_training"
        raise dg.Failure(description=f"{where}: {error}") from error
    for source, reason in skipped.items():
        context.log.info(f"{slug}: not training on {source}: {reason}")
    images = _load_images(context, slug, examples)
    if not images:
        raise dg.Failure(f"{slug}: no usable reference to train on ({len(skipped)} skipped: {skipped})")
    used = [example for example in examples if example.source in images]
    base_model = lora_trainer.base_model_id()
    reference_set_hash = manifest["reference_set_hash"]
    new_hash = domain.training_hash(reference_set_hash, settings, base_model, used)

    versions_dir = layout.lora_versions_dir(slug)
    on_disk = domain.versions_on_disk(slug, (p.name for p in versions_dir.glob("*.safetensors")))
    headers = {version: _header(context, versions_dir / name) for version, name in on_disk.items()}
    plan = domain.plan_version(
        new_hash, {v: (h or {}).get("training_hash") for v, h in headers.items()}, force=config.force_retrain
    )
    strength = queen.generation_config.lora_strength
    previous_version = _readable_info(layout.lora_info_path(slug), context.log).get("version")
    stream = events.for_step(context)

    if plan.reuse:
        version_path = versions_dir / on_disk[plan.version]
        header = headers[plan.version]
        data = version_path.read_bytes()
        info = _publish_current(layout, slug, version_path, data, header, strength)
        catalog.record_lora_version(slug, **_catalog_row_from_header(header, version_path, len(data)))
        _advance_status(catalog, slug, "lora_ready")
        context.log.info(f"{slug}: v{plan.version} was trained from the same inputs ({new_hash[:12]}); reusing it")
        curve = None
    else:
        if earlier := _earlier_training_of(context, slug):
            raise dg.Failure(
                f"{slug}: run {earlier} is already training this queen's LoRA (one training per queen at a time); "
                "nothing was trained or written. Re-materialize when it has finished."
            )
        lora_trainer.check_base_model()
        info, curve = _train_new_version(
            context,
            slug=slug,
            version=plan.version,
            queen=queen,
            settings=settings,
            base_model=base_model,
            reference_set_hash=reference_set_hash,
            new_hash=new_hash,
            examples=used,
            images=images,
            trainer=lora_trainer,
            catalog=catalog,
            layout=layout,
            strength=strength,
            stream=stream,
        )
    metadata = {
        "version": info["version"],
        "reused": plan.reuse,
        "previous_version": previous_version,
        "current_changed": previous_version != info["version"],
        "training_hash": new_hash,
        "reference_set_hash": reference_set_hash,
        "base_model": info["base_model"],
        "final_loss": info["final_loss"],
        "initial_loss": info["initial_loss"],
        "steps": info["steps"],
        "training_images": len(used),
        "skipped_references": dg.MetadataValue.json(skipped),
        "settings": dg.MetadataValue.json(settings.to_dict()),
        "captions": table(
            [{"reference": e.source, "caption": e.caption} for e in used], {"reference": "string", "caption": "string"}
        ),
        "versions": table(
            _version_rows(headers, info), {"version": "int", "current": "bool", "final_loss": "float",
                                           "steps": "int", "trained_at": "string", "training_hash": "string"},
        ),
        "sha256": info["sha256"],
        "lora": dg.MetadataValue.path(info["path"]),
        "version_file": dg.MetadataValue.path(info["version_path"]),
        "versions_on_disk": dg.MetadataValue.json(sorted({*on_disk, info["version"]})),
        **stream.metadata(),
    }
    if curve is not None:
        metadata["steps_per_second"] = round(curve["steps_per_second"], 3)
        metadata["training_seconds"] = round(curve["seconds"], 2)
        metadata["device"] = curve["device"]
        metadata["loss_curve"] = png_preview(
            loss_curve_png(curve["losses"], info["initial_loss"], info["final_loss"]), f"{slug} loss"
        )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(new_hash[:16]))


def _version_rows(headers: dict[int, dict | None], info: dict) -> list[dict]:
    """Every version on disk (and the one just trained), newest first; an unreadable header leaves blanks."""
    known = {**headers, info["version"]: headers.get(info["version"]) or info}
    rows = []
    for version, header in sorted(known.items(), reverse=True):
        header = header or {}
        rows.append({
            "version": version,
            "current": version == info["version"],
            "final_loss": float(header["final_loss"]) if header.get("final_loss") is not None else None,
            "steps": int(header["steps"]) if header.get("steps") is not None else None,
            "trained_at": header.get("trained_at"),
            "training_hash": (header.get("training_hash") or "")[:16] or None,
        })
    return rows


def _trains_lora(run: dg.DagsterRun) -> bool:
    if run.asset_selection is not None:
        return QUEEN_LORA_KEY in run.asset_selection
    return run.job_name == LORA_JOB


def _earlier_training_of(context: dg.AssetExecutionContext, slug: str) -> str | None:
    """Another run training this queen that was created before this one.

    The ``hydra/lora-queen`` run tag queues a second run of queen_lora_job, but a run launched
    from the asset graph carries no such tag; this catches it. Of two overlapping runs the
    earlier one trains, so exactly one goes on.
    """
    records = context.instance.get_run_records(
        dg.RunsFilter(statuses=list(IN_PROGRESS_STATUSES), tags={PARTITION_TAG: slug})
    )
    mine = next((r for r in records if r.dagster_run.run_id == context.run_id), None)
    for record in records:
        run = record.dagster_run
        if run.run_id == context.run_id or not _trains_lora(run):
            continue
        if mine is None or (record.create_timestamp, run.run_id) < (mine.create_timestamp, context.run_id):
            return run.run_id
    return None


def _load_images(
    context: dg.AssetExecutionContext, slug: str, examples: list[domain.TrainingExample]
) -> dict[str, TrainingImage]:
    """Source → image; an unreadable file is logged and left out, never the end of the training."""
    images = {}
    for example in examples:
        try:
            with Image.open(example.path) as opened:
                images[example.source] = TrainingImage(opened.convert("RGB"), example.caption)
        except (OSError, ValueError) as error:
            context.log.warning(f"{slug}: cannot read {example.path} ({error}); training without it")
    return images


def _header(context: dg.AssetExecutionContext, path: Path) -> dict[str, str] | None:
    try:
        return domain.ours_from_header(read_lora_header(path))
    except (OSError, ValueError, SafetensorError) as error:
        context.log.warning(f"{path}: unreadable LoRA header ({error}); its version is kept but never reused")
        return None


def _train_new_version(
    context: dg.AssetExecutionContext,
    *,
    slug: str,
    version: int,
    queen: Queen,
    settings: domain.LoraTrainingSettings,
    base_model: str,
    reference_set_hash: str,
    new_hash: str,
    examples: list[domain.TrainingExample],
    images: dict[str, TrainingImage],
    trainer: LoraTrainer,
    catalog: CatalogResource,
    layout: StorageLayout,
    strength: float,
    stream: EventStream,
) -> tuple[dict, dict]:
    """Train, publish and record version ``version``; the catalog row says failed if training fails.

    Emits training.lora.started, .progress at each progress report, and .completed or .failed.
    """
    started = datetime.now(UTC)
    training_config = {
        **settings.to_dict(),
        "requested": queen.generation_config.lora_training.model_dump(mode="json"),
        "caps": {"max_steps": trainer.max_steps, "max_resolution": trainer.max_resolution},
        "training_hash": new_hash,
        "reference_set_hash": reference_set_hash,
        "references": [e.source for e in examples],
    }
    row = {
        "version": version,
        "base_model": base_model,
        "network_dim": settings.rank,
        "network_alpha": settings.alpha,
        "training_images": len(examples),
        "training_steps": settings.steps,
        "status": "training",
        "started_at": started,
        "completed_at": None,
    }
    catalog.record_lora_version(slug, **row, training_config=training_config)
    status_before = _advance_status(catalog, slug, "lora_training")
    queen_id, last = catalog.queen_id(slug), {"step": 0, "loss": None}
    stream.emit(EventType.LORA_STARTED, lora_training(stream.correlation_id, queen_id, 0, settings.steps))
    context.log.info(
        f"{slug}: training LoRA v{version} on {len(examples)} references, {settings.steps} steps at "
        f"{settings.resolution}px, rank {settings.rank}, base {base_model}"
    )

    def report(progress: TrainingProgress) -> None:
        context.log.info(
            f"{slug}: step {progress.step}/{progress.total_steps} loss {progress.loss:.4f} "
            f"(smoothed {progress.smoothed_loss:.4f}) {progress.steps_per_second:.2f} steps/s"
        )
        last.update(step=progress.step, loss=progress.loss)
        payload = lora_training(stream.correlation_id, queen_id, progress.step, progress.total_steps, loss=progress.loss)
        stream.emit(EventType.LORA_PROGRESS, payload)

    try:
        result = trainer.train([images[e.source] for e in examples], settings, progress=report)
    except Exception as error:
        payload = lora_training(stream.correlation_id, queen_id, last["step"], settings.steps, loss=last["loss"])
        stream.emit(EventType.LORA_FAILED, payload)
        catalog.record_lora_version(
            slug,
            **{**row, "status": "failed", "completed_at": datetime.now(UTC)},
            training_config={**training_config, "error": f"{type(error).__name__}: {error}"},
        )
        if status_before is not None:  # the queen is no nearer a LoRA than before this attempt
            catalog.set_queen_status(slug, status_before)
        raise

    finished = datetime.now(UTC)
    header = domain.header_metadata(
        slug=slug,
        version=version,
        base_model=base_model,
        settings=settings,
        reference_set_hash=reference_set_hash,
        training_hash_value=new_hash,
        training_images=len(examples),
        initial_loss=result.initial_loss,
        final_loss=result.final_loss,
        trained_at=finished.isoformat(),
        sdxl=trainer.is_sdxl(),
    )
    data = serialize_lora(result.state_dict, header)
    version_path = layout.lora_versions_dir(slug) / domain.version_file_name(slug, version)
    if not atomic_create_bytes(version_path, data):
        raise dg.Failure(
            f"{version_path} appeared while {slug} was training: another training of this queen ran at the "
            f"same time (the {LORA_LOCK_TAG} run tag should prevent that); nothing was overwritten"
        )
    info = _publish_current(layout, slug, version_path, data, domain.ours_from_header(header), strength)
    catalog.record_lora_version(
        slug,
        **{**row, "status": "ready", "completed_at": finished},
        final_loss=result.final_loss,
        model_path=str(version_path),
        model_size=len(data),
        training_config={**training_config, "sha256": info["sha256"], "device": result.device},
        test_scores={"initial_loss": result.initial_loss, "final_loss": result.final_loss},
    )
    _advance_status(catalog, slug, "lora_ready")
    payload = lora_training(
        stream.correlation_id, queen_id, settings.steps, settings.steps, loss=result.final_loss, output_path=str(version_path)
    )
    stream.emit(EventType.LORA_COMPLETED, payload)
    context.log.info(
        f"{slug}: LoRA v{version} ready, loss {result.initial_loss:.4f} -> {result.final_loss:.4f}, "
        f"{result.steps_per_second:.2f} steps/s on {result.device}"
    )
    curve = {
        "losses": result.losses,
        "steps_per_second": result.steps_per_second,
        "seconds": result.seconds,
        "device": result.device,
    }
    return info, curve


def _publish_current(
    layout: StorageLayout, slug: str, version_path: Path, data: bytes, ours: dict, strength: float
) -> dict:
    """Make ``version_path`` the queen's current LoRA and describe it beside it; unchanged files are left alone."""
    current = layout.lora_path(slug)
    digest = sha256_bytes(data)
    if not current.is_file() or sha256_file(current) != digest:
        atomic_write_bytes(current, data)
    info = {
        "version": int(ours["version"]),
        "sha256": digest,
        "file_name": current.name,
        "path": str(current),
        "version_file": version_path.relative_to(current.parent).as_posix(),
        "version_path": str(version_path),
        "base_model": ours["base_model"],
        "rank": int(ours["rank"]),
        "alpha": float(ours["alpha"]),
        "steps": int(ours["steps"]),
        "resolution": int(ours["resolution"]),
        "learning_rate": float(ours["learning_rate"]),
        "initial_loss": float(ours["initial_loss"]),
        "final_loss": float(ours["final_loss"]),
        "reference_set_hash": ours["reference_set_hash"],
        "training_hash": ours["training_hash"],
        "trained_at": ours["trained_at"],
        "strength": strength,
    }
    info_path = layout.lora_info_path(slug)
    if _readable_info(info_path) != info:
        atomic_write_json(info_path, info)
    return info


def _readable_info(path: Path, log: Any = None) -> dict:
    """The current LoRA's info JSON, or {} when absent or damaged: it is rebuilt from the LoRA's header."""
    try:
        info = read_json(path) or {}
    except (OSError, ValueError) as exc:
        if log is not None:
            log.warning(f"{exc}; rewritten from the current LoRA's header")
        return {}
    return info if isinstance(info, dict) else {}


def _catalog_row_from_header(ours: dict, version_path: Path, size: int) -> dict:
    """The catalog row of a version already on disk: lets a reused version's row converge (e.g. a new catalog)."""
    return {
        "version": int(ours["version"]),
        "base_model": ours["base_model"],
        "network_dim": int(ours["rank"]),
        "network_alpha": float(ours["alpha"]),
        "training_images": int(ours["training_images"]),
        "training_steps": int(ours["steps"]),
        "final_loss": float(ours["final_loss"]),
        "model_path": str(version_path),
        "model_size": size,
        "status": "ready",
        "completed_at": datetime.fromisoformat(ours["trained_at"]),
    }


def _advance_status(catalog: CatalogResource, slug: str, target: str) -> str | None:
    """Move the queen up to ``target``; returns the status she had when she was moved, else None."""
    with catalog.session() as session:
        current = session.scalar(sa.select(QueenRow.status).where(QueenRow.slug == slug))
    status = domain.advanced_status(current, target)
    if status is None:
        return None
    catalog.set_queen_status(slug, status)
    return current
