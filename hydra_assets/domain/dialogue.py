"""A queen's dialogue: the lines her voice is synthesised from, one YAML file per queen.

Format (``roster/{slug}.dialogue.yaml``, beside the roster file; the roster loader skips it)::

    queen: nova-sterling        # optional; must match the file name when given
    language: en                # optional, default "en": the language the text is written in
    lines:
      - id: greeting-01         # stable, unique per queen; becomes assets/voice/{slug}/{id}.wav
        text: Good morning. The coffee is fresh if you want some.
        level: 0                # story stage, 0-10
        emotion: neutral        # one of EMOTIONS
        speed: 1.0              # optional, 0.5-2.0 (1.0 = the backend's normal pace)

Rules and why:
- ``id``: lowercase letters, digits, ``-`` and ``_``, 1-64 characters, starting with a letter
  or digit. It names a file on the NFS share and a row in the catalog, so it must be safe as a
  file name and must not change when the text is edited.
- Duplicate ids: every line using the id is rejected (keeping one would pick a text at
  random); the error names the YAML lines involved.
- ``text``: whitespace is collapsed (YAML block scalars bring newlines); it must contain
  something speakable (a letter or digit) and at most ``MAX_TEXT_CHARS`` characters. Longer
  text is **rejected, not split**: a line is one game asset with one stable id, and XTTS
  truncates English input beyond 250 characters, so the author splits it into several lines.
- ``emotion``: one of ``EMOTIONS``. Backends that cannot act an emotion still record it;
  eSpeak maps it to prosody (resources/voice/espeak.py).

A bad line never stops the good ones: :func:`load_dialogue` returns the valid lines together
with one :class:`DialogueError` per bad line, each naming the file, the YAML line, the line
id and the rule. Only a file that cannot be read as a dialogue at all raises
:class:`DialogueFileError`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hydra_assets.domain.roster import DIALOGUE_SUFFIXES, SLUG_PATTERN

EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "excited",
    "sad",
    "angry",
    "fearful",
    "surprised",
    "serious",
)
"""The emotions a line may carry. The studio's backends act few of them (GPT-SoVITS follows its
reference clip, Kokoro and XTTS take none); the tag is kept with every line for the game and
for backends that use it."""

MAX_TEXT_CHARS = 250
"""Longest accepted line text (characters after whitespace is collapsed); XTTS v2's English limit."""
LINE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MIN_SPEED, MAX_SPEED = 0.5, 2.0
MIN_LEVEL, MAX_LEVEL = 0, 10
LANGUAGE_PATTERN = r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$"
"""A lowercase BCP-47 primary language tag with an optional region (``en``, ``pt-br``)."""

_SPEAKABLE = re.compile(r"\w", re.UNICODE)
_WHITESPACE = re.compile(r"\s+")


class DialogueLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=LINE_ID_PATTERN)]
    text: str
    level: Annotated[int, Field(ge=MIN_LEVEL, le=MAX_LEVEL)]
    emotion: str
    speed: Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED)] = 1.0

    @field_validator("text")
    @classmethod
    def _speakable_text(cls, text: str) -> str:
        text = _WHITESPACE.sub(" ", text).strip()
        if not text:
            raise ValueError("text is empty")
        if not _SPEAKABLE.search(text):
            raise ValueError(f"text {text!r} has nothing to speak (no letter or digit)")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(
                f"text is {len(text)} characters, more than {MAX_TEXT_CHARS}: split it into several lines"
            )
        return text

    @field_validator("emotion")
    @classmethod
    def _known_emotion(cls, emotion: str) -> str:
        if emotion not in EMOTIONS:
            raise ValueError(f"unknown emotion {emotion!r}; known: {', '.join(EMOTIONS)}")
        return emotion


class _DialogueDocument(BaseModel):
    """The file's top level; lines are validated one by one afterwards."""

    model_config = ConfigDict(extra="forbid")

    queen: Annotated[str, Field(pattern=SLUG_PATTERN)] | None = None
    language: Annotated[str, Field(pattern=LANGUAGE_PATTERN)] = "en"
    lines: list[Any]


class DialogueFileError(ValueError):
    """The whole file is unusable (unreadable, not YAML, wrong shape); names the file and the rule."""

    def __init__(self, path: Path, rule: str):
        self.path = Path(path)
        self.rule = rule
        super().__init__(f"{self.path}: {rule}")


@dataclass(frozen=True)
class DialogueError:
    """One rejected line: file, YAML line (1-based, when known), line id, field and rule."""

    path: Path
    line_id: str
    """The line's ``id``, or ``lines[N]`` when it has none."""
    field: str
    rule: str
    yaml_line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.yaml_line}" if self.yaml_line else str(self.path)
        return f"{where}: line {self.line_id}: {self.field}: {self.rule}"


@dataclass
class Dialogue:
    path: Path
    language: str
    lines: list[DialogueLine] = field(default_factory=list)
    errors: list[DialogueError] = field(default_factory=list)

    @property
    def rejected_ids(self) -> set[str]:
        """Ids that appear in the file but were rejected (their old audio is not 'removed')."""
        return {e.line_id for e in self.errors if not e.line_id.startswith("lines[")}


def dialogue_path(roster_dir: Path, slug: str) -> Path | None:
    """The queen's dialogue file in the roster folder, or None when she has none."""
    for suffix in DIALOGUE_SUFFIXES:
        candidate = Path(roster_dir) / f"{slug}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _line_numbers(text: str) -> list[int | None]:
    """1-based YAML line of each item under ``lines``, so errors point into the file."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "lines" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _rule(error: dict[str, Any]) -> tuple[str, str]:
    field_name = ".".join(str(part) for part in error["loc"]) or "(line)"
    if error["type"] == "missing":
        return field_name, "is required but missing"
    if error["type"] == "extra_forbidden":
        return field_name, "is not a known field"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] != "value_error" and not isinstance(value, (dict, list)):
        message = f"{message} (got {value!r})"
    return field_name, message


def _raw_id(item: Any, index: int) -> str:
    if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"].strip():
        return item["id"]
    return f"lines[{index}]"


def load_dialogue(path: Path, *, slug: str | None = None) -> Dialogue:
    """Parse one dialogue file into its valid lines and one error per bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DialogueFileError(path, f"is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DialogueFileError(path, f"cannot be read: {exc}") from exc
    if not isinstance(document, dict):
        raise DialogueFileError(path, f"must be a mapping with a 'lines' list, got {type(document).__name__}")
    try:
        top = _DialogueDocument.model_validate(document)
    except ValidationError as exc:
        field_name, rule = _rule(exc.errors()[0])
        raise DialogueFileError(path, f"{field_name}: {rule}") from exc
    if slug is not None and top.queen is not None and top.queen != slug:
        raise DialogueFileError(path, f"queen: {top.queen!r} does not match the file's queen {slug!r}")

    numbers = _line_numbers(text)
    dialogue = Dialogue(path=path, language=top.language)
    raw_ids = [_raw_id(item, i) for i, item in enumerate(top.lines)]
    counts = Counter(raw_ids)
    for index, item in enumerate(top.lines):
        line_id = raw_ids[index]
        yaml_line = numbers[index] if index < len(numbers) else None
        if counts[line_id] > 1 and not line_id.startswith("lines["):
            used_at = [str(numbers[i]) if i < len(numbers) else f"lines[{i}]" for i, r in enumerate(raw_ids) if r == line_id]
            dialogue.errors.append(
                DialogueError(
                    path,
                    line_id,
                    "id",
                    f"is used by {counts[line_id]} lines (YAML lines {', '.join(used_at)}): ids must be unique per queen",
                    yaml_line,
                )
            )
            continue
        if not isinstance(item, dict):
            dialogue.errors.append(
                DialogueError(path, line_id, "(line)", f"must be a mapping, got {type(item).__name__}", yaml_line)
            )
            continue
        try:
            dialogue.lines.append(DialogueLine.model_validate(item))
        except ValidationError as exc:
            field_name, rule = _rule(exc.errors()[0])
            dialogue.errors.append(DialogueError(path, line_id, field_name, rule, yaml_line))
    return dialogue
