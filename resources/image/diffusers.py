"""SDXL through diffusers on the step's own GPU, for nodes without a ComfyUI server."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from hydra_assets.domain.night_plan import GenerationRequest
from resources.image.base import GenerationResult, ImageBackend

logger = logging.getLogger(__name__)


# ComfyUI sampler and scheduler names → diffusers scheduler class and settings.
DIFFUSERS_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_sde": ("DPMSolverSinglestepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {}),
}
DIFFUSERS_SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {},
    "simple": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
}
DTYPES = ("float16", "bfloat16", "float32")


def diffusers_scheduler(sampler: str, schedule: str) -> tuple[str, dict[str, Any]]:
    if sampler not in DIFFUSERS_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} has no diffusers equivalent here; use one of {', '.join(DIFFUSERS_SAMPLERS)}")
    if schedule not in DIFFUSERS_SCHEDULES:
        raise ValueError(f"scheduler {schedule!r} has no diffusers equivalent here; use one of {', '.join(DIFFUSERS_SCHEDULES)}")
    name, settings = DIFFUSERS_SAMPLERS[sampler]
    return name, {**settings, **DIFFUSERS_SCHEDULES[schedule]}


@functools.lru_cache(maxsize=2)
def load_sdxl_pipeline(model_path: str, device: str, dtype: str, variant: str | None, config_path: str | None):
    """The SDXL pipeline, once per process and settings; never fetched from a hub."""
    path = Path(model_path)
    how = (
        "put an SDXL diffusers folder (model_index.json, unet/, vae/, text_encoder*/, tokenizer*/) or a single "
        ".safetensors checkpoint in the model store and set DiffusersBackend.model_path"
    )
    if not path.exists():
        raise FileNotFoundError(f"SDXL model not found at {path}: {how}")
    import torch  # imported here: diffusers costs seconds, and most processes never need it
    from diffusers import StableDiffusionXLPipeline

    torch_dtype = getattr(torch, dtype)
    try:
        if path.is_dir():
            pipeline = StableDiffusionXLPipeline.from_pretrained(
                str(path), torch_dtype=torch_dtype, variant=variant, local_files_only=True
            )
        else:
            pipeline = StableDiffusionXLPipeline.from_single_file(
                str(path), torch_dtype=torch_dtype, config=config_path, local_files_only=True
            )
    except (OSError, ValueError) as exc:
        extra = (
            ""
            if path.is_dir() or config_path
            else "; a single-file checkpoint also needs DiffusersBackend.config_path (a local SDXL diffusers "
            "folder whose configs describe it), since nothing is downloaded"
        )
        raise FileNotFoundError(f"cannot load SDXL from {path} without downloading: {exc}{extra}") from exc
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


class DiffusersBackend(ImageBackend):
    """SDXL through diffusers on the step's own GPU, for nodes without a ComfyUI server.

    Images sharing LoRA and sampler settings run in batches of ``batch_size``, each with its
    own seeded generator, so an image is the same whichever batch it lands in.
    """

    model_path: str = Field(description="Local SDXL diffusers folder or single .safetensors file (model store).")
    config_path: str | None = Field(default=None, description="Local diffusers config folder for a single-file model.")
    device: str = Field(default="cuda", description="torch device, e.g. cuda, cuda:1, cpu.")
    dtype: str = Field(default="float16", description="float16, bfloat16 or float32.")
    variant: str | None = Field(default=None, description="Weights variant of a diffusers folder, e.g. fp16.")
    batch_size: int = Field(default=4, ge=1)

    def backend_name(self) -> str:
        return "diffusers"

    def backend_kind(self) -> str:
        return "diffusers"

    def model_name(self) -> str:
        return Path(self.model_path).name

    def pipeline(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"DiffusersBackend.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        return load_sdxl_pipeline(self.model_path, self.device, self.dtype, self.variant, self.config_path)

    def generate(self, requests_: Sequence[GenerationRequest], log: Any = None) -> Iterator[GenerationResult]:
        log = log or logger
        pipe = self.pipeline()
        import diffusers
        import torch

        base_scheduler_config = pipe.scheduler.config
        groups: dict[tuple, list[GenerationRequest]] = {}
        for request in requests_:
            p = request.params
            key = (request.lora_path, p.get("lora_strength"), p["steps"], p["cfg"], p["sampler"], p["scheduler"], request.width, request.height)
            groups.setdefault(key, []).append(request)

        for (lora_path, strength, steps, cfg, sampler, schedule, width, height), group in groups.items():
            try:
                class_name, settings = diffusers_scheduler(sampler, schedule)
                if lora_path is not None and not Path(lora_path).is_file():
                    raise FileNotFoundError(f"LoRA file {lora_path} not found (the queen's LoRA info names it)")
            except (ValueError, FileNotFoundError) as exc:
                for request in group:
                    yield GenerationResult(request, None, str(exc))
                continue
            pipe.scheduler = getattr(diffusers, class_name).from_config(base_scheduler_config, **settings)
            try:
                if lora_path is not None:
                    try:
                        pipe.load_lora_weights(lora_path, adapter_name="hydra_lora")
                        pipe.set_adapters(["hydra_lora"], adapter_weights=[float(strength if strength is not None else 1.0)])
                    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # a bad file fails its images only
                        for request in group:
                            yield GenerationResult(request, None, f"cannot load LoRA {lora_path}: {exc}")
                        continue
                for start in range(0, len(group), self.batch_size):
                    chunk = group[start : start + self.batch_size]
                    began = time.monotonic()
                    try:
                        with torch.inference_mode():
                            output = pipe(
                                prompt=[r.prompt for r in chunk],
                                negative_prompt=[r.negative for r in chunk],
                                num_inference_steps=int(steps),
                                guidance_scale=float(cfg),
                                width=int(width),
                                height=int(height),
                                generator=[torch.Generator(device=self.device).manual_seed(r.seed) for r in chunk],
                                output_type="pil",
                            )
                    except (RuntimeError, ValueError) as exc:  # e.g. CUDA out of memory: this chunk only
                        log.warning(f"diffusers batch of {len(chunk)} failed: {exc}")
                        for request in chunk:
                            yield GenerationResult(request, None, f"diffusers: {exc}")
                        continue
                    seconds = (time.monotonic() - began) / len(chunk)
                    for request, image in zip(chunk, output.images):
                        yield GenerationResult(request, image.convert("RGB"), None, seconds, {"batch": len(chunk)})
            finally:
                if lora_path is not None:
                    pipe.unload_lora_weights()


