"""The one place the chapter assets reach into the shared backends and the nightly stages.

Every import of the voice, image, scoring, face and quality modules (and of voice_lines'
line key) lives here, so when those modules move (resources/voice/, resources/image/, the
quality package) only this file changes. What the chapter assets need from them is spelled
out as small functions with the chapter's own names.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from hydra_assets.domain import generation as gen
from hydra_assets.domain.quality import Thresholds, composite_score, first_failed_gate
from hydra_assets.domain.storage import StorageLayout, read_json
from hydra_assets.generation import generate_partition
from hydra_assets.quality import score_batch
from hydra_assets.domain.voice_synthesis import ReuseIndex, plan_keys, synthesize_lines
from hydra_assets.voice import VoiceLinesConfig
from hydra_assets.voice import mastering as voice_mastering
from hydra_assets.domain.dialogue import DialogueLine
from resources.face import FaceBackend
from resources.llm import DialogueVariator, WriterTextVariator
from resources.image import GenerationResult, ImageBackend
from resources.scoring import AestheticScorer, TechnicalScorer
from resources.voice import VoiceBackend, VoiceError, VoicePlan

__all__ = [
    "AestheticScorer", "DialogueVariator", "WriterTextVariator", "FaceBackend", "GenerationResult", "ImageBackend", "TechnicalScorer", "Thresholds",
    "VoiceBackend", "VoiceError", "VoiceLinesConfig", "VoicePlan", "ReuseIndex", "plan_keys", "synthesize_lines",
    "voice_mastering", "score_candidates", "vary_line", "current_lora", "IDENTITY_FILE",
]

IDENTITY_FILE = "identity.npz"
"""reference_identity's mean face vector, as image_scores reads it."""


def vary_line(
    variator: DialogueVariator, line: Mapping[str, Any], scene: Mapping[str, Any], cache_dir: Path, log: Any = None
) -> tuple[str, str]:
    """The text to speak for a chapter line and where it came from (``writer`` or ``llm``).

    A line with ``~ ask:`` goes to the dialogue variator (cached by content key; the writer's
    text when no endpoint is configured or it fails); a variation the dialogue rules refuse
    (too long, nothing to speak) is not used either.
    """
    instruction = line.get("ask")
    if not instruction:
        return line["text"], "writer"
    seed = int(hashlib.sha256(f"{line['id']}".encode()).hexdigest()[:8], 16)
    context = f"Scene {scene['number']}: {scene['setting']}"
    variation = variator.vary(instruction, line["text"], line["speaker"], context, seed, log=log, cache_dir=str(cache_dir))
    if variation.source != "llm":
        return line["text"], "writer" + (f" ({variation.warning})" if variation.warning else "")
    try:
        return DialogueLine(id=line["id"], text=variation.text, level=line["level"], emotion=line["emotion"]).text, "llm"
    except ValidationError as error:
        return line["text"], f"writer (LLM variation refused: {error.errors()[0]['msg'].removeprefix('Value error, ')})"


def current_lora(layout: StorageLayout, slug: str, strength: float) -> gen.LoraSpec | None:
    """The LoRA queen_lora last published for the queen (what the nightly images use)."""
    path = layout.lora_info_path(slug)
    info = read_json(path)
    return None if info is None else gen.lora_spec_from_info(info, layout.lora_path(slug).parent, strength, path)


def load_identity(layout: StorageLayout, slug: str) -> np.ndarray | None:
    path = layout.identity_dir(slug) / IDENTITY_FILE
    if not path.is_file():
        return None
    with np.load(path) as archive:
        return np.asarray(archive["mean"], dtype=np.float32) if "mean" in archive else None


@dataclass(frozen=True)
class CandidateScore:
    aesthetic: float
    technical: float
    face_match: float | None
    composite: float
    reason: str | None
    """The gate's first failed reason, None when the image passes."""
    backends: dict[str, str]


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def score_candidates(
    images: Sequence[np.ndarray],
    identity: np.ndarray | None,
    thresholds: Thresholds,
    aesthetic: AestheticScorer,
    technical: TechnicalScorer,
    face: FaceBackend,
) -> list[CandidateScore]:
    """image_scores' scoring (score_batch) and gate over scene candidates, face match against the
    scene's lead queen. A scene without a queen (``identity`` None) is not judged on a face."""
    if not images:
        return []
    backends = {"aesthetic": aesthetic.backend_name(), "technical": technical.backend_name(), "face": face.backend_name()}
    if identity is not None:
        batch = score_batch(images, aesthetic, technical, face, identity)
        aesthetic_scores, technical_scores, face_scores = batch.aesthetic, batch.technical, batch.face_match
    else:
        aesthetic_scores, _ = aesthetic.score_and_embed(images)
        technical_scores = technical.score(images)
        face_scores = np.full(len(images), np.nan)
    composites = composite_score(aesthetic_scores, technical_scores, face_scores)
    results = []
    for a, t, f, c in zip(aesthetic_scores, technical_scores, face_scores, composites):
        face_match = float(f) if math.isfinite(f) else None
        if identity is None:
            # No queen in the scene: the face gate does not apply (the gate is asked with a face
            # exactly at its threshold, which passes); aesthetic and technical are judged as usual.
            reason = first_failed_gate(float(a), float(t), thresholds.face_match, thresholds)
        else:
            reason = first_failed_gate(float(a), float(t), face_match, thresholds)
        results.append(CandidateScore(_num(a), _num(t), _num(face_match), round(float(c), 4), reason, backends))
    return results


def generate_images(plan, folder: Path, header: dict[str, Any], backend: ImageBackend, log: Any = None):
    """The nightly generation loop (reuse valid files, adopt crash leftovers, manifest after each image)."""
    return generate_partition(plan, folder, header, backend, log=log)
