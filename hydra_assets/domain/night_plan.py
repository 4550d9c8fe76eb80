"""Overnight image generation, the plan: what to make tonight, with which parameters.

Every image is keyed by (queen, night, type, index, seed, params hash). The seed comes from
the first four alone, so the same slot always gets the same seed; the params hash covers
everything that shapes the pixels (prompt and where it came from, sampler settings, model,
LoRA version, reference set, backend, workflow), so changing any of them makes a new file
beside the old one instead of silently reusing a stale image.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hydra_assets.domain.prompt_expansion import Expansion, ExpansionRequest
from hydra_assets.domain.prompts import build_prompts
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import sha256_bytes

DEFAULT_ASSET_TYPES = ("portrait", "expression", "pose")
SEED_BITS = 53
"""Seeds stay below 2**53 so they survive JSON in any reader (JavaScript's safe integers)."""
PARAMS_HASH_FILE_CHARS = 8

# One fragment per slot, cycled by index, so a night's images of one type differ in more
# than the seed. Types without an entry get a fragment built from their name.
TYPE_FRAGMENTS: dict[str, tuple[str, ...]] = {
    "portrait": (
        "head and shoulders portrait, looking at the camera, neutral background",
        "three-quarter view portrait, soft background",
        "close portrait, gentle smile, window light",
        "profile portrait, rim light",
    ),
    "expression": (
        "close-up of the face, warm smile",
        "close-up of the face, thoughtful expression",
        "close-up of the face, laughing",
        "close-up of the face, surprised expression",
        "close-up of the face, calm serious expression",
        "close-up of the face, determined look",
    ),
    "pose": (
        "full body, standing, relaxed pose",
        "full body, walking towards the camera",
        "full body, seated on a chair",
        "full body, arms crossed",
        "three-quarter body, hands in pockets",
    ),
}

# Reference categories (reference_images' folders) an image type is best derived from, best first.
TYPE_REFERENCE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "portrait": ("portraits",),
    "expression": ("expressions", "portraits"),
    "pose": ("full_body", "portraits"),
}


ASSET_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
"""As roster targets allow: a type names a folder, so nothing that could leave it."""


def check_asset_types(asset_types: Sequence[str]) -> list[str]:
    """The types, each once, in order; raises ValueError naming any that is not a plain name."""
    bad = [t for t in asset_types if not ASSET_TYPE_PATTERN.fullmatch(t)]
    if bad:
        raise ValueError(f"asset types {bad} must match {ASSET_TYPE_PATTERN.pattern} (e.g. portrait, full_body)")
    return list(dict.fromkeys(asset_types))


def type_fragment(asset_type: str, index: int) -> str:
    fragments = TYPE_FRAGMENTS.get(asset_type) or (f"{asset_type.replace('_', ' ')} shot",)
    return fragments[index % len(fragments)]


def type_folder(asset_type: str) -> str:
    """The published folder of a type is its plural (``portrait`` → ``portraits``), as SPEC lays out."""
    return asset_type if asset_type.endswith("s") else f"{asset_type}s"


def nightly_counts(targets: Mapping[str, int], asset_types: Sequence[str], budget: int) -> dict[str, int]:
    """Tonight's count per type: the queen's targets, scaled down to fit the per-night budget.

    Scaling uses largest remainders (ties to the earlier type) so the counts sum exactly to
    the budget and no type gets more than its target. Types without a target get 0.
    """
    if budget < 0:
        raise ValueError(f"per-night budget must be >= 0, got {budget}")
    wanted: dict[str, int] = {}
    for asset_type in asset_types:
        if asset_type not in wanted:
            wanted[asset_type] = max(0, int(targets.get(asset_type, 0)))
    total = sum(wanted.values())
    if total <= budget:
        return wanted
    quotas = {t: wanted[t] * budget / total for t in wanted}
    counts = {t: math.floor(q) for t, q in quotas.items()}
    order = list(wanted)
    by_remainder = sorted(order, key=lambda t: (-(quotas[t] - counts[t]), order.index(t)))
    for asset_type in by_remainder[: budget - sum(counts.values())]:
        counts[asset_type] += 1
    return counts


def image_seed(queen: str, night: str, asset_type: str, index: int) -> int:
    """Deterministic per slot, different across slots (sha256 of the four, top 53 bits)."""
    digest = hashlib.sha256(f"{queen}\x1f{night}\x1f{asset_type}\x1f{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def image_id(queen: str, night: str, asset_type: str, index: int) -> str:
    return f"{queen}-{night}-{asset_type}-{index:03d}"


def canonical_json(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def params_hash(params: Mapping[str, Any]) -> str:
    return sha256_bytes(canonical_json(dict(params)).encode())


def image_file(asset_type: str, image_id_: str, params_hash_: str) -> str:
    """Path of an image inside its partition folder; the hash prefix keeps old versions apart."""
    return f"{asset_type}/{image_id_}-{params_hash_[:PARAMS_HASH_FILE_CHARS]}.png"


@dataclass(frozen=True)
class Sampling:
    steps: int = 30
    cfg: float = 6.5
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    width: int = 1024
    height: int = 1024


@dataclass(frozen=True)
class LoraSpec:
    """The queen's current LoRA as generation uses it: ComfyUI by ``name``, diffusers by ``path``."""

    name: str
    version: int
    sha256: str
    strength: float
    path: str | None = None

    def to_manifest(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "strength": self.strength}


def lora_spec_from_info(info: Mapping[str, Any], loras_dir: Path, strength: float, source: Path) -> LoraSpec:
    """Read the LoRA info JSON queen_lora writes. Names are relative to the loras folder
    (ComfyUI's models/loras is the same folder on the shared NFS).

    The immutable per-version file (``version_file``) is preferred over the current name when
    the info has one: ComfyUI caches a LoraLoader's output while its inputs are unchanged, so a
    retrained LoRA saved under the same name would keep being served from the old weights.
    """
    missing = [key for key in ("version", "sha256", "file_name") if key not in info]
    if missing:
        raise ValueError(f"{source}: LoRA info is missing {', '.join(missing)} (needs version, sha256, file_name)")
    file_name = str(info.get("version_file") or info["file_name"])
    if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
        raise ValueError(f"{source}: LoRA file {file_name!r} must be a path inside {loras_dir}")
    return LoraSpec(
        name=file_name,
        version=int(info["version"]),
        sha256=str(info["sha256"]),
        strength=float(strength),
        path=str(Path(loras_dir) / file_name),
    )


def generation_params(
    *,
    prompt: str,
    negative: str,
    seed: int,
    sampling: Sampling,
    model: str,
    backend: str,
    generative: bool,
    lora: LoraSpec | None,
    reference_set_hash: str,
    asset_type: str,
    workflow: str | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Every parameter that shapes an image: stored in its PNG, its manifest entry and its hash.
    ``workflow`` (ComfyUI's template name) and ``batch_size`` appear only when set, so images of
    backends without them keep their hashes."""
    extra: dict[str, Any] = {}
    if workflow is not None:
        extra["workflow"] = workflow
    if batch_size != 1:
        extra["batch_size"] = int(batch_size)
    return {
        "prompt": prompt,
        "negative": negative,
        "seed": seed,
        "steps": sampling.steps,
        "cfg": sampling.cfg,
        "sampler": sampling.sampler,
        "scheduler": sampling.scheduler,
        "width": sampling.width,
        "height": sampling.height,
        "model": model,
        "lora_name": lora.name if lora else None,
        "lora_strength": lora.strength if lora else None,
        "lora_version": lora.version if lora else None,
        "reference_set_hash": reference_set_hash,
        "backend": backend,
        "generative": generative,
        "asset_type": asset_type,
        **extra,
    }


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    """One image to make: its slot, its parameters, and what a backend may need to make it."""

    image_id: str
    queen: str
    night: str
    asset_type: str
    index: int
    seed: int
    params: Mapping[str, Any]
    params_hash: str
    file: str
    references: tuple[str, ...] = ()
    """Absolute paths of normalized references suited to this type (the demo renderer's input)."""
    lora_path: str | None = None
    workflow: str | None = None
    """The ComfyUI template (workflows/{name}.json); None: the default (SPEC) graph."""
    face_reference: str | None = None
    """Absolute path of the queen's face reference (hydra.reference.face)."""
    style_references: tuple[str, ...] = ()
    """Absolute paths of her style set (hydra.reference.style…)."""

    @property
    def prompt(self) -> str:
        return self.params["prompt"]

    @property
    def negative(self) -> str:
        return self.params["negative"]

    @property
    def width(self) -> int:
        return int(self.params["width"])

    @property
    def height(self) -> int:
        return int(self.params["height"])


def plan_night(
    *,
    queen: Queen,
    night: str,
    counts: Mapping[str, int],
    sampling: Sampling,
    model: str,
    backend: str,
    generative: bool,
    lora: LoraSpec | None,
    reference_set_hash: str,
    references: Mapping[str, Sequence[str]] | None = None,
    workflows: Mapping[str, str] | None = None,
    models: Mapping[str, str] | None = None,
    batch_size: int = 1,
    face_reference: str | None = None,
    style_references: Mapping[str, Sequence[str]] | None = None,
) -> list[GenerationRequest]:
    """Every image slot of one queen × night, in type then index order. ``workflows`` (type →
    template) is given for backends that run templates; ``models`` (type → checkpoint) where
    the template decides the model."""
    plan = []
    for asset_type, count in counts.items():
        workflow = (workflows or {}).get(asset_type)
        styles = tuple((style_references or {}).get(asset_type, ()))
        for index in range(count):
            prompts = build_prompts(queen, type_fragment(asset_type, index))
            seed = image_seed(queen.slug, night, asset_type, index)
            params = generation_params(
                prompt=prompts.positive,
                negative=prompts.negative,
                seed=seed,
                sampling=sampling,
                model=(models or {}).get(asset_type, model),
                backend=backend,
                generative=generative,
                lora=lora,
                reference_set_hash=reference_set_hash,
                asset_type=asset_type,
                workflow=workflow,
                batch_size=batch_size,
            )
            digest = params_hash(params)
            slot_id = image_id(queen.slug, night, asset_type, index)
            plan.append(
                GenerationRequest(
                    image_id=slot_id,
                    queen=queen.slug,
                    night=night,
                    asset_type=asset_type,
                    index=index,
                    seed=seed,
                    params=params,
                    params_hash=digest,
                    file=image_file(asset_type, slot_id, digest),
                    references=tuple((references or {}).get(asset_type, ())),
                    lora_path=lora.path if lora else None,
                    workflow=workflow,
                    face_reference=face_reference,
                    # each image starts the style set at its own index, so a night uses all of it
                    style_references=styles[index % len(styles) :] + styles[: index % len(styles)] if styles else (),
                )
            )
    return plan


def expansion_requests(plan: Sequence[GenerationRequest]) -> list[ExpansionRequest]:
    """What the prompt expander gets per image: her DNA template prompt, type, slot and seed."""
    return [ExpansionRequest(r.queen, r.asset_type, r.prompt, r.index, r.seed) for r in plan]


def with_expansions(plan: Sequence[GenerationRequest], expansions: Sequence[Expansion]) -> list[GenerationRequest]:
    """The plan with each image's expanded prompt and where it came from (``prompt_source``,
    model, cache key, a fallback's warning) in its params, so in its hash, PNG and manifest."""
    if len(expansions) != len(plan):
        raise ValueError(f"{len(expansions)} expansions for {len(plan)} images")
    expanded = []
    for request, expansion in zip(plan, expansions):
        params = {**request.params, "prompt": expansion.prompt, "template_prompt": request.prompt, **expansion.params()}
        digest = params_hash(params)
        expanded.append(replace(request, params=params, params_hash=digest, file=image_file(request.asset_type, request.image_id, digest)))
    return expanded


def output_request(request: GenerationRequest, output_index: int) -> GenerationRequest:
    """The slot of a further image the same prompt made (batch size > 1, several outputs):
    same parameters and index, its own id and file (``…-o1``, ``…-o2``)."""
    if output_index == 0:
        return request
    image_id_ = f"{request.image_id}-o{output_index}"
    return replace(request, image_id=image_id_, file=image_file(request.asset_type, image_id_, request.params_hash))


def parent_of(image_id_: str) -> tuple[str, int]:
    """(the plan slot's id, output index) of a manifest image id."""
    head, _, tail = image_id_.rpartition("-o")
    return (head, int(tail)) if head and tail.isdigit() else (image_id_, 0)


def references_by_type(
    entries: Iterable[Mapping[str, Any]], root: Path, asset_types: Sequence[str], exclude: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Accepted normalized references per image type: the preferred categories' photos, or all
    of them when those categories are empty. ``exclude`` drops sources (e.g. ones without a face)."""
    skip = set(exclude)
    accepted = [e for e in entries if e.get("status") == "accepted" and e.get("normalized") and e["source"] not in skip]
    result = {}
    for asset_type in asset_types:
        preferred = TYPE_REFERENCE_CATEGORIES.get(asset_type, ())
        chosen = [e for category in preferred for e in accepted if e.get("category") == category]
        result[asset_type] = [str(Path(root) / e["normalized"]) for e in (chosen or accepted)]
    return result
