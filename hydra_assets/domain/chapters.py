"""Chapter scripts: one markdown file per chapter, parsed into scenes, lines and stage directions.

Format (``chapters/{slug}.md``; the slug is the file name, with the roster's slug rules)::

    ---
    title: The Harbour Morning
    number: 1
    cast: [nova-sterling, ada-marlowe]   # roster slugs of the queens in the chapter
    language: en                         # optional, default en
    level: 0                             # optional default story level (0-10) of every line
    ---

    ## arrival: The harbour office         <- a scene: `## <scene id>: <title>`
    Setting: A small harbour office at dawn, charts on the walls.
    Queens: nova-sterling, ada-marlowe     <- the queens present (cast slugs), or `none`

    > Nova stands by the window with a mug; Ada studies a chart.   <- stage directions (the image)

    **narrator**: The ferry docked just after six.
    **nova-sterling** (calm, 1): Good morning. The coffee is fresh.
    ~ ask: make it a little warmer                                  <- LLM variation of the line above
    **player**: Thanks. Where do I start?

A dialogue line is ``speaker (emotion, level): text``; the bold, the emotion and the level are
optional (``nova-sterling: Hello.`` works), and list bullets (``- ``) may prefix lines. Speakers
are ``narrator``, ``player`` or a cast slug present in the scene. ``# `` headings and HTML
comments are ignored. Every problem is a :class:`ChapterError` naming the file, the line and
the rule; a bad line is left out and every other line is kept.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from markdown_it import MarkdownIt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hydra_assets.domain.dialogue import EMOTIONS, MAX_LEVEL, MAX_TEXT_CHARS, MIN_LEVEL
from hydra_assets.domain.roster import SLUG_MAX_LENGTH, SLUG_PATTERN, is_valid_slug
from hydra_assets.domain.input_folders import walk_folder
from hydra_assets.domain.safe_documents import DocumentError, parse_yaml

SCRIPT_SUFFIX = ".md"
NARRATOR, PLAYER = "narrator", "player"
VOICES = (NARRATOR, PLAYER)
"""Speakers that are not queens; their voices come from configuration."""
MAX_SCRIPT_BYTES = 1 << 20
MAX_FRONT_MATTER_BYTES = 16 << 10
MAX_FRONT_MATTER_EVENTS = 2_000
MAX_CAST = 50
SCENE_ID_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
SCENE_ID_MAX = 40
DEFAULT_EMOTION = "neutral"

_HEADING = re.compile(r"^(?P<id>\S+?)\s*(?::\s*(?P<title>.*))?$")
_DIALOGUE = re.compile(r"^\*{0,2}(?P<speaker>[A-Za-z0-9_-]+)\*{0,2}\s*(?:\((?P<tags>[^)]*)\))?\s*:\s*(?P<text>.*)$")
_KEYED = re.compile(r"^(?P<key>setting|queens|present)\s*:\s*(?P<value>.*)$", re.IGNORECASE)
_ASK = re.compile(r"^~\s*ask\s*:\s*(?P<instruction>.*)$", re.IGNORECASE)
_SPEAKABLE = re.compile(r"\w")
_WHITESPACE = re.compile(r"\s+")


class ChapterFileError(ValueError):
    """The whole script is unusable (unreadable, too large, broken front matter)."""

    def __init__(self, path: Path, line: int | None, rule: str):
        self.path, self.line, self.rule = Path(path), line, rule
        super().__init__(f"{self.path}:{line}: {rule}" if line else f"{self.path}: {rule}")


@dataclass(frozen=True)
class ChapterError:
    """One rejected line: the file, its 1-based line and the rule it broke."""

    path: Path
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}"


class FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: Annotated[str, Field(min_length=1, max_length=200)]
    number: Annotated[int, Field(ge=1, le=9999)]
    cast: Annotated[list[Annotated[str, Field(max_length=SLUG_MAX_LENGTH, pattern=SLUG_PATTERN)]], Field(min_length=1, max_length=MAX_CAST)]
    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")] = "en"
    level: Annotated[int, Field(ge=MIN_LEVEL, le=MAX_LEVEL)] = 0

    @field_validator("cast")
    @classmethod
    def _unique(cls, cast: list[str]) -> list[str]:
        twice = sorted({s for s in cast if cast.count(s) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once")
        if set(cast) & set(VOICES):
            raise ValueError(f"{NARRATOR!r} and {PLAYER!r} are voices, not cast members")
        return cast


class ChapterLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    """``{scene id}-{NN}``: stable while lines above it in the scene do not move."""
    number: int
    """1-based position in the chapter (``audio/dialogue_{NNN}.wav``)."""
    scene: str
    speaker: str
    text: str
    emotion: str = DEFAULT_EMOTION
    level: int = 0
    ask: str | None = None
    source_line: int


class Scene(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    number: int
    title: str = ""
    setting: str = ""
    queens: list[str] = Field(default_factory=list)
    directions: list[str] = Field(default_factory=list)
    lines: list[ChapterLine] = Field(default_factory=list)
    source_line: int


class Chapter(BaseModel):
    slug: str
    path: str
    sha256: str
    front: FrontMatter
    scenes: list[Scene] = Field(default_factory=list)

    @property
    def lines(self) -> list[ChapterLine]:
        return [line for scene in self.scenes for line in scene.lines]


@dataclass
class ParsedChapter:
    chapter: Chapter | None
    errors: list[ChapterError] = field(default_factory=list)


def chapter_slug(path: Path) -> str:
    name = Path(path).name
    return name[: -len(SCRIPT_SUFFIX)] if name.endswith(SCRIPT_SUFFIX) else name


def scan_scripts(chapters_dir: Path) -> tuple[list[Path], dict[Path, str]]:
    """The scripts (plain ``*.md`` files at the top of the folder) and the ``*.md`` entries refused
    with why: symbolic links and special files are never read (hydra_assets/domain/input_folders.py)."""
    folder = Path(chapters_dir)
    walk = walk_folder(folder)
    top = lambda rel: "/" not in rel and rel.endswith(SCRIPT_SUFFIX)  # noqa: E731
    scripts = sorted(path for rel, (path, _) in walk.files.items() if top(rel))
    return scripts, {folder / rel: reason for rel, reason in walk.refused.items() if top(rel)}


def script_files(chapters_dir: Path) -> list[Path]:
    return scan_scripts(chapters_dir)[0]


def _split_front_matter(path: Path, text: str) -> tuple[str, str, int]:
    """(front matter YAML, body with the front matter blanked, first line of the YAML)."""
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        raise ChapterFileError(path, 1, "must start with a '---' front matter block (title, number, cast)")
    for index in range(1, len(lines)):
        if lines[index].strip() in ("---", "..."):
            front = "\n".join(lines[1:index])
            body = "\n" * (index + 1) + "\n".join(lines[index + 1 :])  # keeps line numbers
            return front, body, 2
    raise ChapterFileError(path, 1, "front matter is not closed by a '---' line")


def _load_front_matter(path: Path, front: str, first_line: int) -> FrontMatter:
    if len(front.encode()) > MAX_FRONT_MATTER_BYTES:
        raise ChapterFileError(path, first_line, f"front matter is larger than {MAX_FRONT_MATTER_BYTES} bytes")
    try:
        for count, event in enumerate(yaml.parse(front, Loader=yaml.SafeLoader)):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = first_line + event.start_mark.line
                raise ChapterFileError(path, line, "front matter may not use YAML anchors or aliases")
            if count > MAX_FRONT_MATTER_EVENTS:
                raise ChapterFileError(path, first_line, f"front matter has more than {MAX_FRONT_MATTER_EVENTS} YAML nodes")
        document = parse_yaml(front, path)
    except DocumentError as exc:  # a value YAML cannot construct, nesting too deep: the bounded reader's rules
        raise ChapterFileError(path, first_line, f"front matter {exc.rule}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = first_line + mark.line if mark else first_line
        raise ChapterFileError(path, line, f"front matter is not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(document, dict):
        raise ChapterFileError(path, first_line, f"front matter must be a mapping (title, number, cast), got {type(document).__name__}")
    try:
        return FrontMatter.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "front matter"
        rule = {"missing": "is required but missing", "extra_forbidden": "is not a known field"}.get(
            error["type"], error["msg"].removeprefix("Value error, ")
        )
        key_line = _key_line(front, str(error["loc"][0]) if error["loc"] else "", first_line)
        raise ChapterFileError(path, key_line, f"front matter {where}: {rule}") from exc


def _key_line(front: str, key: str, first_line: int) -> int:
    for index, line in enumerate(front.split("\n")):
        if key and line.startswith(f"{key}:"):
            return first_line + index
    return first_line


def _clean(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _parse_tags(tags: str, default_level: int) -> tuple[str, int, str | None]:
    """``(calm, 3)`` → emotion, level, or the rule the tags break."""
    emotion, level = DEFAULT_EMOTION, default_level
    for raw in (t.strip().lower() for t in tags.split(",")):
        if not raw:
            continue
        value = raw.removeprefix("level").strip()
        if value.lstrip("-").isdigit():
            level = int(value)
            if not MIN_LEVEL <= level <= MAX_LEVEL:
                return emotion, level, f"level {level} is outside {MIN_LEVEL}-{MAX_LEVEL}"
        elif raw in EMOTIONS:
            emotion = raw
        else:
            return emotion, level, f"unknown emotion {raw!r}; known: {', '.join(EMOTIONS)}"
    return emotion, level, None


class _Builder:
    """Walks the markdown tokens, one scene at a time, collecting lines and errors."""

    def __init__(self, path: Path, front: FrontMatter, known_queens: set[str] | None, errors: list[ChapterError]):
        self.path, self.front, self.errors = path, front, errors
        self.cast = set(front.cast)
        self.known = known_queens
        self.scenes: list[dict] = []
        self.current: dict | None = None
        self.skipping = False

    def error(self, line: int, rule: str) -> None:
        self.errors.append(ChapterError(self.path, line, rule))

    def heading(self, text: str, line: int) -> None:
        match = _HEADING.match(text.strip())
        scene_id = match["id"] if match else text.strip()
        if not match or not re.fullmatch(SCENE_ID_PATTERN, scene_id) or len(scene_id) > SCENE_ID_MAX:
            self.error(line, f"scene id {scene_id!r} must be lowercase letters, digits and hyphens (at most {SCENE_ID_MAX}): `## arrival: Title`")
            self.current, self.skipping = None, True
            return
        if any(s["id"] == scene_id for s in self.scenes):
            first = next(s["line"] for s in self.scenes if s["id"] == scene_id)
            self.error(line, f"duplicate scene id {scene_id!r} (first used at line {first}); this scene is left out")
            self.current, self.skipping = None, True
            return
        self.current = {"id": scene_id, "title": _clean(match["title"] or ""), "line": line, "setting": None,
                        "queens": None, "directions": [], "lines": []}
        self.scenes.append(self.current)
        self.skipping = False

    def _scene(self, line: int) -> dict | None:
        if self.current is None and not self.skipping:
            self.error(line, "text before the first scene heading (`## scene-id: Title`)")
        return self.current

    def direction(self, text: str, line: int) -> None:
        if (scene := self._scene(line)) is not None and _clean(text):
            scene["directions"].append(_clean(text))

    def text_line(self, raw: str, line: int) -> None:
        text = raw.strip().removeprefix("- ").removeprefix("* ").strip() if raw.strip() not in ("-", "*") else ""
        if not text:
            return
        scene = self._scene(line)
        if scene is None:
            return
        if keyed := _KEYED.match(text):
            self._keyed(scene, keyed["key"].lower(), keyed["value"], line)
        elif ask := _ASK.match(text):
            instruction = _clean(ask["instruction"])
            if not instruction:
                self.error(line, "empty `~ ask:` instruction")
            elif not scene["lines"] or scene["lines"][-1]["ask"] is not None:
                self.error(line, "`~ ask:` must follow the dialogue line it varies (one per line)")
            else:
                scene["lines"][-1]["ask"] = instruction
        elif dialogue := _DIALOGUE.match(text):
            self._dialogue(scene, dialogue, line)
        else:
            self.error(line, "not a dialogue line (`speaker (emotion, level): text`), Setting:, Queens:, "
                             "`~ ask:` or a stage direction (`> ...`)")

    def _keyed(self, scene: dict, key: str, value: str, line: int) -> None:
        if key == "setting":
            if scene["setting"] is not None:
                self.error(line, f"scene {scene['id']!r} already has a Setting: line")
            elif not _clean(value):
                self.error(line, "empty Setting: line")
            else:
                scene["setting"] = _clean(value)
            return
        if scene["queens"] is not None:
            self.error(line, f"scene {scene['id']!r} already has a Queens: line")
            return
        scene["queens"] = []
        names = [] if value.strip().lower() in ("", "none", "-") else [n.strip() for n in value.split(",")]
        for name in names:
            if name not in self.cast:
                self.error(line, f"queen {name!r} is not in the cast ({', '.join(self.front.cast)})")
            elif name not in scene["queens"]:
                scene["queens"].append(name)

    def _dialogue(self, scene: dict, match: re.Match, line: int) -> None:
        speaker = match["speaker"].lower()
        if speaker not in VOICES:
            if not is_valid_slug(speaker):
                self.error(line, f"unknown speaker {match['speaker']!r}: use a cast slug, {NARRATOR} or {PLAYER}")
                return
            if speaker not in self.cast:
                self.error(line, f"unknown speaker {speaker!r}: queen not in the cast ({', '.join(self.front.cast)})")
                return
            if scene["queens"] is not None and speaker not in scene["queens"]:
                self.error(line, f"speaker {speaker!r} is not among the queens present in scene {scene['id']!r}")
                return
        emotion, level, problem = _parse_tags(match["tags"] or "", self.front.level)
        text = _clean(match["text"].replace("\\", ""))
        if problem is None and not text:
            problem = "empty line: the speaker has no text"
        elif problem is None and not _SPEAKABLE.search(text):
            problem = f"text {text!r} has nothing to speak (no letter or digit)"
        elif problem is None and len(text) > MAX_TEXT_CHARS:
            problem = f"text is {len(text)} characters, more than {MAX_TEXT_CHARS}: split it into several lines"
        if problem:
            self.error(line, problem)
            return
        scene["lines"].append({"speaker": speaker, "text": text, "emotion": emotion, "level": level, "ask": None, "line": line})

    def scenes_models(self) -> list[Scene]:
        result, number = [], 0
        for index, raw in enumerate(self.scenes, start=1):
            if raw["setting"] is None:
                self.error(raw["line"], f"scene {raw['id']!r} has no Setting: line (it describes the scene image)")
            if raw["queens"] is None:
                self.error(raw["line"], f"scene {raw['id']!r} has no Queens: line (cast slugs present, or `none`)")
            lines = []
            for position, entry in enumerate(raw["lines"], start=1):
                number += 1
                lines.append(ChapterLine(
                    id=f"{raw['id']}-{position:02d}", number=number, scene=raw["id"], speaker=entry["speaker"],
                    text=entry["text"], emotion=entry["emotion"], level=entry["level"], ask=entry["ask"],
                    source_line=entry["line"],
                ))
            result.append(Scene(
                id=raw["id"], number=index, title=raw["title"], setting=raw["setting"] or "",
                queens=raw["queens"] or [], directions=raw["directions"], lines=lines, source_line=raw["line"],
            ))
        return result


def parse_chapter(path: Path, text: str | None = None, *, known_queens: set[str] | None = None) -> ParsedChapter:
    """Parse one script; raises :class:`ChapterFileError` only when nothing of it is usable."""
    path = Path(path)
    slug = chapter_slug(path)
    if not is_valid_slug(slug):
        raise ChapterFileError(path, None, f"file name {slug!r} is not a valid slug ({SLUG_PATTERN}, 1-{SLUG_MAX_LENGTH} chars)")
    if text is None:
        try:
            if path.stat().st_size > MAX_SCRIPT_BYTES:
                raise ChapterFileError(path, None, f"is larger than {MAX_SCRIPT_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ChapterFileError(path, None, f"cannot be read: {exc}") from exc
    if len(text.encode()) > MAX_SCRIPT_BYTES:
        raise ChapterFileError(path, None, f"is larger than {MAX_SCRIPT_BYTES} bytes")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    front_text, body, first = _split_front_matter(path, text)
    front = _load_front_matter(path, front_text, first)
    errors: list[ChapterError] = []
    if known_queens is not None:
        for name in front.cast:
            if name not in known_queens:
                errors.append(ChapterError(path, _key_line(front_text, "cast", first), f"cast: {name!r} is not in the roster (no queen_profile for it)"))
        front = front.model_copy(update={"cast": [n for n in front.cast if n in known_queens]})
    builder = _Builder(path, front, known_queens, errors)
    source_lines = body.split("\n")
    in_quote, heading = 0, None
    for token in MarkdownIt("commonmark").parse(body):
        start = (token.map[0] + 1) if token.map else 0
        if token.type == "blockquote_open":
            in_quote += 1
        elif token.type == "blockquote_close":
            in_quote -= 1
        elif token.type == "heading_open":
            heading = token.tag
        elif token.type == "inline" and heading:
            if heading == "h2":
                builder.heading(token.content, start)
            elif heading != "h1":
                builder.error(start, f"only `#` (title) and `##` (scene) headings are used, got {'#' * int(heading[1])}")
            heading = None
        elif token.type == "inline":
            for offset, raw in enumerate(token.content.split("\n")):
                number = start + offset
                # A line right after a quote without '>' is markdown's lazy continuation: not a direction.
                quoted = in_quote and source_lines[number - 1].lstrip().startswith(">")
                if quoted:
                    builder.direction(raw, number)
                else:
                    builder.text_line(raw, number)
        elif token.type in ("fence", "code_block"):
            builder.error(start, "code blocks are not part of a script")
    scenes = builder.scenes_models()
    errors.sort(key=lambda e: e.line)
    chapter = Chapter(slug=slug, path=str(path), sha256=hashlib.sha256(text.encode()).hexdigest(), front=front, scenes=scenes)
    return ParsedChapter(chapter, errors)

