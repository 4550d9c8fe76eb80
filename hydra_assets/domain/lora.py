"""A queen's LoRA: the training settings, captions and versioning that decide when to retrain.

Training is expensive (an SDXL LoRA holds a 5070ti for up to hours), so a new version is
trained only when something that shapes the weights changes: the pictures, their captions,
the settings or the base model. All of that goes into one training hash; a hash already
on disk is reused, anything else becomes the next version and the older ones stay.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from hydra_assets.domain.prompts import describe_appearance
from hydra_assets.domain.roster import LoraTrainingConfig, Queen, QueenStatus
from hydra_assets.domain.storage import sha256_bytes

RESOLUTION_MULTIPLE = 64
"""SDXL's VAE (x8) and three UNet levels (x4) need sides divisible by 32; 64 keeps buckets tidy."""
TRAINING_HASH_VERSION = 1
"""Bump when the training code changes in a way that should retrain every queen."""

CATEGORY_WORDS = {"portraits": "portrait", "full_body": "full body photo", "expressions": "facial expression"}
"""Reference folder → the words a caption's ``{category}`` becomes."""
CAPTION_FIELDS = ("name", "title", "slug", "tier", "appearance", "category")

HEADER_PREFIX = "hydra."
"""Our keys in the safetensors header; kohya's ``ss_*`` keys sit beside them for other tools."""


@dataclass(frozen=True)
class LoraTrainingSettings:
    """The settings a training actually runs with (after the trainer's caps)."""

    rank: int
    alpha: float
    steps: int
    learning_rate: float
    resolution: int
    seed: int
    caption_template: str

    @classmethod
    def from_config(cls, config: LoraTrainingConfig) -> LoraTrainingSettings:
        return cls(
            rank=config.rank,
            alpha=float(config.alpha),
            steps=config.steps,
            learning_rate=float(config.learning_rate),
            resolution=config.resolution,
            seed=config.seed,
            caption_template=config.caption_template,
        )

    def capped(self, *, max_steps: int | None = None, max_resolution: int | None = None) -> LoraTrainingSettings:
        """Limit steps and resolution (the embedded tiny model trains in seconds) and snap the side.

        The side is rounded down to a multiple of ``RESOLUTION_MULTIPLE`` (never below it).
        """
        steps = min(self.steps, max_steps) if max_steps else self.steps
        resolution = min(self.resolution, max_resolution) if max_resolution else self.resolution
        resolution = max(RESOLUTION_MULTIPLE, resolution - resolution % RESOLUTION_MULTIPLE)
        return replace(self, steps=steps, resolution=resolution)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_settings(
    queen: Queen, *, max_steps: int | None = None, max_resolution: int | None = None
) -> LoraTrainingSettings:
    """The queen's ``generation_config.lora_training`` (roster defaults fill the gaps), capped."""
    base = LoraTrainingSettings.from_config(queen.generation_config.lora_training)
    return base.capped(max_steps=max_steps, max_resolution=max_resolution)


class CaptionTemplateError(ValueError):
    """A caption template that cannot be rendered; names the template and the rule."""


def caption_fields(template: str) -> list[str]:
    """The placeholders in ``template``; raises :class:`CaptionTemplateError` on bad syntax or names."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise CaptionTemplateError(f"caption_template {template!r}: {exc}") from exc
    for name in names:
        if name not in CAPTION_FIELDS:
            known = ", ".join("{" + f + "}" for f in CAPTION_FIELDS)
            raise CaptionTemplateError(
                f"caption_template {template!r}: unknown field {{{name}}}; use one of {known}"
            )
    return names


def render_caption(template: str, queen: Queen, category: str | None = None) -> str:
    """The caption of one reference: the template filled from the queen, tidied of empty parts.

    An empty title must not leave ``"a photo of Ada, "`` behind, so empty comma-separated
    parts are dropped and whitespace is collapsed.
    """
    caption_fields(template)
    values = {
        "name": queen.name,
        "title": queen.title,
        "slug": queen.slug,
        "tier": str(queen.tier),
        "appearance": describe_appearance(queen),
        "category": CATEGORY_WORDS.get(category or "", (category or "").replace("_", " ")),
    }
    text = template.format_map(values)
    parts = [re.sub(r"\s+", " ", part).strip() for part in text.split(",")]
    return ", ".join(part for part in parts if part)


@dataclass(frozen=True)
class TrainingExample:
    """One reference the LoRA is trained on: its normalized file, content hash and caption."""

    source: str
    path: Path
    sha256: str
    category: str | None
    caption: str


def select_training_examples(
    manifest: Mapping[str, Any],
    identity: Mapping[str, Any] | None,
    queen: Queen,
    normalized_root: Path,
    *,
    faces_only: bool = True,
) -> tuple[list[TrainingExample], dict[str, str]]:
    """Accepted references to train on, and why each other accepted one was left out.

    With ``faces_only`` a reference must show a face of the queen (the identity's
    ``with_face`` minus ``off_identity``): a LoRA trained on a backdrop or on somebody else
    learns the wrong person.
    """
    with_face = set(identity.get("with_face", [])) if identity else set()
    off_identity = set(identity.get("off_identity", [])) if identity else set()
    template = queen.generation_config.lora_training.caption_template
    examples: list[TrainingExample] = []
    skipped: dict[str, str] = {}
    for entry in manifest.get("entries", []):
        if entry.get("status") != "accepted":
            continue
        source = entry["source"]
        if faces_only and source not in with_face:
            skipped[source] = "no face found"
            continue
        if faces_only and source in off_identity:
            skipped[source] = "face does not match the queen's identity"
            continue
        examples.append(
            TrainingExample(
                source=source,
                path=Path(normalized_root) / entry["normalized"],
                sha256=entry.get("normalized_sha256") or entry["sha256"],
                category=entry.get("category"),
                caption=render_caption(template, queen, entry.get("category")),
            )
        )
    return examples, skipped


def training_hash(
    reference_set_hash: str,
    settings: LoraTrainingSettings,
    base_model: str,
    examples: Sequence[TrainingExample],
) -> str:
    """Everything that shapes the weights: references, the pictures and captions used, settings, base.

    Order-free over the examples, so renaming or reordering photos does not retrain.
    """
    document = {
        "hash_version": TRAINING_HASH_VERSION,
        "reference_set_hash": reference_set_hash,
        "base_model": base_model,
        "settings": settings.to_dict(),
        "examples": sorted([example.sha256, example.caption] for example in examples),
    }
    return sha256_bytes(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())


def version_file_name(slug: str, version: int) -> str:
    return f"{slug}_lora_v{version}.safetensors"


def parse_version(slug: str, file_name: str) -> int | None:
    """The version in ``{slug}_lora_v{N}.safetensors``, or None for any other name."""
    match = re.fullmatch(rf"{re.escape(slug)}_lora_v([1-9][0-9]*)\.safetensors", file_name)
    return int(match.group(1)) if match else None


def versions_on_disk(slug: str, file_names: Iterable[str]) -> dict[int, str]:
    """Version → file name, for the names in a queen's versions folder that are versions."""
    found = {}
    for name in file_names:
        version = parse_version(slug, name)
        if version is not None:
            found[version] = name
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class VersionPlan:
    version: int
    reuse: bool
    """True when a version trained from the same hash is on disk: publish it, train nothing."""


def plan_version(new_hash: str, hashes_by_version: Mapping[int, str | None], *, force: bool = False) -> VersionPlan:
    """Reuse the newest version trained from ``new_hash``; otherwise the next free number.

    ``force`` trains a new version even when the hash is known (e.g. to compare a retrain).
    Versions whose hash is unknown (unreadable header) are never reused but keep their number.
    """
    if not force:
        matches = [version for version, known in hashes_by_version.items() if known == new_hash]
        if matches:
            return VersionPlan(max(matches), reuse=True)
    return VersionPlan(max(hashes_by_version, default=0) + 1, reuse=False)


_LADDER = [status.value for status in QueenStatus]


def advanced_status(current: str | None, target: str) -> str | None:
    """``target`` if it is further up the status ladder than ``current``, else None.

    Retraining a queen that is already generating must not send her back down the ladder;
    her previous LoRA stays usable while the new one trains.
    """
    target = QueenStatus(target).value
    if current is None or _LADDER.index(target) > _LADDER.index(QueenStatus(current).value):
        return target
    return None


def header_metadata(
    *,
    slug: str,
    version: int,
    base_model: str,
    settings: LoraTrainingSettings,
    reference_set_hash: str,
    training_hash_value: str,
    training_images: int,
    initial_loss: float,
    final_loss: float,
    trained_at: str,
    sdxl: bool,
) -> dict[str, str]:
    """The safetensors header (string values only): ours under ``hydra.``, kohya's ``ss_*`` for other tools."""
    ours = {
        "slug": slug,
        "version": version,
        "base_model": base_model,
        "rank": settings.rank,
        "alpha": settings.alpha,
        "steps": settings.steps,
        "learning_rate": settings.learning_rate,
        "resolution": settings.resolution,
        "seed": settings.seed,
        "caption_template": settings.caption_template,
        "reference_set_hash": reference_set_hash,
        "training_hash": training_hash_value,
        "training_images": training_images,
        "initial_loss": f"{initial_loss:.6f}",
        "final_loss": f"{final_loss:.6f}",
        "trained_at": trained_at,
    }
    header = {HEADER_PREFIX + key: str(value) for key, value in ours.items()}
    header.update(
        {
            "format": "pt",
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(settings.rank),
            "ss_network_alpha": str(settings.alpha),
            "ss_output_name": f"{slug}_lora",
            "ss_steps": str(settings.steps),
            "ss_resolution": f"({settings.resolution}, {settings.resolution})",
            "ss_base_model_version": "sdxl_base_v1-0" if sdxl else base_model,
            "ss_training_comment": f"{slug} v{version}, trained by the Hydra pipeline",
        }
    )
    return header


def ours_from_header(header: Mapping[str, str]) -> dict[str, str]:
    """Our keys from a safetensors header, prefix removed."""
    return {key[len(HEADER_PREFIX) :]: value for key, value in header.items() if key.startswith(HEADER_PREFIX)}
