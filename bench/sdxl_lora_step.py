"""LoRA training steps at SDXL shape with random weights, through the real LoraTrainer path.

    .venv/bin/python bench/sdxl_lora_step.py [--shape sdxl|tiny] [--steps 6] [--resolution 1024]

Builds a diffusers-format SDXL folder (UNet 2.6 B parameters, both CLIP text encoders, the
SDXL VAE, all with the real configs and random weights; nothing is downloaded) in a temporary
folder, then trains a queen's LoRA on it with ``LoraTrainer(base_model="sdxl")`` exactly as the
cluster does (bf16 base, fp32 LoRA, gradient checkpointing). Prints steps/s and, on CUDA, the
peak GPU memory. ``--shape tiny`` builds the same folder from the tiny configs so the script can
be checked on a CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from hydra_assets.domain.demo_data import astronaut_photo, grace_hopper_photo
from hydra_assets.domain.lora import LoraTrainingSettings
from resources.lora_base import build_tiny_sdxl_components, tiny_tokenizer
from resources.lora_training import LoraTrainer, TrainingImage

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, scaling_factor=0.13025,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768)
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, projection_dim=1280)


def sdxl_components(device: str) -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    common = dict(vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET).to(torch.bfloat16)
        vae = AutoencoderKL(**SDXL_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**common, **CLIP_L)).to(torch.bfloat16)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**common, **CLIP_BIGG)).to(torch.bfloat16)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    tokenizer = tiny_tokenizer()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler)


def write_folder(components: dict, folder: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(**components).save_pretrained(str(folder), safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("sdxl", "tiny"), default="sdxl")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"random-{args.shape}"
        components = sdxl_components(args.device) if args.shape == "sdxl" else build_tiny_sdxl_components()
        write_folder(components, folder)
        del components
        built = time.perf_counter() - started
        trainer = LoraTrainer(base_model="sdxl", model_path=str(folder), device=args.device,
                              mixed_precision="bf16", gradient_checkpointing=True, log_every=1)
        photos = [Image.open(p).convert("RGB") for p in (astronaut_photo(), grace_hopper_photo())]
        images = [TrainingImage(image=photo, caption="a portrait photo of a woman") for photo in photos]
        settings = LoraTrainingSettings(rank=16, alpha=16.0, steps=args.steps, learning_rate=1e-4,
                                        resolution=args.resolution, seed=0, caption_template="{caption}")
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer.load()  # the model store load, kept out of the step timing
        loaded = time.perf_counter() - started - built
        progress: list[float] = []
        trained_at = time.perf_counter()
        result = trainer.train(images, settings, progress=lambda p: progress.append(time.perf_counter()))
        seconds = time.perf_counter() - trained_at
    print(f"shape {args.shape} on {args.device}: folder built in {built:.0f} s, loaded in {loaded:.0f} s")
    print(f"{args.steps} steps at {args.resolution}px in {seconds:.1f} s (incl. latents and before/after loss): "
          f"{args.steps / seconds:.2f} steps/s; final loss {result.final_loss:.4f}")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
