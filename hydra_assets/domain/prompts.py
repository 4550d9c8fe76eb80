"""Prompt text from a queen's DNA.

The same queen must always give the same prompt (images are keyed by a hash of their
parameters), so the text is built deterministically from the validated model only.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra_assets.domain.roster import Queen

QUALITY_NEGATIVES = (
    "blurry",
    "lowres",
    "jpeg artifacts",
    "deformed",
    "disfigured",
    "extra limbs",
    "bad anatomy",
    "watermark",
    "text",
)


@dataclass(frozen=True)
class Prompts:
    positive: str
    negative: str


def _join(parts: list[str]) -> str:
    seen: list[str] = []
    for part in (p.strip() for p in parts):
        if part and part.lower() not in (s.lower() for s in seen):
            seen.append(part)
    return ", ".join(seen)


def describe_appearance(queen: Queen) -> str:
    """The physical DNA as comma-separated prompt fragments."""
    dna = queen.physical_dna
    hair = " ".join(p for p in (dna.hair.length, dna.hair.style, dna.hair.color) if p)
    eyes = " ".join(p for p in (dna.eyes.color, dna.eyes.shape) if p)
    return _join(
        [
            dna.age_presentation,
            dna.ethnicity,
            f"{dna.body_type} build" if dna.body_type else "",
            f"{dna.height.category} height" if dna.height.category != "average" else "",
            f"{hair} hair",
            f"{eyes} eyes",
            f"{dna.skin.tone} skin",
            *dna.skin.features,
            *dna.distinguishing_features,
        ]
    )


def build_prompts(queen: Queen, type_fragment: str = "") -> Prompts:
    """Positive and negative prompt for the queen; ``type_fragment`` adds the asset type's part."""
    config = queen.generation_config
    positive = _join([config.base_prompt, f"{queen.name}", queen.title, describe_appearance(queen), type_fragment])
    negative = _join([config.negative_prompt, *QUALITY_NEGATIVES])
    return Prompts(positive=positive, negative=negative)
