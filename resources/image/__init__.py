"""Image backends for generated_images, one module each behind one interface (base.py).

- :class:`ComfyUIBackend` (comfyui.py, transport in comfy_http.py): the studio's ComfyUI
  running its workflow templates (workflows/, slots in hydra_assets/domain/workflows.py).
- :class:`DiffusersBackend` (diffusers.py): an SDXL pipeline from a local path on the step's GPU.
- :class:`DemoRenderer` (demo.py): the embedded default; not a generative model.
"""

from resources.image.base import GenerationResult, ImageBackend, backoff_delay
from resources.image.comfy_http import (
    ComfyUIError,
    ComfyUITimeout,
    ComfyUIUnavailable,
    ComfyUIValidationError,
    describe_prompt_rejection,
)
from resources.image.comfy_preflight import ComfyUIPreflightError, upload_name
from resources.image.comfyui import ComfyUIBackend
from resources.image.demo import DEGRADATIONS, DEMO_MODEL, DEMO_RENDERER, DemoRenderer, render_demo_image
from resources.image.diffusers import DIFFUSERS_SAMPLERS, DIFFUSERS_SCHEDULES, DiffusersBackend, diffusers_scheduler, load_sdxl_pipeline

__all__ = [
    "DEGRADATIONS",
    "DEMO_MODEL",
    "DEMO_RENDERER",
    "DIFFUSERS_SAMPLERS",
    "DIFFUSERS_SCHEDULES",
    "ComfyUIBackend",
    "ComfyUIError",
    "ComfyUIPreflightError",
    "ComfyUITimeout",
    "ComfyUIUnavailable",
    "ComfyUIValidationError",
    "DemoRenderer",
    "DiffusersBackend",
    "GenerationResult",
    "ImageBackend",
    "backoff_delay",
    "describe_prompt_rejection",
    "diffusers_scheduler",
    "load_sdxl_pipeline",
    "render_demo_image",
    "upload_name",
]
