"""scene_images: candidate images of every scene, scored by the nightly gate, the best one chosen.

Each scene's prompt is its lead queen's prompt (the first queen present: her DNA, her
current LoRA) with the setting, the stage directions and the other queens present; seeds
are fixed per (chapter, scene, index), so editing a line re-renders nothing and editing a
scene's directions re-renders only that scene. Generation goes through the same backend and
loop as generated_images; scoring through the same scorers, face backend and thresholds as
image_scores (face match against the lead queen's identity). Every candidate is kept; the
passing one with the highest composite score is the scene's image.
"""


import hashlib
import json
from typing import Any

import dagster as dg
import numpy as np
from PIL import Image
from pydantic import Field

from hydra_assets.chapters import paths
from hydra_assets.chapters.backends import (
    AestheticScorer,
    FaceBackend,
    ImageBackend,
    TechnicalScorer,
    Thresholds,
    current_lora,
    generate_images,
    load_identity,
    score_candidates,
)
from hydra_assets.chapters.script import load_script
from hydra_assets.domain import generation as gen
from hydra_assets.domain.prompts import build_prompts
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import StorageLayout, atomic_write_json, read_json
from hydra_assets.gpu import gpu_asset_kwargs
from hydra_assets.metadata import markdown_table
from hydra_assets.partitions import chapters_partitions
from resources.storage import HydraStorage

ASSET = "scene_images"
ASSET_TYPE = "scene"
SELECTION_FILE = "selection.json"
CHECK = "every_scene_has_image"


class SceneImagesConfig(dg.Config):
    images_per_scene: int = Field(default=3, ge=1, le=16, description="Candidates made per scene; the best passing one is used.")
    steps: int = Field(default=30, ge=1, le=200)
    cfg: float = Field(default=6.5, ge=0.0, le=30.0)
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    width: int = Field(default=1024, ge=64, le=4096, multiple_of=8)
    height: int = Field(default=1024, ge=64, le=4096, multiple_of=8)


def _queen(layout: StorageLayout, slug: str) -> Queen:
    document = read_json(layout.profile_path(slug))
    if document is None:
        raise dg.Failure(f"{layout.profile_path(slug)} is missing: materialize queen_profile for {slug} first")
    return Queen.model_validate(document["queen"])


def scene_fragment(scene: dict[str, Any], names: dict[str, str]) -> str:
    others = [names[q] for q in scene["queens"][1:]]
    parts = [f"scene: {scene['setting']}", *scene["directions"]]
    if others:
        parts.append("with " + " and ".join(others))
    return ", ".join(p for p in parts if p)


def plan_scenes(chapter: dict[str, Any], layout: StorageLayout, backend: ImageBackend, config: SceneImagesConfig) -> tuple[list[gen.GenerationRequest], dict[str, dict]]:
    """Every candidate of every scene, and per scene its lead queen, LoRA and thresholds."""
    sampling = gen.Sampling(config.steps, config.cfg, config.sampler, config.scheduler, config.width, config.height)
    generative = type(backend).generative
    queens = {slug: _queen(layout, slug) for scene in chapter["scenes"] for slug in scene["queens"]}
    names = {slug: q.name for slug, q in queens.items()}
    plan, scenes = [], {}
    for scene in chapter["scenes"]:
        lead = queens.get(scene["queens"][0]) if scene["queens"] else None
        fragment = scene_fragment(scene, names)
        if lead is not None:
            prompts = build_prompts(lead, fragment)
            positive, negative = prompts.positive, prompts.negative
            lora = current_lora(layout, lead.slug, lead.generation_config.lora_strength) if generative else None
            references = read_json(layout.reference_manifest(lead.slug)) or {}
            identity_doc = read_json(layout.identity_dir(lead.slug) / "identity.json") or {}
            refs = gen.references_by_type(references.get("entries", []), layout.normalized_references(lead.slug), [ASSET_TYPE],
                                          identity_doc.get("no_face", []))[ASSET_TYPE]
            ref_hash = references.get("reference_set_hash", "")
            thresholds = Thresholds.from_generation_config(lead.generation_config)
        else:
            positive, negative, lora, refs, ref_hash, thresholds = fragment, "", None, [], "", Thresholds()
        scenes[scene["id"]] = {"lead": lead.slug if lead else None, "lora": lora.to_manifest() if lora else None,
                               "thresholds": thresholds}
        for index in range(config.images_per_scene):
            seed = gen.image_seed(chapter["slug"], scene["id"], ASSET_TYPE, index)
            params = gen.generation_params(
                prompt=positive, negative=negative, seed=seed, sampling=sampling, model=backend.model_name(),
                backend=backend.backend_name(), generative=generative, lora=lora, reference_set_hash=ref_hash,
                asset_type=ASSET_TYPE,
            )
            digest = gen.params_hash(params)
            image_id = f"{chapter['slug']}-{scene['id']}-{index:02d}"
            plan.append(gen.GenerationRequest(
                image_id=image_id, queen=lead.slug if lead else "", night=chapter["slug"], asset_type=ASSET_TYPE,
                index=index, seed=seed, params=params, params_hash=digest,
                file=f"{scene['id']}/{image_id}-{digest[:gen.PARAMS_HASH_FILE_CHARS]}.png",
                references=tuple(refs), lora_path=lora.path if lora else None,
            ))
    return plan, scenes


@dg.asset(
    partitions_def=chapters_partitions,
    group_name="chapters",
    deps=["chapter_script"],
    kinds={"png"},
    check_specs=[dg.AssetCheckSpec(CHECK, asset=ASSET, description="Every scene has at least one image that passed the quality gate.")],
    description="Candidate images per scene from its setting, stage directions and queens (lead queen's LoRA), "
    "scored by the nightly gate; the best passing one is the scene's image, the rest are kept.",
    **gpu_asset_kwargs("image-generation-sdxl"),
)
def scene_images(
    context: dg.AssetExecutionContext,
    config: SceneImagesConfig,
    storage: HydraStorage,
    image_backend: ImageBackend,
    aesthetic: AestheticScorer,
    technical: TechnicalScorer,
    face: FaceBackend,
):
    slug = context.partition_key
    layout = storage.layout
    chapter = load_script(layout, slug)["chapter"]
    try:
        plan, scenes = plan_scenes(chapter, layout, image_backend, config)
    except ValueError as error:  # unreadable LoRA info
        raise dg.Failure(str(error)) from error
    folder = paths.images_dir(layout, slug)
    header = {"chapter": slug, "backend": image_backend.backend_name(), "model": image_backend.model_name(),
              "generative": type(image_backend).generative}
    run = generate_images(plan, folder, header, image_backend, log=context.log)
    entries = {e["image_id"]: e for e in run.manifest.to_document()["images"]}
    failed = run.manifest.to_document()["failed"]

    selection_path = folder / SELECTION_FILE
    previous = (read_json(selection_path) or {}).get("scores", {})
    backends = {"aesthetic": aesthetic.backend_name(), "technical": technical.backend_name(), "face": face.backend_name()}
    scores: dict[str, dict] = {}
    chosen: dict[str, dict | None] = {}
    for scene in chapter["scenes"]:
        info = scenes[scene["id"]]
        candidates = [r for r in plan if r.image_id.startswith(f"{slug}-{scene['id']}-") and r.image_id in entries]
        identity = load_identity(layout, info["lead"]) if info["lead"] else None
        if info["lead"] and identity is None:
            raise dg.Failure(f"{layout.identity_dir(info['lead'])} has no identity vector: materialize reference_identity for {info['lead']}")
        todo = []
        for request in candidates:
            entry = entries[request.image_id]
            old = previous.get(request.image_id)
            if old and old.get("sha256") == entry["sha256"] and old.get("backends") == backends and old.get("thresholds") == info["thresholds"].as_dict():
                scores[request.image_id] = old
            else:
                todo.append(request)
        pixels = []
        for request in todo:
            with Image.open(folder / request.file) as image:
                pixels.append(np.asarray(image.convert("RGB")))
        for request, score in zip(todo, score_candidates(pixels, identity, info["thresholds"], aesthetic, technical, face)):
            scores[request.image_id] = {
                "sha256": entries[request.image_id]["sha256"], "backends": backends, "thresholds": info["thresholds"].as_dict(),
                "aesthetic": score.aesthetic, "technical": score.technical, "face_match": score.face_match,
                "composite": score.composite, "passed": score.reason is None, "reason": score.reason,
            }
        passing = [r for r in candidates if scores[r.image_id]["passed"]]
        best = max(passing, key=lambda r: scores[r.image_id]["composite"], default=None)
        chosen[scene["id"]] = None if best is None else {
            "image_id": best.image_id, "file": best.file, "sha256": entries[best.image_id]["sha256"],
            "width": entries[best.image_id]["width"], "height": entries[best.image_id]["height"],
            "scores": {k: scores[best.image_id][k] for k in ("aesthetic", "technical", "face_match", "composite")},
            "lead_queen": info["lead"], "lora": info["lora"],
        }
    atomic_write_json(selection_path, {"chapter": slug, "script_sha256": chapter["sha256"], "chosen": chosen, "scores": scores,
                                        "candidates": {s["id"]: [r.image_id for r in plan if r.image_id.startswith(f"{slug}-{s['id']}-")] for s in chapter["scenes"]}})
    missing = sorted(s for s, c in chosen.items() if c is None)
    rows = [{"scene": s, "chosen": (c or {}).get("image_id", "-"), "composite": (c or {}).get("scores", {}).get("composite", "-"),
             "passing": sum(1 for r in plan if r.image_id.startswith(f"{slug}-{s}-") and scores.get(r.image_id, {}).get("passed"))}
            for s, c in chosen.items()]
    version = hashlib.sha256(json.dumps(sorted((s, (c or {}).get("sha256")) for s, c in chosen.items())).encode()).hexdigest()[:16]
    return dg.MaterializeResult(
        metadata={
            "scenes": len(chosen),
            "images": len(entries),
            "new": len(run.new),
            "reused": len(run.reused),
            "failed": len(failed),
            "without_passing_image": dg.MetadataValue.json(missing),
            "selection": markdown_table(rows, ["scene", "chosen", "composite", "passing"]),
            "backend": image_backend.backend_name(),
            "generative": type(image_backend).generative,
            "selection_file": dg.MetadataValue.path(str(selection_path)),
        },
        data_version=dg.DataVersion(version),
        check_results=[dg.AssetCheckResult(
            check_name=CHECK, passed=not missing, severity=dg.AssetCheckSeverity.WARN,
            description=f"no passing image for scene(s) {', '.join(missing)}" if missing else None,
            metadata={"missing": len(missing), "failed_images": len(failed)},
        )],
    )
