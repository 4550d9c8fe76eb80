"""LoRA training with diffusers + peft: SDXL from the model store, or a tiny SDXL-shaped model.

One training loop serves both bases (resources/lora_base.py): SDXL from the model store on
the cluster, a tiny SDXL built in code in the embedded profile and in tests. Only the UNet's
attention projections get LoRA layers (``to_q``, ``to_k``, ``to_v``, ``to_out.0``); the file's
key format is resources/lora_files.py's.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field

from hydra_assets.domain.lora import LoraTrainingSettings
from resources.lora_base import TINY_BASE_MODEL, BaseComponents, check_sdxl_folder, load_components
from resources.lora_files import peft_to_kohya

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "hydra_training"
EVAL_TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
"""Fixed points of the noise schedule where the before/after loss is measured."""
EVAL_MAX_EXAMPLES = 8
EMA_DECAY = 0.9

_TRAINING_LOCK = threading.Lock()
"""The cached models are shared in-process; two trainings on one set of weights would mix adapters."""


@dataclass(frozen=True)
class TrainingProgress:
    step: int
    total_steps: int
    loss: float
    smoothed_loss: float
    steps_per_second: float


@dataclass(frozen=True)
class TrainingImage:
    image: Image.Image
    caption: str


@dataclass
class LoraTrainingResult:
    """The trained LoRA in kohya format (ready for the file) and how training went."""

    state_dict: dict[str, torch.Tensor]
    base_model: str
    settings: LoraTrainingSettings
    initial_loss: float
    """Loss at fixed noise and timesteps before training (deterministic; compare with final)."""
    final_loss: float
    """The same measurement after training."""
    losses: list[float] = field(default_factory=list)
    """Training loss of every step."""
    steps_per_second: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"


def prepare_image(image: Image.Image, resolution: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Resize the short side to ``resolution`` and centre-crop a square, as SDXL training does.

    Returns the CHW tensor in [-1, 1], the original (height, width) and the crop's top-left:
    SDXL's micro-conditioning takes both.
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    resized = rgb.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    cropped = resized.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), (height, width), (top, left)


class LoraTrainer(dg.ConfigurableResource):
    """Trains a queen's LoRA on her references: SDXL from the model store, or the tiny model."""

    base_model: Literal["sdxl", "tiny"] = Field(
        default="tiny", description="'sdxl': the model store's SDXL folder; 'tiny': a small model built in code."
    )
    model_path: str | None = Field(default=None, description="Diffusers-format SDXL folder (base_model='sdxl').")
    base_model_name: str | None = Field(
        default=None, description="Recorded base model name; defaults to the folder name, or the tiny model's id."
    )
    variant: str | None = Field(default=None, description="Weights variant in the SDXL folder, e.g. 'fp16'.")
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cuda', 'cuda:1' or 'cpu'.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        default="bf16", description="Frozen base weights' dtype on a GPU; LoRA weights always train in fp32."
    )
    max_steps: int | None = Field(default=None, ge=1, description="Cap on the queen's steps (tiny: seconds).")
    max_resolution: int | None = Field(default=None, ge=64, description="Cap on the queen's resolution.")
    batch_size: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = Field(default=True, description="Trade compute for memory (SDXL on 16 GB).")
    log_every: int = Field(default=10, ge=1, description="Report progress every N steps.")
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Torch threads while training on a CPU (None: torch's default). The tiny model's ops are too small to "
            "split, and on a busy shared machine extra threads stall waiting for each other: 1 is fastest there."
        ),
    )

    def base_model_id(self) -> str:
        if self.base_model_name:
            return self.base_model_name
        if self.base_model == "tiny":
            return TINY_BASE_MODEL
        return f"sdxl:{Path(self.model_path).name}" if self.model_path else "sdxl"

    def is_sdxl(self) -> bool:
        return self.base_model == "sdxl"

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"LoraTrainer.device={self.device!r} but no CUDA device is visible to this process")
        return device

    def _dtype(self, device: torch.device) -> torch.dtype:
        if device.type != "cuda" or self.mixed_precision == "no":
            return torch.float32
        return torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16

    def check_base_model(self) -> None:
        """Fail early, before any catalog row says 'training', when the SDXL folder is absent."""
        if self.is_sdxl():
            check_sdxl_folder(self.model_path)

    def load(self) -> BaseComponents:
        device = self.resolved_device()
        dtype = self._dtype(device)
        return load_components(
            self.base_model, self.model_path, str(device), str(dtype).removeprefix("torch."), self.variant
        )

    def train(
        self,
        images: Sequence[TrainingImage],
        settings: LoraTrainingSettings,
        progress: Callable[[TrainingProgress], None] | None = None,
    ) -> LoraTrainingResult:
        """Train one LoRA (noise-prediction MSE on the images); deterministic for a seed on one device."""
        if not images:
            raise ValueError("LoRA training needs at least one image")
        device = self.resolved_device()
        with _TRAINING_LOCK, _cpu_threads(self.cpu_threads if device.type == "cpu" else None):
            components = self.load()
            return _train(components, images, settings, self, device, progress)


@contextlib.contextmanager
def _cpu_threads(threads: int | None):
    """Torch's thread count for the duration of one training (it is process-wide), then restored."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _encode_prompts(components: BaseComponents, captions: Sequence[str], device: torch.device):
    """SDXL's conditioning: penultimate hidden states of both encoders, and encoder 2's pooled output."""
    hidden = []
    for tokenizer, encoder in (
        (components.tokenizer, components.text_encoder),
        (components.tokenizer_2, components.text_encoder_2),
    ):
        tokens = tokenizer(
            list(captions),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        output = encoder(tokens, output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
    pooled = output.text_embeds  # the second encoder has the projection SDXL pools from
    return torch.cat(hidden, dim=-1), pooled


def _train(
    components: BaseComponents,
    images: Sequence[TrainingImage],
    settings: LoraTrainingSettings,
    trainer: LoraTrainer,
    device: torch.device,
    progress: Callable[[TrainingProgress], None] | None,
) -> LoraTrainingResult:
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet, vae, scheduler = components.unet, components.vae, components.noise_scheduler
    dtype = next(unet.parameters()).dtype
    started = time.perf_counter()
    rng_devices = [device] if device.type == "cuda" else []
    with torch.no_grad():
        pixels, time_ids = [], []
        for item in images:
            tensor, original, crop = prepare_image(item.image, settings.resolution)
            pixels.append(tensor)
            time_ids.append([*original, *crop, settings.resolution, settings.resolution])
        # Latent distributions once: the VAE is frozen, so each step only samples from them.
        dist = [vae.encode(p.unsqueeze(0).to(device, torch.float32)).latent_dist for p in pixels]
        latent_mean = torch.cat([d.mean for d in dist])
        latent_std = torch.cat([d.std for d in dist])
        prompt_embeds, pooled = _encode_prompts(components, [item.caption for item in images], device)
        time_ids_t = torch.tensor(time_ids, dtype=dtype, device=device)

    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    num_timesteps = scheduler.config.num_train_timesteps

    def to_latents(mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        sample = mean if noise is None else mean + std * noise
        return ((sample - shift) * scaling).to(dtype)

    def loss_on(index: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            prediction = unet(
                noisy,
                timesteps,
                prompt_embeds[index],
                added_cond_kwargs={"text_embeds": pooled[index], "time_ids": time_ids_t[index]},
            ).sample
        return F.mse_loss(prediction.float(), target.float())

    # The before/after measurement: fixed latents, noise and timesteps, so the two numbers compare.
    eval_index = torch.arange(min(len(images), EVAL_MAX_EXAMPLES), device=device)
    eval_generator = torch.Generator(device=device).manual_seed(settings.seed + 1)
    eval_latents = to_latents(latent_mean[eval_index], latent_std[eval_index], None)
    eval_steps = [int(f * (num_timesteps - 1)) for f in EVAL_TIMESTEP_FRACTIONS]
    eval_noise = [
        torch.randn(eval_latents.shape, generator=eval_generator, device=device, dtype=torch.float32).to(dtype)
        for _ in eval_steps
    ]

    def evaluate() -> float:
        with torch.no_grad():
            losses = [
                loss_on(eval_index, eval_latents, noise, torch.full_like(eval_index, t))
                for t, noise in zip(eval_steps, eval_noise)
            ]
        return float(torch.stack(losses).mean())

    initial_loss = evaluate()
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(settings.seed)  # peft draws lora_A's initial weights from the global RNG
        unet.add_adapter(
            LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                init_lora_weights="gaussian",
                target_modules=list(LORA_TARGET_MODULES),
            ),
            adapter_name=ADAPTER_NAME,
        )
    try:
        parameters = [p for p in unet.parameters() if p.requires_grad]
        for parameter in parameters:
            parameter.data = parameter.data.float()
        optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=1e-2)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        checkpointing = trainer.gradient_checkpointing and device.type == "cuda"
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        losses: list[float] = []
        smoothed = None
        loop_started = time.perf_counter()
        batch = min(trainer.batch_size, len(images))
        for step in range(1, settings.steps + 1):
            index = torch.randint(0, len(images), (batch,), generator=generator, device=device)
            sample_noise = torch.randn(latent_mean[index].shape, generator=generator, device=device)
            latents = to_latents(latent_mean[index], latent_std[index], sample_noise)
            noise = torch.randn(latents.shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
            timesteps = torch.randint(0, num_timesteps, (batch,), generator=generator, device=device)
            loss = loss_on(index, latents, noise, timesteps)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"LoRA training diverged at step {step}: loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            value = float(loss.detach())
            losses.append(value)
            smoothed = value if smoothed is None else EMA_DECAY * smoothed + (1 - EMA_DECAY) * value
            if progress and (step % trainer.log_every == 0 or step == settings.steps):
                elapsed = time.perf_counter() - loop_started
                progress(TrainingProgress(step, settings.steps, value, smoothed, step / elapsed if elapsed else 0.0))
        loop_seconds = time.perf_counter() - loop_started
        unet.eval()
        final_loss = evaluate()
        state_dict = peft_to_kohya(get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME), settings.alpha)
    finally:
        unet.eval()
        with contextlib.suppress(Exception):
            unet.disable_gradient_checkpointing()
        unet.delete_adapters(ADAPTER_NAME)
    return LoraTrainingResult(
        state_dict=state_dict,
        base_model=trainer.base_model_id(),
        settings=settings,
        initial_loss=initial_loss,
        final_loss=final_loss,
        losses=losses,
        steps_per_second=settings.steps / loop_seconds if loop_seconds else 0.0,
        seconds=time.perf_counter() - started,
        device=str(device),
    )
