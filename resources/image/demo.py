"""The embedded default image backend. It is not a generative model: it derives images from
the queen's references (crop, flip, colour, light) and deliberately degrades a share of them
(blur, noise, a face-less crop) so the quality gate has work to do. Its name and every
image's parameters say so."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from pydantic import Field

from hydra_assets.domain.night_plan import GenerationRequest
from resources.image.base import GenerationResult, ImageBackend

logger = logging.getLogger(__name__)

DEMO_RENDERER = "demo-renderer"
DEMO_MODEL = "demo-renderer (derives images from the queen's references; not a generative model)"


DEGRADATIONS = ("blur", "noise", "faceless")


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def render_demo_image(source: Image.Image, width: int, height: int, rng: np.random.Generator, degradation: str | None) -> tuple[Image.Image, dict[str, Any]]:
    """A variation of one reference photo; with ``degradation`` one the quality gate should refuse."""
    src_w, src_h = source.size
    target_aspect = width / height
    if degradation == "faceless":
        # A bottom corner a third of the photo wide: portraits put the face at the top centre.
        side = "left" if rng.random() < 0.5 else "right"
        crop_w = src_w * 0.32
        crop_h = min(src_h * 0.32, crop_w / target_aspect)
        crop_w = crop_h * target_aspect
        x0 = 0.0 if side == "left" else src_w - crop_w
        box = (x0, src_h - crop_h, x0 + crop_w, float(src_h))
        transform: dict[str, Any] = {"crop": f"bottom-{side} corner"}
    else:
        scale = _uniform(rng, 0.78, 1.0)
        crop_w = min(src_w * scale, src_h * scale * target_aspect)
        crop_h = crop_w / target_aspect
        cx = src_w / 2 + _uniform(rng, -0.08, 0.08) * src_w
        cy = src_h / 2 + _uniform(rng, -0.06, 0.04) * src_h
        x0 = min(max(cx - crop_w / 2, 0.0), src_w - crop_w)
        y0 = min(max(cy - crop_h / 2, 0.0), src_h - crop_h)
        box = (x0, y0, x0 + crop_w, y0 + crop_h)
        transform = {"crop_scale": round(scale, 3)}
    image = source.resize((width, height), Image.Resampling.BICUBIC, box=box)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
        transform["flip"] = True
    color, brightness, contrast = _uniform(rng, 0.8, 1.25), _uniform(rng, 0.88, 1.12), _uniform(rng, 0.88, 1.12)
    image = ImageEnhance.Color(image).enhance(color)
    image = ImageEnhance.Brightness(image).enhance(brightness)
    image = ImageEnhance.Contrast(image).enhance(contrast)
    warmth = _uniform(rng, -0.06, 0.06)
    pixels = np.asarray(image, dtype=np.float32)
    pixels *= np.array([1 + warmth, 1.0, 1 - warmth], dtype=np.float32)
    transform.update(color=round(color, 3), brightness=round(brightness, 3), contrast=round(contrast, 3), warmth=round(warmth, 3))
    if degradation == "noise":
        sigma = _uniform(rng, 35.0, 55.0)
        pixels += rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
        transform["noise_sigma"] = round(sigma, 1)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    if degradation == "blur":
        radius = _uniform(rng, 6.0, 10.0) * max(width, height) / 768
        image = image.filter(ImageFilter.GaussianBlur(radius))
        transform["blur_radius"] = round(radius, 2)
    return image, transform


class DemoRenderer(ImageBackend):
    """The embedded default. NOT a generative model: every image is derived from one of the
    queen's normalized references, and a deterministic share is degraded on purpose (blur,
    noise, a crop without the face) so the quality gate rejects something in the demo."""

    degraded_share: float = Field(default=0.25, ge=0.0, le=1.0, description="Share of images degraded on purpose.")

    generative: ClassVar[bool] = False

    def backend_name(self) -> str:
        return DEMO_RENDERER

    def backend_kind(self) -> str:
        return "demo"

    def model_name(self) -> str:
        return DEMO_MODEL

    def plan_for(self, request: GenerationRequest) -> tuple[np.random.Generator, str | None]:
        """The image's random stream and whether it is degraded: from its seed alone, so the
        same slot renders the same image whichever batch it is in."""
        rng = np.random.default_rng(request.seed)
        degraded = rng.random() < self.degraded_share
        kind = DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
        return rng, kind if degraded else None

    def generate(self, requests_: Sequence[GenerationRequest], log: Any = None) -> Iterator[GenerationResult]:
        log = log or logger
        sources: dict[str, Image.Image] = {}
        for request in requests_:
            if not request.references:
                yield GenerationResult(
                    request, None, f"{DEMO_RENDERER}: no normalized references for {request.queen}; materialize reference_images first"
                )
                continue
            began = time.monotonic()
            rng, degradation = self.plan_for(request)
            reference = request.references[int(rng.integers(len(request.references)))]
            try:
                if reference not in sources:
                    with Image.open(reference) as opened:
                        sources[reference] = opened.convert("RGB")
                image, transform = render_demo_image(sources[reference], request.width, request.height, rng, degradation)
            except (OSError, ValueError) as exc:
                yield GenerationResult(request, None, f"{DEMO_RENDERER}: cannot derive from {reference}: {exc}")
                continue
            details = {
                "renderer": DEMO_RENDERER,
                "generative": False,
                "source_reference": Path(reference).name,
                "degraded": degradation,
                "transform": transform,
            }
            yield GenerationResult(request, image, None, time.monotonic() - began, details)
