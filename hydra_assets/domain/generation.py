"""Overnight image generation, the pure part: what to make tonight and how it is recorded.

Every image is keyed by (queen, night, type, index, seed, params hash). The seed comes from
the first four alone, so the same slot always gets the same seed; the params hash covers
everything that shapes the pixels (prompt, sampler settings, model, LoRA version, reference
set, backend), so changing any of them makes a new file beside the old one instead of
silently reusing a stale image. A partition's ``manifest.json`` lists the images with their
sha256 (the contract image_scores reads).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from hydra_assets.domain.damaged_files import ABSENT, generated_manifest_problem
from hydra_assets.domain.prompts import build_prompts
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import read_json, sha256_bytes, sha256_file

DEFAULT_ASSET_TYPES = ("portrait", "expression", "pose")
MANIFEST_NAME = "manifest.json"
PNG_TEXT_KEY = "hydra"
"""PNG iTXt chunk holding the image's generation parameters as JSON."""
PNG_DETAILS_KEY = "hydra_details"
"""PNG iTXt chunk with what the backend reported (e.g. the demo renderer's transform)."""
PNG_COMPRESS_LEVEL = 3
"""zlib level: much faster than Pillow's default 6 for a few percent more bytes."""
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
) -> dict[str, Any]:
    """Every parameter that shapes an image: stored in its PNG, its manifest entry and its hash."""
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
) -> list[GenerationRequest]:
    """Every image slot of one queen × night, in type then index order."""
    plan = []
    for asset_type, count in counts.items():
        for index in range(count):
            prompts = build_prompts(queen, type_fragment(asset_type, index))
            seed = image_seed(queen.slug, night, asset_type, index)
            params = generation_params(
                prompt=prompts.positive,
                negative=prompts.negative,
                seed=seed,
                sampling=sampling,
                model=model,
                backend=backend,
                generative=generative,
                lora=lora,
                reference_set_hash=reference_set_hash,
                asset_type=asset_type,
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
                )
            )
    return plan


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


# --- PNG with parameters -------------------------------------------------------------------


def encode_png(image: Image.Image, params: Mapping[str, Any], details: Mapping[str, Any] | None = None) -> bytes:
    """RGB PNG with the parameters in a compressed iTXt chunk (UTF-8, so any prompt text fits)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_TEXT_KEY, canonical_json(dict(params)), zip=True)
    if details:
        info.add_itxt(PNG_DETAILS_KEY, canonical_json(dict(details)), zip=True)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def png_details(image: Image.Image) -> dict[str, Any] | None:
    raw = (getattr(image, "text", {}) or {}).get(PNG_DETAILS_KEY)
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None


class InvalidImage(ValueError):
    """Bytes that are not a complete PNG with our parameters chunk."""


def decode_png(data: bytes) -> tuple[Image.Image, dict[str, Any] | None]:
    """The fully decoded image and its parameters (None without a ``hydra`` chunk)."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as probe:
            probe.verify()
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        image.load()
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a PNG") from exc
    except Exception as exc:  # Pillow's decoders raise many types on malformed data.
        raise InvalidImage(f"corrupt or truncated PNG: {exc}") from exc
    text = getattr(image, "text", {}) or {}
    raw = text.get(PNG_TEXT_KEY)
    if raw is None:
        return image, None
    try:
        return image, json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidImage(f"PNG chunk {PNG_TEXT_KEY!r} is not JSON: {exc}") from exc


# --- the partition manifest ----------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def manifest_entry(
    request: GenerationRequest,
    png: bytes,
    width: int,
    height: int,
    generated_at: str,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    entry = {
        "image_id": request.image_id,
        "asset_type": request.asset_type,
        "index": request.index,
        "seed": request.seed,
        "file": request.file,
        "sha256": sha256_bytes(png),
        "size_bytes": len(png),
        "width": width,
        "height": height,
        "params_hash": request.params_hash,
        "params": dict(request.params),
        "generated_at": generated_at,
    }
    if details:
        entry["details"] = dict(details)
    return entry


def failure_entry(request: GenerationRequest, error: str) -> dict[str, Any]:
    return {"image_id": request.image_id, "asset_type": request.asset_type, "index": request.index, "error": error}


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest, or None when absent; raises ValueError naming the file when it is unreadable."""
    try:
        document = read_json(path, default=ABSENT)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable manifest ({exc}); images on disk are recovered from their PNG chunks") from exc
    if document is ABSENT:
        return None
    problem = generated_manifest_problem(document)
    if problem:
        raise ValueError(f"{path}: {problem}; images on disk are recovered from their PNG chunks")
    return document


def valid_entry(entry: Mapping[str, Any], folder: Path, request: GenerationRequest) -> bool:
    """A recorded image may be reused when it is the same slot and parameters, and the file on
    disk still has the recorded sha256 and decodes."""
    if entry.get("params_hash") != request.params_hash or entry.get("file") != request.file:
        return False
    path = Path(folder) / request.file
    if not path.is_file() or sha256_file(path) != entry.get("sha256"):
        return False
    try:
        decode_png(path.read_bytes())
    except InvalidImage:
        return False
    return True


def recover_entry(folder: Path, request: GenerationRequest) -> dict[str, Any] | None:
    """An image written before a crash but not yet listed: adopt it when its PNG chunk carries
    exactly this request's parameters."""
    path = Path(folder) / request.file
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        image, params = decode_png(data)
    except InvalidImage:
        return None
    if params is None or params_hash(params) != request.params_hash:
        return None
    written = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).replace(microsecond=0).isoformat()
    return manifest_entry(request, data, image.width, image.height, written, png_details(image))


@dataclass
class PartitionManifest:
    """One queen × night's manifest as it is being rebuilt: header, images in plan order, failures.

    Images of an earlier plan that tonight's plan no longer has (other parameters, a lower
    budget) are kept under ``superseded`` while their files exist: nothing produced is forgotten.
    """

    header: dict[str, Any]
    plan: list[GenerationRequest]
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    superseded: list[dict[str, Any]] = field(default_factory=list)

    def record_image(self, entry: dict[str, Any]) -> None:
        self.images[entry["image_id"]] = entry
        self.failed.pop(entry["image_id"], None)

    def record_failure(self, entry: dict[str, Any]) -> None:
        self.failed[entry["image_id"]] = entry

    def to_document(self) -> dict[str, Any]:
        order = [r.image_id for r in self.plan]
        return {
            **self.header,
            "images": [self.images[i] for i in order if i in self.images],
            "failed": [self.failed[i] for i in order if i in self.failed and i not in self.images],
            "superseded": self.superseded,
        }


def superseded_entries(previous: Mapping[str, Any] | None, plan: Sequence[GenerationRequest], folder: Path) -> list[dict[str, Any]]:
    """Earlier images (and earlier superseded ones) that are not in the plan and still on disk."""
    if not previous:
        return []
    current = {r.file for r in plan}
    seen: set[str] = set()
    kept = []
    for entry in [*previous.get("images", []), *previous.get("superseded", [])]:
        name = entry.get("file")
        if not name or name in current or name in seen or not (Path(folder) / name).is_file():
            continue
        seen.add(name)
        kept.append(dict(entry))
    return kept


def images_data_version(entries: Iterable[Mapping[str, Any]]) -> str:
    """Changes exactly when the set of image bytes changes."""
    return sha256_bytes("\n".join(sorted(str(e["sha256"]) for e in entries)).encode())
