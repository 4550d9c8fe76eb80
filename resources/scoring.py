"""Aesthetic and technical scorers for the quality gate, each behind one pluggable interface.

Every scorer takes a batch of HxWx3 uint8 RGB arrays and returns one score per image on the
SPEC's scale (already calibrated by ``hydra_assets.domain.image_measures.CALIBRATIONS``), and carries a
``backend_name()`` that is stored with every score row.

Cluster backends load their weights from local paths only (the model store) and fail with a
message naming the missing file; nothing is fetched from a hub:

- ``LaionAesthetic``: open_clip CLIP ViT-L/14 image embeddings, L2-normalised, into the LAION
  improved aesthetic predictor MLP (768 → 1024 → 128 → 64 → 16 → 1).
- ``Musiq``: pyiqa's MUSIQ trained on KonIQ-10k. pyiqa is optional (``pip install --no-deps
  pyiqa==0.1.16``: its declared dependencies include training and dataset tooling MUSIQ does not
  use, and its wheel also drops top-level ``tests``/``build``/``options`` folders into
  site-packages); it is imported only when a Musiq scorer first scores.

Embedded backends need no weights and run anywhere: ``ImageStatsAestheticProxy`` and
``ClassicalTechnical`` (the measures and their calibration are documented in the domain module).

Models are loaded once per process and configuration (``functools.lru_cache``), never per image.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import numpy as np
from pydantic import Field

from hydra_assets.domain import image_measures as measures

LAION_MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
LAION_EMBEDDING_DIM = 768
MUSIQ_KONIQ_FILE = "musiq_koniq_ckpt-e95806b9.pth"
PYIQA_INSTALL = "pip install --no-deps pyiqa==0.1.16"

CLIP_NEAR_DUPLICATE_COSINE = 0.95
"""CLIP image embeddings of re-renders with the same composition sit above ~0.95; different
poses or framings of one person fall well below."""
TINY_NEAR_DUPLICATE_COSINE = 0.95
"""Between the 0.998 of shifted or regraded copies and the 0.74 of a 90 % crop (domain module)."""


MODEL_LOADED = "model loaded:"
"""Each model loader logs one line starting with this when it loads (a cache miss): the step's
event log then shows how often a night loads each model (bench/overnight_scale.py counts them)."""


def log_model_load(what: str, source: str) -> None:
    dg.get_dagster_logger().info(f"{MODEL_LOADED} {what} from {source}")


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def local_file(path: str | None, what: str, field: str, owner: str, hint: str) -> str:
    """The weight file at ``path``, or a FileNotFoundError that names it and how to provide it."""
    if not path:
        raise FileNotFoundError(f"{owner}.{field} is not set: point it at the local {what} ({hint})")
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(
            f"{what} not found at {resolved}: copy it there from the model store or set {owner}.{field} ({hint}); "
            "this pipeline never downloads weights"
        )
    return str(resolved)


def rgb_batch(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    checked = []
    for index, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"image {index}: expected HxWx3 uint8 RGB, got shape {array.shape} dtype {array.dtype}")
        checked.append(array)
    return checked


def chunks(items: Sequence[Any], size: int) -> Iterator[list[int]]:
    """Index lists of at most ``size`` consecutive items."""
    for start in range(0, len(items), size):
        yield list(range(start, min(start + size, len(items))))


# ------------------------------------------------------------------------------ aesthetic


class AestheticScorer(dg.ConfigurableResource, abc.ABC):
    """Aesthetic score (1-10) and an image embedding for near-duplicate search, in one pass."""

    near_duplicate_cosine: ClassVar[float]

    @abc.abstractmethod
    def backend_name(self) -> str:
        """Model identity recorded with every score."""

    @abc.abstractmethod
    def embedding_name(self) -> str:
        """Identity of the embedding space: only embeddings of one space are compared."""

    @abc.abstractmethod
    def score_and_embed(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Scores (n,) on 1-10 and unit embeddings (n, d) for HxWx3 uint8 RGB images."""

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.score_and_embed(images)[0]


class ImageStatsAestheticProxy(AestheticScorer):
    """A documented image-statistics PROXY for the LAION predictor (focus, tonal range, colour,
    exposure balance), at most 8.0; embeddings are 32x32 grey thumbnails."""

    near_duplicate_cosine: ClassVar[float] = TINY_NEAR_DUPLICATE_COSINE

    def backend_name(self) -> str:
        return measures.AESTHETIC_PROXY

    def embedding_name(self) -> str:
        return f"tiny-image-{measures.TINY_EMBEDDING_SIDE}"

    def score_and_embed(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        batch = rgb_batch(images)
        scores = np.array([measures.aesthetic_proxy(image) for image in batch], dtype=np.float64)
        dim = measures.TINY_EMBEDDING_SIDE**2
        embeddings = np.stack([measures.tiny_image_embedding(i) for i in batch]) if batch else np.empty((0, dim))
        return scores, embeddings.astype(np.float32)


def build_laion_mlp(input_size: int = LAION_EMBEDDING_DIM):
    """The improved aesthetic predictor's MLP, with the module names its published state dict uses
    (``layers.0`` ... ``layers.7``); dropout is inactive at inference."""
    from torch import nn

    return nn.ModuleDict(
        {
            "layers": nn.Sequential(
                nn.Linear(input_size, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )
        }
    )


@functools.lru_cache(maxsize=2)
def load_laion(clip_model: str, clip_checkpoint: str, mlp_path: str, device: str):
    """CLIP, its eval transform and the MLP on ``device``, once per process and configuration."""
    import open_clip
    import torch

    log_model_load(f"open_clip {clip_model} + LAION MLP", f"{clip_checkpoint}, {mlp_path}")
    if clip_model.endswith(".json"):
        # A model config in open_clip's format, registered under its file stem.
        config_file = clip_model
        open_clip.add_model_config(config_file)
        clip_model = Path(config_file).stem
        if clip_model not in open_clip.list_models():
            raise ValueError(f"{config_file} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    model, _, preprocess = open_clip.create_model_and_transforms(
        clip_model, pretrained=clip_checkpoint, device=device, require_pretrained=True
    )
    model.eval()
    embed_dim = model.visual.output_dim
    if embed_dim != LAION_EMBEDDING_DIM:
        raise ValueError(
            f"CLIP model {clip_model} embeds to {embed_dim} dimensions; the LAION aesthetic MLP takes {LAION_EMBEDDING_DIM}"
        )
    mlp = build_laion_mlp()
    state = torch.load(mlp_path, map_location="cpu", weights_only=True)
    try:
        mlp.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{mlp_path} is not a LAION aesthetic MLP state dict (layers.0 ... layers.7): {exc}") from exc
    mlp.to(device).eval()
    return model, preprocess, mlp


class LaionAesthetic(AestheticScorer):
    """LAION improved aesthetic predictor on open_clip CLIP ViT-L/14 embeddings, from local files."""

    clip_model: str = Field(
        default="ViT-L-14-quickgelu",
        description="open_clip model config: a built-in name or a path to a config .json. OpenAI's ViT-L/14 "
        "(the one the predictor was trained on) uses QuickGELU, hence the default.",
    )
    clip_checkpoint_path: str = Field(description="Local CLIP weights (open_clip state dict, .bin/.pt/.safetensors).")
    mlp_path: str = Field(description=f"Local aesthetic MLP weights, {LAION_MLP_FILE}.")
    device: str = Field(default="auto", description="torch device; auto = cuda when present, else cpu.")
    batch_size: int = Field(default=16, ge=1, description="Images per forward pass.")

    near_duplicate_cosine: ClassVar[float] = CLIP_NEAR_DUPLICATE_COSINE

    def backend_name(self) -> str:
        return f"{measures.LAION_AESTHETIC}/{Path(self.clip_model).stem}"

    def embedding_name(self) -> str:
        return f"open-clip/{Path(self.clip_model).stem}"

    def models(self):
        if self.clip_model.endswith(".json"):
            local_file(self.clip_model, "open_clip model config", "clip_model", "LaionAesthetic", "a model config .json")
        checkpoint = local_file(
            self.clip_checkpoint_path, "CLIP checkpoint", "clip_checkpoint_path", "LaionAesthetic",
            "open_clip weights for the model config, e.g. ViT-L-14 openai",
        )
        mlp = local_file(self.mlp_path, f"LAION aesthetic MLP ({LAION_MLP_FILE})", "mlp_path", "LaionAesthetic",
                         "the improved-aesthetic-predictor release")
        return load_laion(self.clip_model, checkpoint, mlp, resolve_device(self.device))

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Unit CLIP image embeddings (n, 768), batch by batch."""
        import torch
        from PIL import Image

        batch = rgb_batch(images)
        model, preprocess, _ = self.models()
        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for indices in chunks(batch, self.batch_size):
                pixels = torch.stack([preprocess(Image.fromarray(batch[i])) for i in indices]).to(device)
                features = model.encode_image(pixels).float()
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.empty((0, LAION_EMBEDDING_DIM), dtype=np.float32)

    def raw_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """The MLP's output on unit embeddings, before calibration."""
        import torch

        _, _, mlp = self.models()
        device = next(mlp.parameters()).device
        if len(embeddings) == 0:
            return np.empty(0)
        with torch.inference_mode():
            output = mlp["layers"](torch.as_tensor(embeddings, dtype=torch.float32, device=device))
        return output.squeeze(-1).double().cpu().numpy()

    def score_and_embed(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        embeddings = self.embed(images)
        return measures.calibrate(measures.LAION_AESTHETIC, self.raw_scores(embeddings)), embeddings


# ------------------------------------------------------------------------------ technical


class TechnicalScorer(dg.ConfigurableResource, abc.ABC):
    """No-reference technical quality, 0-100."""

    @abc.abstractmethod
    def backend_name(self) -> str:
        """Model identity recorded with every score."""

    @abc.abstractmethod
    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Scores (n,) on 0-100 for HxWx3 uint8 RGB images."""


class ClassicalTechnical(TechnicalScorer):
    """Sharpness (Laplacian variance), noise, exposure clipping and resolution, mapped to 0-100."""

    def backend_name(self) -> str:
        return measures.CLASSICAL_TECHNICAL

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.array([measures.technical_quality(image) for image in rgb_batch(images)], dtype=np.float64)


@functools.lru_cache(maxsize=2)
def load_musiq(model_path: str, device: str):
    try:
        import pyiqa
    except ImportError as exc:
        raise ImportError(
            f"the Musiq technical scorer needs pyiqa, which is not installed: {PYIQA_INSTALL} "
            "(or use ClassicalTechnical)"
        ) from exc
    import torch

    log_model_load("MUSIQ", model_path)
    return pyiqa.create_metric("musiq", pretrained_model_path=model_path, device=torch.device(device))


class Musiq(TechnicalScorer):
    """pyiqa's MUSIQ (KonIQ-10k, about 0-100) from a local checkpoint."""

    model_path: str = Field(description=f"Local MUSIQ KonIQ checkpoint, {MUSIQ_KONIQ_FILE}.")
    device: str = Field(default="auto", description="torch device; auto = cuda when present, else cpu.")
    batch_size: int = Field(default=8, ge=1, description="Images of one size per forward pass.")

    def backend_name(self) -> str:
        return measures.MUSIQ_KONIQ

    def metric(self):
        path = local_file(self.model_path, f"MUSIQ checkpoint ({MUSIQ_KONIQ_FILE})", "model_path", "Musiq",
                          "pyiqa's musiq KonIQ weights")
        return load_musiq(path, resolve_device(self.device))

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images of the same size go through together (MUSIQ's patches depend on the size)."""
        import torch

        batch = rgb_batch(images)
        metric = self.metric()
        scores = np.full(len(batch), np.nan)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(batch):
            by_shape.setdefault(image.shape, []).append(index)
        with torch.inference_mode():
            for indices in by_shape.values():
                for part in chunks(indices, self.batch_size):
                    members = [indices[i] for i in part]
                    pixels = torch.from_numpy(np.stack([batch[i] for i in members])).permute(0, 3, 1, 2)
                    output = metric(pixels.float().div(255.0))
                    scores[members] = output.reshape(-1).double().cpu().numpy()
        return measures.calibrate(measures.MUSIQ_KONIQ, scores)
