"""LoRA files: peft's UNet weights in kohya keys, and the safetensors bytes with their header.

The file is written in kohya's key format with diffusers module names
(``lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight``
plus ``.lora_up.weight`` and ``.alpha``): ComfyUI's LoraLoader maps exactly these names
(comfy/lora.py ``model_lora_keys_unet`` builds ``lora_unet_{diffusers key}`` from
``unet_to_diffusers``), and diffusers' ``load_lora_weights`` converts them back; the plain
peft key format (``unet.….to_q.lora_A.weight``) is not among the names ComfyUI maps for an
SDXL UNet.
"""

from __future__ import annotations

from pathlib import Path

import torch


def peft_to_kohya(peft_state_dict: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft's UNet LoRA weights in kohya keys, with the configured alpha on every module.

    diffusers' converter writes alpha = rank, which is only right when alpha equals rank.
    """
    from diffusers.utils import convert_state_dict_to_kohya

    kohya = convert_state_dict_to_kohya({f"unet.{name}": tensor for name, tensor in peft_state_dict.items()})
    return {
        name: torch.tensor(float(alpha)) if name.endswith(".alpha") else tensor.detach().to("cpu", torch.float32)
        for name, tensor in kohya.items()
    }


def serialize_lora(state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes, written by the caller atomically."""
    from safetensors.torch import save

    return save({name: tensor.contiguous() for name, tensor in state_dict.items()}, metadata=metadata)


def read_lora_header(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file, without reading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
