"""The demo roster: two neutral queens whose references are photos that installed packages ship.

Nothing here is committed as a binary: the photos come from scikit-image (``astronaut.png``)
and matplotlib (``grace_hopper.jpg``) and the variants are derived on the fly, so a fresh
clone can run the whole pipeline without a network or a studio share.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image, ImageEnhance, ImageOps

from hydra_assets.domain.roster import roster_files
from hydra_assets.domain.storage import atomic_write_bytes

VARIANT_SIZE = 640
"""Variants are upscaled to this short side so that crops still pass the 512 px minimum."""


def astronaut_photo() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent / "astronaut.png"


def grace_hopper_photo() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _crop(box: tuple[float, float, float, float]) -> Callable[[Image.Image], Image.Image]:
    """A crop given in fractions of the image, scaled back up to VARIANT_SIZE."""

    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        cropped = image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
        scale = VARIANT_SIZE / min(cropped.size)
        return cropped.resize((round(cropped.width * scale), round(cropped.height * scale)), Image.Resampling.LANCZOS)

    return apply


# category → [(file name, transform)]; every transform keeps the face recognisable.
VARIANTS: dict[str, list[tuple[str, Callable[[Image.Image], Image.Image]]]] = {
    "portraits": [
        ("front.png", lambda im: im),
        ("mirrored.png", ImageOps.mirror),
        ("close-up.jpg", _crop((0.1, 0.0, 0.9, 0.8))),
    ],
    "expressions": [
        ("bright.png", lambda im: ImageEnhance.Brightness(im).enhance(1.2)),
        ("soft-contrast.jpg", lambda im: ImageEnhance.Contrast(im).enhance(0.8)),
    ],
    "full_body": [
        ("warm-light.jpg", lambda im: ImageEnhance.Color(im).enhance(1.3)),
    ],
}


@dataclass(frozen=True)
class DemoQueen:
    slug: str
    photo: Callable[[], Path]
    background_box: tuple[float, float, float, float]
    """A region with no face in it (fractions of the photo), for the face-less reference."""
    roster: dict


DEMO_QUEENS = (
    DemoQueen(
        slug="nova-sterling",
        photo=astronaut_photo,
        background_box=(0.0, 0.6, 0.35, 1.0),
        roster={
            "slug": "nova-sterling",
            "name": "Nova Sterling",
            "title": "Orbital Dawn",
            "tier": "core",
            "physical_dna": {
                "height": {"cm": 168, "category": "average"},
                "body_type": "athletic",
                "hair": {"color": "brown", "style": "wavy", "length": "short"},
                "eyes": {"color": "brown", "shape": "almond"},
                "skin": {"tone": "fair", "features": ["light freckles"]},
                "ethnicity": "american",
                "age_presentation": "woman in her forties",
                "distinguishing_features": ["warm smile"],
            },
            "personality_dna": {
                "traits": {"curiosity": 9, "calm": 8, "humor": 6},
                "speech_patterns": ["precise", "encouraging"],
                "accent": "general american",
                "verbal_tics": ["copy that"],
            },
            "voice_dna": {"accent": "en-us", "pitch": "medium", "timbre": "clear"},
            "generation_config": {
                "base_prompt": "studio portrait photo, soft key light, 85mm",
                "negative_prompt": "cartoon, painting",
                "lora_strength": 0.8,
                "target_portraits": 4,
                "target_expressions": 3,
                "target_poses": 2,
            },
        },
    ),
    DemoQueen(
        slug="ada-marlowe",
        photo=grace_hopper_photo,
        background_box=(0.0, 0.7, 0.3, 1.0),
        roster={
            "slug": "ada-marlowe",
            "name": "Ada Marlowe",
            "title": "Harbor Admiral",
            "tier": "legacy",
            "physical_dna": {
                "height": {"cm": 165, "category": "average"},
                "body_type": "slim",
                "hair": {"color": "grey", "style": "curled", "length": "short"},
                "eyes": {"color": "blue", "shape": "round"},
                "skin": {"tone": "fair", "features": []},
                "ethnicity": "american",
                "age_presentation": "woman in her seventies",
                "distinguishing_features": ["naval dress uniform"],
            },
            "personality_dna": {
                "traits": {"wit": 9, "patience": 7, "determination": 10},
                "speech_patterns": ["direct", "dry humor"],
                "accent": "new york",
                "verbal_tics": ["well now"],
            },
            "voice_dna": {"accent": "en-us", "pitch": "low", "timbre": "warm"},
            "generation_config": {
                "base_prompt": "formal portrait photo, natural window light",
                "negative_prompt": "cartoon, painting",
                "target_portraits": 4,
                "target_expressions": 3,
                "target_poses": 2,
            },
        },
    ),
)


def _encode(image: Image.Image, name: str) -> bytes:
    buffer = io.BytesIO()
    if name.endswith(".jpg"):
        image.convert("RGB").save(buffer, format="JPEG", quality=92)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_demo_queen(demo: DemoQueen, roster_dir: Path, reference_root: Path) -> list[Path]:
    """Write one demo queen's roster file and references; returns the files written."""
    source = Image.open(demo.photo()).convert("RGB")
    written = [
        atomic_write_bytes(
            Path(roster_dir) / f"{demo.slug}.yaml",
            ("# Demo queen written by `hydra demo-data`.\n" + yaml.safe_dump(demo.roster, sort_keys=False)).encode(),
        )
    ]
    folder = Path(reference_root) / demo.slug
    for category, variants in VARIANTS.items():
        for name, transform in variants:
            written.append(atomic_write_bytes(folder / category / name, _encode(transform(source), name)))
    # Two references the checks must catch, so the manifest shows its reasons in the demo:
    # a thumbnail below the size minimum, and a crop with no face in it.
    thumbnail = source.copy()
    thumbnail.thumbnail((256, 256))
    written.append(atomic_write_bytes(folder / "portraits" / "thumbnail.jpg", _encode(thumbnail, ".jpg")))
    written.append(
        atomic_write_bytes(folder / "full_body" / "backdrop.png", _encode(_crop(demo.background_box)(source), ".png"))
    )
    return written


def write_demo_data(roster_dir: Path, reference_root: Path, *, only_if_empty: bool = False) -> list[Path]:
    """Write the demo roster; with ``only_if_empty`` an existing roster is left untouched."""
    if only_if_empty and roster_files(Path(roster_dir)):
        return []
    written: list[Path] = []
    for demo in DEMO_QUEENS:
        written.extend(write_demo_queen(demo, Path(roster_dir), Path(reference_root)))
    return written
