"""generated_images: one queen's overnight batch, made by the configured image backend.

Re-materializing a partition redoes only what is missing: an image whose slot and
parameters are unchanged and whose file still matches its recorded sha256 is reused, and an
image written just before a crash (file on disk, manifest not yet updated) is adopted from
its PNG chunk. The manifest is rewritten after every image, so a killed run resumes where it
stopped.
"""

import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image
from pydantic import Field

from hydra_assets.domain import generation as gen
from hydra_assets.domain import generation_tasks as tasks
from hydra_assets.domain import workflows as wf
from hydra_assets.domain.events import EventType
from hydra_assets.domain.images import contact_sheet
from hydra_assets.domain.metrics import PipelineMetrics
from hydra_assets.domain.stage_events import image_created, night_stats, pipeline
from hydra_assets.domain.storage import StorageLayout, atomic_write_bytes, atomic_write_json, read_json
from hydra_assets.failures import BACKEND_DOWN_RETRY, final_failure, load_queen
from hydra_assets.generation_tasks import GenerationTaskRun, mark_running, task_images
from hydra_assets.gpu import gpu_asset_kwargs
from hydra_assets.metadata import markdown_table, png_preview
from hydra_assets.partitions import queen_nights_partitions
from hydra_assets.review.links import partition_review_url
from hydra_assets.settings import SETTINGS
from resources.catalog import CatalogResource
from resources.events import EventPublisher
from resources.http import HttpDeadlineExceeded, HttpUnavailable
from resources.image import ComfyUITimeout, ComfyUIUnavailable, ImageBackend
from resources.llm import PromptExpander
from resources.metrics import MetricsPusher
from resources.storage import HydraStorage

BACKEND_DOWN_ERRORS = (ComfyUIUnavailable, ComfyUITimeout, HttpUnavailable, HttpDeadlineExceeded, ConnectionError, TimeoutError)
"""Errors of a server that is down or stalled for a while: the step is retried (BACKEND_DOWN_RETRY);
anything else (a missing model file, a refused graph) fails at once."""

CONTACT_SHEET_LIMIT = 24
CHECK_NAME = "all_planned_images_generated"
with warnings.catch_warnings():
    # Beta in Dagster 1.13, and exactly the mapping a queen × night asset needs onto a per-queen one.
    warnings.simplefilter("ignore", dg.BetaWarning)
    QUEEN_DIMENSION = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="queen")


class GenerationConfig(dg.Config):
    per_night_budget: int = Field(default=48, ge=0, description="Most images per queen per night; targets are scaled to fit.")
    asset_types: list[str] = Field(
        default_factory=lambda: list(gen.DEFAULT_ASSET_TYPES), description="Types to make, each from the queen's target_<type>s."
    )
    steps: int = Field(default=30, ge=1, le=200)
    cfg: float = Field(default=6.5, ge=0.0, le=30.0)
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    width: int = Field(default=1024, ge=64, le=4096, multiple_of=8, description="Latents are 1/8 of the image.")
    height: int = Field(default=1024, ge=64, le=4096, multiple_of=8)
    batch_size: int = Field(
        default=1, ge=1, le=16, description="Images per prompt (ComfyUI's hydra.size batch_size); each is kept as its own manifest line."
    )
    task: GenerationTaskRun | None = Field(default=None, description="A generation task's images instead of the nightly targets.")

    def sampling(self) -> gen.Sampling:
        return gen.Sampling(self.steps, self.cfg, self.sampler, self.scheduler, self.width, self.height)


@dataclass
class PartitionRun:
    """What one materialization did to a partition folder."""

    manifest: gen.PartitionManifest
    reused: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    model_seconds: float = 0.0
    backend_error: str | None = None
    backend_down: bool = False
    """The backend failed as a whole in a way that can pass (server unreachable or timing out)."""


def current_lora(layout: StorageLayout, slug: str, strength: float) -> gen.LoraSpec | None:
    """The LoRA queen_lora last published for the queen, or None before the first one."""
    path = layout.lora_info_path(slug)
    try:
        info = read_json(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable LoRA info ({exc})") from exc
    if info is None:
        return None
    return gen.lora_spec_from_info(info, layout.lora_path(slug).parent, strength, path)


def workflow_inputs(
    queen: Any, counts: dict[str, int], backend: ImageBackend, entries: list, identity: dict, root: Path, by_type: dict
) -> dict[str, Any]:
    """For a backend that runs workflow templates: the roster's template per type (default the
    SPEC graph), the model each really loads, her face reference and style sets."""
    if not backend.workflow_names():
        return {}
    chosen = {t: queen.generation_config.workflows.get(t, wf.DEFAULT_WORKFLOW) for t in counts}
    return {
        "workflows": chosen,
        "models": {t: backend.model_for(name) for t, name in chosen.items()},
        "face_reference": wf.face_reference(entries, identity, root, queen.generation_config.instant_id_reference),
        "style_references": {t: wf.style_set(by_type.get(t, [])) for t in counts},
    }


def generate_partition(
    plan: Sequence[gen.GenerationRequest],
    folder: Path,
    header: dict[str, Any],
    backend: ImageBackend,
    log: Any = None,
    task_id: int | None = None,
    on_image: Callable[[dict[str, Any]], object] | None = None,
) -> PartitionRun:
    """Reuse what is valid on disk, make the rest, and keep the manifest current after each image.

    The plan is the nightly one (``task_id`` None) or one generation task's: images of the
    partition outside that scope are carried over untouched. ``on_image`` is called with the
    manifest entry of each image made now (not of reused ones).
    """
    log = log or logging.getLogger(__name__)
    manifest_path = Path(folder) / gen.MANIFEST_NAME
    try:
        previous = gen.read_manifest(manifest_path)
    except ValueError as exc:
        log.warning(str(exc))
        previous = None
    previous, carried, header = tasks.scoped_manifest(previous, header, task_id)
    recorded = {entry.get("image_id"): entry for entry in (previous or {}).get("images", [])}
    manifest = gen.PartitionManifest(header, list(plan), superseded=gen.superseded_entries(previous, plan, folder), carried=carried)
    run = PartitionRun(manifest)

    todo = []
    for request in plan:
        entry = recorded.get(request.image_id)
        if entry is not None and gen.valid_entry(entry, folder, request):
            run.manifest.record_image(entry)
            for image_id, extra in recorded.items():  # the same prompt's further outputs
                parent, output = gen.parent_of(str(image_id))
                if output and parent == request.image_id and gen.valid_entry(extra, folder, gen.output_request(request, output)):
                    run.manifest.record_image(extra)
        elif (recovered := gen.recover_entry(folder, request)) is not None:
            run.manifest.record_image(recovered)
        else:
            todo.append(request)
            continue
        run.reused.append(request.image_id)
    atomic_write_json(manifest_path, run.manifest.to_document())

    remaining = {request.image_id: request for request in todo}
    try:
        for result in backend.generate(todo, log=log):
            remaining.pop(result.request.image_id, None)
            request = gen.output_request(result.request, result.output_index)
            run.model_seconds += result.model_seconds
            entry = None
            if result.error is not None or result.image is None:
                error = result.error or f"{backend.backend_name()} returned no image"
                log.warning(f"{request.image_id}: {error}")
                run.manifest.record_failure(gen.failure_entry(request, error))
            else:
                png = gen.encode_png(result.image, request.params, result.details)
                try:
                    atomic_write_bytes(Path(folder) / request.file, png)
                except OSError as exc:  # disk full, quota, read-only: this image failed, the others go on
                    log.warning(f"{request.image_id}: {exc}")
                    run.manifest.record_failure(gen.failure_entry(request, str(exc)))
                else:
                    entry = gen.manifest_entry(request, png, result.image.width, result.image.height, gen.utc_now(), result.details)
                    run.manifest.record_image(entry)
                    run.new.append(request.image_id)
            atomic_write_json(manifest_path, run.manifest.to_document())
            if entry is not None and on_image is not None:
                on_image(entry)
    except Exception as exc:  # the backend as a whole broke (no model, server gone): record, then judge below
        run.backend_error = f"{type(exc).__name__}: {exc}"
        run.backend_down = isinstance(exc, BACKEND_DOWN_ERRORS)
        log.error(f"{backend.backend_name()} stopped: {run.backend_error}")
        for request in remaining.values():
            run.manifest.record_failure(gen.failure_entry(request, run.backend_error))
        atomic_write_json(manifest_path, run.manifest.to_document())
    return run


def _sheet(folder: Path, entries: list[dict[str, Any]]) -> bytes:
    thumbs = []
    for entry in entries[:CONTACT_SHEET_LIMIT]:
        with Image.open(folder / entry["file"]) as image:
            image.draft("RGB", (192, 192))
            thumb = image.convert("RGB")
        thumb.thumbnail((192, 192))
        degraded = (entry.get("details") or {}).get("degraded")
        thumbs.append((thumb, f"{entry['asset_type']}-{entry['index']:03d}" + (f" {degraded}" if degraded else "")))
    return contact_sheet(thumbs)


@dg.asset(
    partitions_def=queen_nights_partitions,
    group_name="generation",
    deps=[
        dg.AssetDep("queen_profile", partition_mapping=QUEEN_DIMENSION),
        dg.AssetDep("queen_lora", partition_mapping=QUEEN_DIMENSION),
    ],
    kinds={"png"},
    retry_policy=BACKEND_DOWN_RETRY,
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset="generated_images",
            description="Every image planned for the night was made (failed ones are listed in the manifest).",
        )
    ],
    description=(
        "Tonight's images of one queen (portraits, expressions, poses; types are configuration): her targets "
        "capped by the per-night budget, prompts from her DNA, her current LoRA, seeds fixed per slot. "
        "Each image is a PNG with its parameters, listed with its sha256 in the partition's manifest."
    ),
    **gpu_asset_kwargs("image-generation-sdxl"),
)
def generated_images(
    context: dg.AssetExecutionContext,
    config: GenerationConfig,
    storage: HydraStorage,
    image_backend: ImageBackend,
    metrics: MetricsPusher,
    prompt_expander: PromptExpander,
    catalog: CatalogResource,
    events: EventPublisher,
):
    keys = queen_nights_partitions.get_partition_key_from_str(context.partition_key).keys_by_dimension
    slug, night = keys["queen"], keys["night"]
    layout = storage.layout
    queen = load_queen(storage, slug)

    references_path = layout.reference_manifest(slug)
    references = read_json(references_path)
    if references is None:
        raise final_failure(f"{references_path} is missing: materialize reference_images for {slug} first")
    try:
        lora = current_lora(layout, slug, queen.generation_config.lora_strength)
    except ValueError as error:
        raise final_failure(str(error)) from error
    # The demo renderer derives from photos; skip the ones reference_identity found no face in.
    identity = read_json(layout.identity_dir(slug) / "identity.json") or {}

    try:
        asset_types = gen.check_asset_types(config.asset_types)
    except ValueError as error:
        raise final_failure(f"generated_images config: {error}") from error
    counts = gen.nightly_counts(queen.generation_config.targets, asset_types, config.per_night_budget)
    if task := config.task:
        counts = {task.asset_type: task.count}
        mark_running(catalog, task, context)
    generative = type(image_backend).generative
    by_type = gen.references_by_type(
        references.get("entries", []), layout.normalized_references(slug), list(counts), identity.get("no_face", [])
    )
    try:
        templates = workflow_inputs(queen, counts, image_backend, references.get("entries", []), identity, layout.normalized_references(slug), by_type)
    except wf.WorkflowError as error:
        raise final_failure(f"{slug}: {error}") from error
    plan = gen.plan_night(
        queen=queen,
        night=night,
        counts=counts,
        sampling=config.sampling(),
        model=image_backend.model_name(),
        backend=image_backend.backend_name(),
        generative=generative,
        lora=lora if generative else None,  # a non-generative renderer uses no LoRA; its images must not claim one
        reference_set_hash=references["reference_set_hash"],
        references=by_type,
        batch_size=config.batch_size,
        **templates,
    )
    expansions = prompt_expander.expand(gen.expansion_requests(plan), log=context.log, cache_dir=str(layout.root / "cache" / "prompt_expansion"))
    plan = gen.with_expansions(plan, expansions)
    if task:
        plan = tasks.task_plan(plan, task.task_id, task.prompt_addition)
    sources = Counter(e.source for e in expansions)
    header = {
        "queen": slug,
        "night": night,
        "backend": image_backend.backend_name(),
        "backend_kind": image_backend.backend_kind(),
        "model": image_backend.model_name(),
        "generative": generative,
        "reference_set_hash": references["reference_set_hash"],
        "lora": lora.to_manifest() if lora else None,
        "planned": counts,
        "prompt_sources": dict(sources),
        **({"workflows": templates["workflows"]} if templates else {}),
    }
    folder = layout.generated_dir(night, slug)
    context.log.info(f"{slug} × {night}: {len(plan)} images planned {counts} with {image_backend.backend_name()}")
    started = time.perf_counter()
    stream, queen_id = events.for_step(context), events.queen_id(slug)
    stream.emit(EventType.OVERNIGHT_STARTED, pipeline(stream.correlation_id, "generated_images", "started"))

    def created(entry: dict[str, Any]) -> None:
        path = (folder / entry["file"]).resolve().relative_to(layout.root.resolve()).as_posix()
        stream.emit(EventType.IMAGE_CREATED, image_created(entry, path=path, queen_id=queen_id))

    run = generate_partition(plan, folder, header, image_backend, log=context.log, on_image=created,
                             task_id=task.task_id if task else None)
    dashboard = PipelineMetrics()
    dashboard.generation_duration.labels("generation", slug).observe(time.perf_counter() - started)
    pushed = metrics.push(dashboard, {"queen": slug, "night": night, "task": "generation"})

    document = run.manifest.to_document()
    entries, failed = document["images"], document["failed"]
    if task:
        catalog.update_task(task.task_id, completed_count=len(task_images(entries, task.task_id)))
    failures = markdown_table(
        [{"image": f["image_id"], "error": f["error"][:300]} for f in failed], ["image", "error"]
    )
    if plan and not entries:
        stats = night_stats(planned=len(plan), generated=0, failed=len(failed), approved=0)
        stream.emit(EventType.OVERNIGHT_COMPLETED, pipeline(stream.correlation_id, "generated_images", "failed", stats))
        # A backend that is down as a whole (server unreachable) may be back on the next attempt
        # (BACKEND_DOWN_RETRY); images that each failed on their own will fail the same way again.
        raise dg.Failure(
            description=f"no image of {slug} × {night} could be made; first error: {failed[0]['error'] if failed else '?'}",
            metadata={"failed": len(failed), "failures": failures, "manifest": dg.MetadataValue.path(str(folder / gen.MANIFEST_NAME))},
            allow_retries=run.backend_down,
        )
    type_of = {request.image_id: request.asset_type for request in plan}
    tallies = {
        "present": Counter(entry["asset_type"] for entry in entries),
        "new": Counter(type_of[i] for i in run.new),
        "reused": Counter(type_of[i] for i in run.reused),
        "failed": Counter(f["asset_type"] for f in failed),
    }
    per_type = {t: {"planned": n, **{name: tally.get(t, 0) for name, tally in tallies.items()}} for t, n in counts.items()}
    degraded = sum(1 for e in entries if (e.get("details") or {}).get("degraded"))
    complete = not failed
    return dg.MaterializeResult(
        metadata={
            "images": len(entries),
            "per_type": dg.MetadataValue.json(per_type),
            "new": len(run.new),
            "reused": len(run.reused),
            "failed": len(failed),
            "failures": failures,
            "backend": image_backend.backend_name(),
            "backend_kind": image_backend.backend_kind(),
            "generative": generative,
            "model": image_backend.model_name(),
            "model_seconds": round(run.model_seconds, 3),
            "lora_version": lora.version if lora else None,
            "prompt_sources": dg.MetadataValue.json(dict(sources)),
            "reference_set_hash": references["reference_set_hash"],
            **({"degraded_on_purpose": degraded} if not generative else {}),
            "manifest": dg.MetadataValue.path(str(folder / gen.MANIFEST_NAME)),
            "contact_sheet": png_preview(_sheet(folder, entries), f"{slug} {night}"),
            "review": dg.MetadataValue.url(partition_review_url(SETTINGS.review_url, night, slug)),
            "metrics": dg.MetadataValue.json(dashboard.samples()),
            "metrics_pushed": pushed,
            **stream.metadata(),
        },
        data_version=dg.DataVersion(gen.images_data_version(entries)[:16]),
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_NAME,
                passed=complete,
                severity=dg.AssetCheckSeverity.WARN,
                description=None if complete else f"{len(failed)} of {len(plan)} images failed; re-materialize to retry them",
                metadata={"planned": len(plan), "present": len(entries), "failed": len(failed)},
            )
        ],
    )
