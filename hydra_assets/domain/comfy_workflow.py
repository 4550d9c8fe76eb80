"""The SPEC's ComfyUI workflow in API format (node id → {class_type, inputs}).

Node ids are the SPEC's, so a graph in ComfyUI's history reads the same as the studio's
documentation. Without a LoRA, node 2 is left out and its consumers are wired straight to
the checkpoint loader (MODEL is output 0 and CLIP output 1 of both nodes).
"""

from __future__ import annotations

from typing import Any

CHECKPOINT = "1"
LORA = "2"
POSITIVE = "3"
NEGATIVE = "4"
SAMPLER = "5"
LATENT = "6"
DECODE = "7"
SAVE = "8"

MODEL_OUTPUT = 0
CLIP_OUTPUT = 1
VAE_OUTPUT = 2

Graph = dict[str, dict[str, Any]]


def link(node: str, output: int) -> list[Any]:
    """ComfyUI's link form: ``[source node id, output index]``."""
    return [node, output]


def build_workflow(
    *,
    checkpoint: str,
    positive: str,
    negative: str,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    width: int,
    height: int,
    filename_prefix: str,
    batch_size: int = 1,
    denoise: float = 1.0,
    lora_name: str | None = None,
    lora_strength_model: float = 1.0,
    lora_strength_clip: float | None = None,
) -> Graph:
    """The 8-node SDXL text-to-image graph; ``lora_name=None`` leaves the LoRA loader out."""
    model_from = LORA if lora_name else CHECKPOINT
    graph: Graph = {
        CHECKPOINT: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        POSITIVE: {"class_type": "CLIPTextEncode", "inputs": {"clip": link(model_from, CLIP_OUTPUT), "text": positive}},
        NEGATIVE: {"class_type": "CLIPTextEncode", "inputs": {"clip": link(model_from, CLIP_OUTPUT), "text": negative}},
        LATENT: {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": int(width), "height": int(height), "batch_size": int(batch_size)},
        },
        SAMPLER: {
            "class_type": "KSampler",
            "inputs": {
                "model": link(model_from, MODEL_OUTPUT),
                "positive": link(POSITIVE, 0),
                "negative": link(NEGATIVE, 0),
                "latent_image": link(LATENT, 0),
                "seed": int(seed),
                "steps": int(steps),
                "cfg": float(cfg),
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "denoise": float(denoise),
            },
        },
        DECODE: {
            "class_type": "VAEDecode",
            "inputs": {"samples": link(SAMPLER, 0), "vae": link(CHECKPOINT, VAE_OUTPUT)},
        },
        SAVE: {"class_type": "SaveImage", "inputs": {"images": link(DECODE, 0), "filename_prefix": filename_prefix}},
    }
    if lora_name:
        graph[LORA] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": link(CHECKPOINT, MODEL_OUTPUT),
                "clip": link(CHECKPOINT, CLIP_OUTPUT),
                "lora_name": lora_name,
                "strength_model": float(lora_strength_model),
                "strength_clip": float(lora_strength_model if lora_strength_clip is None else lora_strength_clip),
            },
        }
    return dict(sorted(graph.items(), key=lambda item: int(item[0])))


def links(graph: Graph) -> set[tuple[str, str, str, int]]:
    """Every edge as (consumer node, input name, source node, source output)."""
    found = set()
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                found.add((node_id, name, value[0], int(value[1])))
    return found
