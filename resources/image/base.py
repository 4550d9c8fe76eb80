"""The interface every image backend implements for generated_images.

``generate(requests)`` yields a :class:`GenerationResult` per image as soon as it exists, so
the asset saves each image (and its manifest line) before the next one arrives and a killed
run loses nothing finished. A failed image is a result with an ``error``; it never stops the
others. Only a backend that cannot work at all (no model, server down after every retry, a
workflow refused by preflight) raises.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import dagster as dg
from PIL import Image

from hydra_assets.domain.night_plan import GenerationRequest
from resources.http import backoff_delay  # noqa: F401  (SPEC's backoff, one definition; re-exported)


@dataclass
class GenerationResult:
    request: GenerationRequest
    image: Image.Image | None
    error: str | None = None
    model_seconds: float = 0.0
    """Time the model (or renderer) spent on this image, for the GPU-seconds metadata."""
    details: dict[str, Any] = field(default_factory=dict)
    """Backend facts worth keeping with the image (ComfyUI prompt id, workflow hash, the demo's transform)."""
    output_index: int = 0
    """0 for the request's own image; 1, 2, … for further images the same prompt made (batch
    size > 1, several output nodes): each is kept as its own manifest line."""

class ImageBackend(dg.ConfigurableResource, abc.ABC):
    """Turns generation requests into images."""

    generative: ClassVar[bool] = True

    @abc.abstractmethod
    def backend_name(self) -> str:
        """Recorded as ``backend`` in every image's parameters (part of its params hash)."""

    @abc.abstractmethod
    def backend_kind(self) -> str:
        """``comfyui``, ``diffusers`` or ``demo``."""

    @abc.abstractmethod
    def model_name(self) -> str:
        """The checkpoint, recorded as ``model`` in every image's parameters."""

    def model_for(self, workflow: str | None) -> str:
        """The checkpoint that really makes images with this workflow (``model`` in their params)."""
        return self.model_name()

    def workflow_names(self) -> bool:
        """Whether the backend runs the roster's per-type workflows (recorded in the params)."""
        return False

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], log: Any = None) -> Iterator[GenerationResult]:
        """One result per request, each yielded as soon as it is ready."""
