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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hydra_assets.domain.input_folders import link_reason
from hydra_assets.domain.safe_documents import DocumentError, load_yaml

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


MAX_TEXT_CHARS = 4000
"""Any free-text field (prompts, features, accents); names and titles follow the catalog's String(200)."""
MAX_ITEMS = 200
"""Entries of any list or mapping field (features, traits, targets, clips).

Asset type names (``target_*`` keys) are at most 50 characters: the catalog's asset_type String(50).
"""
SEED_MAX = 2**63 - 2
"""Seeds reach torch.Generator.manual_seed (seed + 1 for evaluation) and the catalog's BigInteger."""


def text_problem(value: Any) -> str | None:
    """Why ``value`` (a string, or lists/mappings of them) cannot travel to every later stage.

    PostgreSQL text cannot hold NUL, and neither driver can encode a lone surrogate (YAML's
    ``"\\ud800"``); SQLite would accept the first, so the roster refuses both for the two to agree.
    """
    if isinstance(value, str):
        if "\0" in value:
            return "must not contain a NUL character (\\0): PostgreSQL cannot store it"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode text (a lone surrogate such as \\ud800 cannot be stored)"
        if len(value) > MAX_TEXT_CHARS:
            return f"must be at most {MAX_TEXT_CHARS} characters (got {len(value)})"
        return None
    if isinstance(value, (list, tuple, dict)):
        if len(value) > MAX_ITEMS:
            return f"must have at most {MAX_ITEMS} entries (got {len(value)})"
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        return next((problem for item in items if (problem := text_problem(item))), None)
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        problem = text_problem(value)
        if problem:
            raise ValueError(problem)
        return value


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
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
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
    targets: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=50)], Annotated[int, Field(ge=0, le=10_000)]] = Field(
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
    title: str = Field(default="", max_length=200)
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
    """Roster files, sorted; dialogue files (``{slug}.dialogue.yaml``) are not queens. Links are
    listed so that :func:`load_queen` refuses them with a reason (input_folders' rule)."""
    roster_dir = Path(roster_dir)
    if not roster_dir.is_dir():
        return []
    return sorted(
        p
        for p in roster_dir.iterdir()
        if (p.is_file() or p.is_symlink()) and p.name.endswith(ROSTER_SUFFIXES) and not p.name.endswith(DIALOGUE_SUFFIXES)
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
    elif error["type"] == "value_error":
        rule = error["msg"].removeprefix("Value error, ")
    elif "input" in error and not isinstance(error["input"], (dict, list)):
        rule = f"{error['msg']} (got {error['input']!r})"
    return loc, rule


def load_queen(path: Path) -> Queen:
    """Parse and validate one roster file; raise :class:`RosterError` on the first problem."""
    path = Path(path)
    file_slug = slug_for_file(path)
    if not is_valid_slug(file_slug):
        raise RosterError(path, "slug", f"file name {file_slug!r} is not a valid slug ({SLUG_PATTERN}, 1-100 chars)")
    if path.is_symlink():
        raise RosterError(path, "(document)", link_reason(path, path.parent))
    try:
        document = load_yaml(path)
    except DocumentError as exc:
        raise RosterError(path, "(document)", exc.rule) from exc
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
