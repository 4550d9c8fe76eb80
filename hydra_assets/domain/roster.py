"""The roster: one YAML file per queen, validated into typed models.

A bad file must never stop the rest of the roster from loading, and its error must name
the file, the field and the rule, so that whoever edits the YAML can fix it without
reading code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
"""Lowercase letters, digits and single hyphens (SPEC: URL-safe, 1-100 chars)."""
SLUG_RE = re.compile(SLUG_PATTERN)
SLUG_MAX_LENGTH = 100
ROSTER_SUFFIXES = (".yaml", ".yml")
DIALOGUE_SUFFIXES = (".dialogue.yaml", ".dialogue.yml")

Slug = Annotated[str, Field(min_length=1, max_length=SLUG_MAX_LENGTH, pattern=SLUG_PATTERN)]
Scale10 = Annotated[int, Field(ge=1, le=10)]


class Tier(str, Enum):
    alpha = "alpha"
    elite = "elite"
    core = "core"
    exotic = "exotic"
    specialist = "specialist"
    legacy = "legacy"


class QueenStatus(str, Enum):
    """The SPEC's status ladder, in order."""

    draft = "draft"
    reference_ready = "reference_ready"
    lora_training = "lora_training"
    lora_ready = "lora_ready"
    generation_active = "generation_active"
    complete = "complete"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class Height(_Strict):
    inches: float | None = Field(default=None, gt=0, le=120)
    cm: float | None = Field(default=None, gt=0, le=300)
    category: str = Field(default="average", pattern=r"^(petite|average|tall)$")


class Hair(_Strict):
    color: str
    style: str = ""
    length: str = Field(default="medium", pattern=r"^(short|medium|long)$")


class Eyes(_Strict):
    color: str
    shape: str = ""


class Skin(_Strict):
    tone: str
    features: list[str] = Field(default_factory=list)


class PhysicalDNA(_Strict):
    height: Height = Field(default_factory=Height)
    body_type: str = ""
    hair: Hair
    eyes: Eyes
    skin: Skin
    ethnicity: str = ""
    age_presentation: str = ""
    distinguishing_features: list[str] = Field(default_factory=list)


class PersonalityDNA(_Strict):
    traits: dict[str, Scale10] = Field(default_factory=dict)
    speech_patterns: list[str] = Field(default_factory=list)
    accent: str = ""
    verbal_tics: list[str] = Field(default_factory=list)


class VoiceDNA(_Strict):
    accent: str = ""
    pitch: str = Field(default="medium", pattern=r"^(low|medium|high)$")
    timbre: str = ""
    reference_clips: list[str] = Field(default_factory=list)
    trained_model_path: str | None = None


class LoraTrainingConfig(_Strict):
    """How the queen's LoRA is trained (SDXL on the cluster); any change makes a new version."""

    rank: int = Field(default=16, ge=1, le=256)
    alpha: float = Field(default=16.0, gt=0, le=512)
    steps: int = Field(default=1500, ge=1, le=100_000)
    learning_rate: float = Field(default=1e-4, gt=0, le=1.0)
    resolution: int = Field(default=1024, ge=64, le=2048)
    seed: int = Field(default=0, ge=0)
    caption_template: str = Field(default="a photo of {name}, {title}", min_length=1)


DEFAULT_TARGETS = {"portrait": 12, "expression": 8, "pose": 6}


class GenerationConfig(_Strict):
    """Prompts, LoRA and the quality thresholds the gate applies to this queen's images.

    Targets are given as ``target_<type>s`` keys (``target_portraits: 20``); the studio
    may add asset types, so any ``target_*`` key is accepted and lands in ``targets``
    under the singular type name.
    """

    base_prompt: str = ""
    negative_prompt: str = ""
    lora_path: str | None = None
    lora_strength: float = Field(default=0.8, ge=0.0, le=2.0)
    instant_id_reference: str | None = None
    lora_training: LoraTrainingConfig = Field(default_factory=LoraTrainingConfig)
    aesthetic_threshold: float = Field(default=6.5, ge=1.0, le=10.0)
    technical_threshold: float = Field(default=70.0, ge=0.0, le=100.0)
    face_match_threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    targets: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], Annotated[int, Field(ge=0, le=10_000)]] = Field(
        default_factory=lambda: dict(DEFAULT_TARGETS)
    )
    workflows: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], Slug] = Field(
        default_factory=dict,
        description="asset type → ComfyUI workflow template (workflows/{name}.json); unnamed types use the SPEC graph 'sdxl'.",
    )

    @model_validator(mode="before")
    @classmethod
    def _collect_targets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        targets = dict(data.pop("targets", None) or DEFAULT_TARGETS)
        for key in [k for k in data if isinstance(k, str) and k.startswith("target_")]:
            targets[asset_type_from_target_key(key)] = data.pop(key)
        data["targets"] = targets
        return data


def asset_type_from_target_key(key: str) -> str:
    """``target_portraits`` → ``portrait``: the SPEC's target fields are plural type names."""
    name = key.removeprefix("target_")
    return name[:-1] if name.endswith("s") else name


class Queen(_Strict):
    slug: Slug
    name: str = Field(min_length=1, max_length=200)
    title: str = ""
    tier: Tier
    status: QueenStatus = QueenStatus.draft
    physical_dna: PhysicalDNA
    personality_dna: PersonalityDNA = Field(default_factory=PersonalityDNA)
    voice_dna: VoiceDNA = Field(default_factory=VoiceDNA)
    generation_config: GenerationConfig = Field(default_factory=GenerationConfig)


class RosterError(ValueError):
    """A roster file that cannot be used; names the file, the field and the rule."""

    def __init__(self, path: Path, field_name: str, rule: str):
        self.path = Path(path)
        self.field = field_name
        self.rule = rule
        super().__init__(f"{self.path}: {field_name}: {rule}")


def is_valid_slug(slug: str) -> bool:
    return 0 < len(slug) <= SLUG_MAX_LENGTH and bool(SLUG_RE.fullmatch(slug))


def roster_files(roster_dir: Path) -> list[Path]:
    """Roster files, sorted; dialogue files (``{slug}.dialogue.yaml``) are not queens."""
    roster_dir = Path(roster_dir)
    if not roster_dir.is_dir():
        return []
    return sorted(
        p
        for p in roster_dir.iterdir()
        if p.is_file() and p.name.endswith(ROSTER_SUFFIXES) and not p.name.endswith(DIALOGUE_SUFFIXES)
    )


def slug_for_file(path: Path) -> str:
    name = Path(path).name
    for suffix in ROSTER_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    loc = ".".join(str(part) for part in error["loc"]) or "(document)"
    rule = error["msg"]
    if error["type"] == "missing":
        rule = "is required but missing"
    elif error["type"] == "extra_forbidden":
        rule = "is not a known field"
    elif error["type"] == "enum":
        rule = f"{error['msg']} (got {error.get('input')!r})"
    elif "input" in error and not isinstance(error["input"], (dict, list)):
        rule = f"{error['msg']} (got {error['input']!r})"
    return loc, rule


def load_queen(path: Path) -> Queen:
    """Parse and validate one roster file; raise :class:`RosterError` on the first problem."""
    path = Path(path)
    file_slug = slug_for_file(path)
    if not is_valid_slug(file_slug):
        raise RosterError(path, "slug", f"file name {file_slug!r} is not a valid slug ({SLUG_PATTERN}, 1-100 chars)")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RosterError(path, "(document)", f"is not valid YAML{where}: {problem}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RosterError(path, "(document)", f"cannot be read: {exc}") from exc
    if not isinstance(document, dict):
        raise RosterError(path, "(document)", f"must be a mapping of fields, got {type(document).__name__}")
    try:
        queen = Queen.model_validate(document)
    except ValidationError as exc:
        field_name, rule = _describe(exc.errors()[0])
        raise RosterError(path, field_name, rule) from exc
    if queen.slug != file_slug:
        raise RosterError(path, "slug", f"{queen.slug!r} must match the file name {file_slug!r}")
    return queen


@dataclass
class Roster:
    queens: dict[str, Queen] = field(default_factory=dict)
    errors: list[RosterError] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


def load_roster(roster_dir: Path) -> Roster:
    """Load every roster file; bad files are collected as errors beside the good queens."""
    roster = Roster()
    for path in roster_files(roster_dir):
        try:
            queen = load_queen(path)
        except RosterError as error:
            roster.errors.append(error)
            continue
        if queen.slug in roster.queens:
            roster.errors.append(
                RosterError(path, "slug", f"{queen.slug!r} is already used by {roster.paths[queen.slug]}")
            )
            continue
        roster.queens[queen.slug] = queen
        roster.paths[queen.slug] = path
    return roster
