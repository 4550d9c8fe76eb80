"""The scoring stage against the limit: the bare forward passes of the same models, same device and batch.

    .venv/bin/python bench/score_throughput.py [--images 32] [--size 768] [--batch-size 16]
        [--aesthetic proxy|laion] [--technical classical|musiq] [--face dlib|insightface]
        [--clip-model ViT-L-14-quickgelu] [--clip-checkpoint PATH] [--mlp PATH] [--musiq PATH]
        [--random-weights] [--device auto] [--per-image]

Stage: what image_scores does per batch, from PNG files on disk: decode, every scorer
(``score_batch``: aesthetic + embedding, technical, face detection + embedding + similarity),
composite and the gate with near-duplicates (``quality.decide``). Limit: only the models' own
work on inputs already decoded and preprocessed (CLIP ``encode_image`` + the LAION MLP on
preprocessed tensors on the device, MUSIQ on float tensors, the face backend on the resized
arrays, the embedded measures on arrays), timed one scorer at a time and added up. The ratio
stage/limit is how close the stage runs to what the models allow (1.0: no overhead at all).
``--per-image`` also times the stage one image per call (the seed's scorer-service design), which
matters on a GPU. ``--random-weights`` builds the named CLIP (and MUSIQ) architecture with random
weights instead of reading a checkpoint: the compute is the real model's, the scores mean nothing,
and nothing is downloaded. The last line is ``ratio stage / model limit: X``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

import pandas as pd

from hydra_assets.domain import image_measures as measures
from hydra_assets.domain import images as image_files
from hydra_assets.domain import quality
from hydra_assets.domain.demo_data import astronaut_photo, grace_hopper_photo
from hydra_assets.quality.scoring import face_analysis_copy, score_batch
from resources.face import DlibFaceBackend, InsightFaceBackend
from resources.scoring import (
    ClassicalTechnical,
    ImageStatsAestheticProxy,
    LaionAesthetic,
    Musiq,
    build_laion_mlp,
    chunks,
    resolve_device,
)


def bench_images(count: int, size: int) -> list[np.ndarray]:
    """Crops, flips and light changes of the two demo photos, ``size`` px square."""
    rng = np.random.default_rng(0)
    photos = [Image.open(path).convert("RGB") for path in (astronaut_photo(), grace_hopper_photo())]
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        scale = rng.uniform(0.8, 1.0)
        w, h = photo.size
        side = min(w, h) * scale
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, (h - side) * 0.3)
        image = photo.resize((size, size), Image.Resampling.BICUBIC, box=(x0, y0, x0 + side, y0 + side))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
        images.append(np.asarray(image))
    return images


def random_weight_files(args: argparse.Namespace, folder: Path) -> None:
    """Random-weight checkpoints of the real architectures, written to ``folder``."""
    import torch

    if args.aesthetic == "laion":
        import open_clip

        clip = open_clip.create_model(args.clip_model)
        args.clip_checkpoint = str(folder / "clip.pt")
        torch.save(clip.state_dict(), args.clip_checkpoint)
        args.mlp = str(folder / "mlp.pth")
        torch.save(build_laion_mlp().state_dict(), args.mlp)
    if args.technical == "musiq":
        from pyiqa.archs.musiq_arch import MUSIQ

        args.musiq = str(folder / "musiq.pth")
        torch.save(MUSIQ(pretrained=False).state_dict(), args.musiq)


def backends(args: argparse.Namespace):
    if args.aesthetic == "laion":
        aesthetic = LaionAesthetic(clip_model=args.clip_model, clip_checkpoint_path=args.clip_checkpoint,
                                   mlp_path=args.mlp, device=args.device, batch_size=args.batch_size)
    else:
        aesthetic = ImageStatsAestheticProxy()
    if args.technical == "musiq":
        technical = Musiq(model_path=args.musiq, device=args.device, batch_size=args.batch_size)
    else:
        technical = ClassicalTechnical()
    face = InsightFaceBackend(model_root=args.insightface_root) if args.face == "insightface" else DlibFaceBackend()
    return aesthetic, technical, face


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def write_pngs(images: list[np.ndarray], folder: Path) -> list[Path]:
    paths = []
    for index, image in enumerate(images):
        path = folder / f"image-{index:03d}.png"
        path.write_bytes(image_files.encode_png(Image.fromarray(image)))
        paths.append(path)
    return paths


def stage_seconds(paths, batch_size, aesthetic, technical, face, identity) -> float:
    """image_scores' work: decode, score every batch, composite, gate with near-duplicates."""

    def run() -> None:
        frames, vectors = [], []
        for indices in chunks(paths, batch_size):
            pixels = [image_files.load_rgb(paths[i]) for i in indices]
            batch = score_batch(pixels, aesthetic, technical, face, identity)
            frames.append(pd.DataFrame({
                "image_id": [paths[i].stem for i in indices],
                quality.AESTHETIC: batch.aesthetic, quality.TECHNICAL: batch.technical, quality.FACE_MATCH: batch.face_match,
            }))
            vectors.append(batch.embeddings)
        frame = pd.concat(frames, ignore_index=True)
        frame[quality.COMPOSITE] = quality.composite_score(frame[quality.AESTHETIC], frame[quality.TECHNICAL], frame[quality.FACE_MATCH])
        quality.decide(frame, np.concatenate(vectors), quality.Thresholds(), aesthetic.near_duplicate_cosine)

    return timed(run)


def limit_seconds(images, batch_size, aesthetic, technical, face) -> dict[str, float]:
    """The models alone, one scorer at a time, on inputs prepared beforehand (not timed)."""
    import torch

    seconds: dict[str, float] = {}
    if isinstance(aesthetic, LaionAesthetic):
        model, preprocess, mlp = aesthetic.models()
        device = next(model.parameters()).device
        tensors = [torch.stack([preprocess(Image.fromarray(images[i])) for i in idx]).to(device) for idx in chunks(images, batch_size)]

        def clip_forward() -> None:
            with torch.inference_mode():
                for pixels in tensors:
                    features = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
                    mlp["layers"](features)
                if device.type == "cuda":
                    torch.cuda.synchronize()

        seconds["aesthetic (CLIP + MLP forward)"] = timed(clip_forward)
    else:
        seconds["aesthetic (image-statistics proxy)"] = timed(
            lambda: [(measures.aesthetic_proxy(i), measures.tiny_image_embedding(i)) for i in images]
        )
    if isinstance(technical, Musiq):
        metric = technical.metric()
        tensors = [torch.from_numpy(np.stack([images[i] for i in idx])).permute(0, 3, 1, 2).float().div(255.0)
                   for idx in chunks(images, technical.batch_size)]

        def musiq_forward() -> None:
            with torch.inference_mode():
                for pixels in tensors:
                    metric(pixels)

        seconds["technical (MUSIQ forward)"] = timed(musiq_forward)
    else:
        seconds["technical (classical measures)"] = timed(lambda: [measures.technical_quality(i) for i in images])
    small = [face_analysis_copy(image) for image in images]
    seconds[f"face ({face.backend_name()} detect + embed)"] = timed(
        lambda: [face.embed_largest_faces([small[i] for i in idx]) for idx in chunks(small, batch_size)]
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--aesthetic", choices=("proxy", "laion"), default="proxy")
    parser.add_argument("--technical", choices=("classical", "musiq"), default="classical")
    parser.add_argument("--face", choices=("dlib", "insightface"), default="dlib")
    parser.add_argument("--clip-model", default="ViT-L-14-quickgelu")
    parser.add_argument("--clip-checkpoint")
    parser.add_argument("--mlp")
    parser.add_argument("--musiq")
    parser.add_argument("--insightface-root", default="~/.insightface")
    parser.add_argument("--random-weights", action="store_true", help="real architectures, random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--per-image", action="store_true", help="also time the stage one image per call")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        if args.random_weights:
            random_weight_files(args, Path(folder))
        aesthetic, technical, face = backends(args)
        images = bench_images(args.images, args.size)
        paths = write_pngs(images, Path(folder))
        warm = face.embed_largest_faces([images[0]])[0]
        identity = warm.embedding if warm is not None else np.ones(128, np.float32) / np.sqrt(128)
        score_batch(images[:1], aesthetic, technical, face, identity)  # loads every model
        # Side by side, alternating, best of two each: the machine's other load hits both alike.
        limit_runs, stage_runs = [], []
        for _ in range(2):
            limit_runs.append(limit_seconds(images, args.batch_size, aesthetic, technical, face))
            stage_runs.append(stage_seconds(paths, args.batch_size, aesthetic, technical, face, identity))
        limits, stage = min(limit_runs, key=lambda run: sum(run.values())), min(stage_runs)
        per_image = stage_seconds(paths, 1, aesthetic, technical, face, identity) if args.per_image else None

    n = len(images)
    limit = sum(limits.values())
    print(f"backends: {aesthetic.backend_name()}, {technical.backend_name()}, {face.backend_name()}"
          f"{' (random weights)' if args.random_weights else ''}; device {resolve_device(args.device)}")
    print(f"{n} images of {args.size}x{args.size} px, batch size {args.batch_size}")
    for name, seconds in limits.items():
        print(f"  model limit, {name}: {n / seconds:.2f} images/s")
    print(f"model limit, all scorers: {n / limit:.2f} images/s")
    print(f"scoring stage (decode + scorers + gate): {n / stage:.2f} images/s")
    if per_image is not None:
        print(f"scoring stage one image per call: {n / per_image:.2f} images/s (batched/per-image {per_image / stage:.2f})")
    print(f"ratio stage / model limit: {limit / stage:.2f}")


if __name__ == "__main__":
    main()
