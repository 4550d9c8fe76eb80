"""Quality scoring throughput: the batched scorer against one image per call, same images and backends.

    .venv/bin/python bench/score_throughput.py [--images 16] [--size 768] [--batch-size 16]
        [--aesthetic proxy|laion] [--technical classical|musiq] [--face dlib|insightface]
        [--clip-model ViT-L-14-quickgelu] [--clip-checkpoint PATH] [--mlp PATH] [--musiq PATH]
        [--random-weights] [--device auto]

The per-image loop is the seed's design (a scorer service called once per image) with the models
already loaded: it calls the same ``score_batch`` with one image at a time. Both modes score the
same images (variants of the demo reference photos) after one warm-up call that loads every model.
``--random-weights`` builds the named CLIP (and MUSIQ) architecture with random weights instead of
reading a checkpoint: the compute is the real model's, the scores mean nothing, and nothing is
downloaded. Prints images/s of each mode and, as its last line, ``ratio: X`` (batched over per-image).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from hydra_assets.domain.demo_data import astronaut_photo, grace_hopper_photo
from hydra_assets.quality import score_batch
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


def images_per_second(run, count: int) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        if args.random_weights:
            random_weight_files(args, Path(folder))
        aesthetic, technical, face = backends(args)
        images = bench_images(args.images, args.size)
        warm = face.embed_largest_faces([images[0]])[0]
        identity = warm.embedding if warm is not None else np.ones(128, np.float32) / np.sqrt(128)
        score_batch(images[:1], aesthetic, technical, face, identity)  # loads every model

        def batched() -> None:
            for indices in chunks(images, args.batch_size):
                score_batch([images[i] for i in indices], aesthetic, technical, face, identity)

        def per_image() -> None:
            for image in images:
                score_batch([image], aesthetic, technical, face, identity)

        one = images_per_second(per_image, len(images))
        many = images_per_second(batched, len(images))

    print(f"backends: {aesthetic.backend_name()}, {technical.backend_name()}, {face.backend_name()}"
          f"{' (random weights)' if args.random_weights else ''}; device {resolve_device(args.device)}")
    print(f"{len(images)} images of {args.size}x{args.size} px, batch size {args.batch_size}")
    print(f"per-image: {one:.2f} images/s")
    print(f"batched:   {many:.2f} images/s")
    print(f"ratio: {many / one:.2f}")


if __name__ == "__main__":
    main()
