"""Overnight image generation, how it is recorded: PNGs with their parameters and the
partition's ``manifest.json`` (images with their sha256: the contract image_scores reads).

The plan itself (slots, seeds, parameters, requests) is :mod:`hydra_assets.domain.night_plan`;
its names are re-exported here, so ``generation.plan_night`` and friends keep working.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from hydra_assets.domain.night_plan import (  # noqa: F401  (re-exported)
    ASSET_TYPE_PATTERN,
    DEFAULT_ASSET_TYPES,
    GenerationRequest,
    LoraSpec,
    PARAMS_HASH_FILE_CHARS,
    SEED_BITS,
    Sampling,
    TYPE_FRAGMENTS,
    TYPE_REFERENCE_CATEGORIES,
    canonical_json,
    check_asset_types,
    expansion_requests,
    generation_params,
    image_file,
    image_id,
    image_seed,
    lora_spec_from_info,
    nightly_counts,
    output_request,
    params_hash,
    parent_of,
    plan_night,
    references_by_type,
    type_folder,
    type_fragment,
    with_expansions,
)
from hydra_assets.domain.storage import read_json, sha256_bytes, sha256_file

MANIFEST_NAME = "manifest.json"
PNG_TEXT_KEY = "hydra"
"""PNG iTXt chunk holding the image's generation parameters as JSON."""
PNG_DETAILS_KEY = "hydra_details"
"""PNG iTXt chunk with what the backend reported (e.g. the demo renderer's transform)."""
PNG_COMPRESS_LEVEL = 3
"""zlib level: much faster than Pillow's default 6 for a few percent more bytes."""


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
        **({"output_index": parent_of(request.image_id)[1]} if parent_of(request.image_id)[1] else {}),
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
        document = read_json(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable manifest ({exc}); images on disk are recovered from their PNG chunks") from exc
    if document is not None and not isinstance(document.get("images"), list):
        raise ValueError(f"{path}: manifest has no 'images' list")
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
        """Plan order; a slot's further outputs (``…-o1``) follow it."""
        rank = {r.image_id: n for n, r in enumerate(self.plan)}

        def position(image_id_: str) -> tuple[int, int]:
            parent, output = parent_of(image_id_)
            return (rank.get(parent, len(rank)), output)

        known = [i for i in {**self.images, **self.failed} if parent_of(i)[0] in rank]
        order = sorted(known, key=position)
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
