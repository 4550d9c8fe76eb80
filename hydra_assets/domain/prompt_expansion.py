"""What the studio asks its LLM, how answers are checked, and the cache that makes a re-run ask nothing.

Two uses share this (SPEC "LLM endpoint"): **prompt expansion** turns the prompt built from
a queen's DNA (:mod:`hydra_assets.domain.prompts`) plus the asset type and the night's
variation into a richer positive prompt; **dialogue variation** rewrites a chapter line
that asks for it (``~ ask: <instruction>``). Both fall back to the text they were given
(the template prompt, the writer's line) whenever the answer is missing or unusable.

Cache keys are sha256 of every input that changes the answer: the system template (so a
new template version asks again), the user message's parts, the model name, seed,
max_tokens and temperature. The model is the configured name: with the alias ``current``
a new model on the server is not noticed, so set the real name (or clear the cache) when
the served model changes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hydra_assets.domain.safe_documents import load_json
from hydra_assets.domain.storage import atomic_write_json

CACHE_VERSION = 1
CACHE_FOLDER = Path("cache") / "prompt_expansions"
"""Under the storage root; prompt expansions and dialogue variations share it (keys name their kind)."""

PROMPT_SYSTEM_TEMPLATE = """\
You write prompts for a portrait photography image generator.
You receive a base prompt that describes one character and the kind of shot, the asset type,
and a variation for this image. Write one positive prompt for that image:
- keep every identity detail of the base prompt exactly (face, eyes, hair, skin, build, age, clothing);
- add what a portrait photographer would choose for the variation: lighting, lens, framing,
  pose, expression, setting, mood;
- neutral and tasteful, fully clothed, no brand names, no text in the image;
- one line of comma-separated phrases, at most 75 words, no negative prompt, no explanation.
Answer with the prompt only."""
"""System message of prompt expansion (version-keyed: editing it invalidates the cache)."""

DIALOGUE_SYSTEM_TEMPLATE = """\
You write variations of dialogue lines for a narrative video game.
You receive the speaker, the scene's context, the writer's line and the writer's instruction.
Rewrite the line as the instruction asks:
- keep its meaning, the speaker's voice and the line's language; a similar length;
- ordinary, friendly dialogue suitable for all audiences;
- no stage directions, no speaker name, no quotation marks, no explanation.
Answer with the new line only."""
"""System message of dialogue variation."""

Source = Literal["llm", "template"]


@dataclass(frozen=True)
class ExpansionRequest:
    """One image's prompt to expand. ``template_prompt``: the prompt from the queen's DNA today;
    ``variation``: the night's variation (its text, or its index as text)."""

    slug: str
    asset_type: str
    template_prompt: str
    variation: str | int = ""
    seed: int = 0


@dataclass(frozen=True)
class Expansion:
    """The positive prompt to use. ``source`` says who wrote it; ``warning`` why the template was
    kept; ``cached``: taken from the cache without asking."""

    prompt: str
    source: Source
    model: str
    cache_key: str
    warning: str | None = None
    cached: bool = False

    def params(self) -> dict[str, Any]:
        """What an image's generation params record about its prompt (issue 9: ``prompt_source``)."""
        out: dict[str, Any] = {"prompt_source": self.source, "prompt_model": self.model, "prompt_cache_key": self.cache_key}
        if self.warning:
            out["prompt_warning"] = self.warning
        return out


@dataclass(frozen=True)
class Variation:
    """A dialogue line to voice: the LLM's variation (``source='llm'``) or the writer's text
    (``source='writer'``, with ``warning`` saying why when a variation was asked for)."""

    text: str
    source: Literal["llm", "writer"]
    warning: str | None = None
    model: str = "writer"
    cache_key: str = ""
    cached: bool = False


def content_key(kind: str, **parts: Any) -> str:
    """sha256 of the canonical JSON of everything that changes the answer."""
    document = {"kind": kind, "version": CACHE_VERSION, **parts}
    return hashlib.sha256(json.dumps(document, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def prompt_user_message(request: ExpansionRequest) -> str:
    return (
        f"Asset type: {request.asset_type}\n"
        f"Variation: {request.variation if request.variation != '' else 'none'}\n"
        f"Base prompt: {request.template_prompt}"
    )


def dialogue_user_message(instruction: str, text: str, speaker: str, context: str) -> str:
    return (
        f"Speaker: {speaker}\n"
        f"Context: {context or 'none'}\n"
        f"Instruction: {instruction}\n"
        f"Line: {text}"
    )


def messages(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def prompt_key(request: ExpansionRequest, model: str, max_tokens: int, temperature: float) -> str:
    return content_key(
        "prompt_expansion",
        system=PROMPT_SYSTEM_TEMPLATE,
        user=prompt_user_message(request),
        model=model,
        seed=request.seed,
        max_tokens=max_tokens,
        temperature=temperature,
    )


def dialogue_key(instruction: str, text: str, speaker: str, context: str, seed: int, model: str,
                 max_tokens: int, temperature: float) -> str:
    return content_key(
        "dialogue_variation",
        system=DIALOGUE_SYSTEM_TEMPLATE,
        user=dialogue_user_message(instruction, text, speaker, context),
        model=model,
        seed=seed,
        max_tokens=max_tokens,
        temperature=temperature,
    )


_WRAPPERS = re.compile(r'^(?:prompt|line|answer)\s*:\s*', re.IGNORECASE)
_QUOTES = "\"'“”‘’`"


def clean_completion(content: str | None, max_chars: int, one_line: bool) -> tuple[str | None, str | None]:
    """(text, None) when the model's answer is usable, else (None, reason). Strips a leading
    ``Prompt:``/``Line:`` label and surrounding quotes; refuses empty or over-long answers."""
    if content is None:
        return None, "the answer has no message content"
    text = content.strip()
    text = _WRAPPERS.sub("", text).strip().strip(_QUOTES).strip()
    if one_line:
        text = re.sub(r"\s+", " ", text)
    if not text:
        return None, "the answer's content is empty"
    if len(text) > max_chars:
        return None, f"the answer is {len(text)} characters, over the limit of {max_chars}"
    return text, None


def cache_folder(storage_root: Path | str) -> Path:
    """Where the LLM's answers are cached for a storage root (what assets pass as ``cache_dir``)."""
    return Path(storage_root) / CACHE_FOLDER


class ExpansionCache:
    """One JSON file per content key under ``root`` (``<key[:2]>/<key>.json``), written atomically.
    A file that does not read back (truncated, edited) is a miss and is rewritten on the next answer."""

    def __init__(self, root: Path | str | None):
        self.root = Path(root) if root else None

    def path(self, key: str) -> Path | None:
        return self.root / key[:2] / f"{key}.json" if self.root else None

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            document = load_json(path)
        except (OSError, ValueError):  # DocumentError (a ValueError) for truncated, deep or non-UTF-8 files
            return None
        if not isinstance(document, dict) or document.get("key") != key or not isinstance(document.get("text"), str):
            return None
        return document

    def put(self, key: str, text: str, model: str, request: dict[str, Any]) -> None:
        path = self.path(key)
        if path is not None:
            atomic_write_json(path, {"key": key, "text": text, "model": model, "request": request})
