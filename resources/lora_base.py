"""The frozen SDXL base LoRA training runs on: the model store's folder, or a tiny SDXL built in code.

On the cluster the base is a diffusers-format SDXL folder on the model store, loaded with
``local_files_only`` (nothing is ever downloaded); in the embedded profile and in tests it is
a tiny UNet/VAE/text-encoder pair built from configs with a fixed seed, so the same training
code runs on a CPU in seconds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TINY_SEED = 0
TINY_BASE_MODEL = "hydra-tiny-sdxl-v1"
"""Recorded as the base model of tiny LoRAs; bump when the tiny configs below change."""
SDXL_FOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
TOKENIZER_MAX_LENGTH = 77


class BaseModelMissingError(FileNotFoundError):
    """The SDXL base is not on the model store; says which path and how to put it there."""


@dataclass
class BaseComponents:
    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    noise_scheduler: Any


def tiny_tokenizer():
    """A byte-level CLIP tokenizer with no merges: every character is a token, nothing to download.

    CLIP's BPE needs a vocabulary; the 256 byte symbols (plus their word-final forms and the
    two specials) are a complete one, so any text tokenizes, just into more pieces.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENIZER_MAX_LENGTH)


def build_tiny_sdxl_components(seed: int = TINY_SEED) -> dict[str, Any]:
    """Fresh tiny SDXL components (``StableDiffusionXLPipeline(**components)`` accepts them).

    Same seed, same weights: a LoRA trained on one build applies to any other. The shapes
    follow diffusers' own SDXL test fixtures (two CLIP encoders, text-time conditioning).
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + 32 pooled
            cross_attention_dim=64,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            sample_size=64,
            norm_num_groups=4,
        )
        text_config = CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=1000,
            hidden_act="gelu",
            projection_dim=32,
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
        )
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    tokenizer = tiny_tokenizer()
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "scheduler": scheduler,
    }


def check_sdxl_folder(model_path: str | None) -> Path:
    """The SDXL folder, or :class:`BaseModelMissingError` naming what is missing and how to provide it."""
    how = (
        "put a diffusers-format SDXL base there (model_index.json and the "
        f"{', '.join(SDXL_FOLDERS)} folders), e.g. `huggingface-cli download "
        "stabilityai/stable-diffusion-xl-base-1.0 --local-dir <path>` on a machine with network, "
        "or `StableDiffusionXLPipeline.from_single_file(ckpt).save_pretrained(<path>)`; "
        "then set LoraTrainer.model_path (HYDRA_SDXL_MODEL_PATH on the cluster). Nothing is downloaded at run time"
    )
    if not model_path:
        raise BaseModelMissingError(f"LoraTrainer(base_model='sdxl') needs model_path: {how}")
    path = Path(model_path)
    if not (path / "model_index.json").is_file():
        raise BaseModelMissingError(f"SDXL base model not found: {path / 'model_index.json'} is missing; {how}")
    missing = [name for name in SDXL_FOLDERS if not (path / name).is_dir()]
    if missing:
        raise BaseModelMissingError(f"SDXL base model at {path} is incomplete: no {', '.join(missing)} folder; {how}")
    return path


@functools.lru_cache(maxsize=1)
def load_components(
    base_model: str, model_path: str | None, device: str, dtype_name: str, variant: str | None
) -> BaseComponents:
    """The frozen base, loaded once per process and settings (the SDXL base is ~7 GB)."""
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline

    dtype = getattr(torch, dtype_name)
    if base_model == "tiny":
        parts = build_tiny_sdxl_components()
    else:
        folder = check_sdxl_folder(model_path)
        pipeline = StableDiffusionXLPipeline.from_pretrained(
            str(folder), local_files_only=True, torch_dtype=dtype, variant=variant
        )
        parts = pipeline.components
    components = BaseComponents(
        unet=_place(parts["unet"], device, dtype),
        # The SDXL VAE overflows in fp16; it only encodes the references once, so fp32 is cheap.
        vae=_place(parts["vae"], device, torch.float32),
        text_encoder=_place(parts["text_encoder"], device, dtype),
        text_encoder_2=_place(parts["text_encoder_2"], device, dtype),
        tokenizer=parts["tokenizer"],
        tokenizer_2=parts["tokenizer_2"],
        noise_scheduler=DDPMScheduler.from_config(parts["scheduler"].config),
    )
    for module in (components.unet, components.vae, components.text_encoder, components.text_encoder_2):
        module.requires_grad_(False)
        module.eval()
    return components


def _place(module: Any, device: str, dtype: torch.dtype) -> Any:
    """Move and cast only when needed (diffusers warns on every dtype cast of a loaded model)."""
    module = module.to(device)
    return module if module.dtype == dtype else module.to(dtype)


