"""Scoring backends: LAION on a tiny open_clip model, MUSIQ's messages (and a forward pass when
pyiqa is installed), the embedded measures, and face match with dlib on the demo references."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hydra_assets.domain import image_measures as measures
from hydra_assets.domain import quality
from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.domain.identity import summarize_identity
from hydra_assets.quality import score_batch
from resources import scoring
from resources.face import DlibFaceBackend
from resources.scoring import (
    LAION_MLP_FILE,
    MUSIQ_KONIQ_FILE,
    ClassicalTechnical,
    ImageStatsAestheticProxy,
    LaionAesthetic,
    Musiq,
    build_laion_mlp,
)

TINY_CLIP = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1},
}
"""CLIP with ViT-L/14's output size (768) and almost nothing else: the real code path, in milliseconds."""


def random_images(sizes, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[str, str]:
    """(config .json, random-weight checkpoint) for a CLIP built by open_clip from the config."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "hydra-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("hydra-tiny-clip")
    torch.save(model.state_dict(), folder / "clip.pt")
    return str(config), str(folder / "clip.pt")


def save_mlp(path: Path, last_bias: float | None = None) -> str:
    torch.manual_seed(1)
    mlp = build_laion_mlp()
    if last_bias is not None:
        with torch.no_grad():
            mlp["layers"][7].bias.fill_(last_bias)
    torch.save(mlp.state_dict(), path)
    return str(path)


@pytest.fixture
def laion(tiny_clip, tmp_path) -> LaionAesthetic:
    config, checkpoint = tiny_clip
    return LaionAesthetic(
        clip_model=config, clip_checkpoint_path=checkpoint, mlp_path=save_mlp(tmp_path / LAION_MLP_FILE),
        device="cpu", batch_size=2,
    )


# ------------------------------------------------------------------------------ LAION


def test_laion_scores_and_unit_embeddings_per_image(laion):
    images = random_images([(40, 40), (64, 96), (120, 80), (33, 200), (50, 50)])
    scores, embeddings = laion.score_and_embed(images)
    assert scores.shape == (5,) and embeddings.shape == (5, 768)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.all((scores >= 1.0) & (scores <= 10.0))
    assert laion.backend_name() == "laion-aesthetic-v2/hydra-tiny-clip"


def test_laion_is_the_mlp_on_normalised_clip_image_embeddings(laion):
    """Recompute by hand, image by image, what the batched backend returns."""
    images = random_images([(48, 48), (70, 90), (64, 64)], seed=3)
    model, preprocess, mlp = laion.models()
    expected = []
    with torch.no_grad():
        for image in images:
            features = model.encode_image(preprocess(Image.fromarray(image)).unsqueeze(0))
            unit = features / features.norm(dim=-1, keepdim=True)
            expected.append(float(mlp["layers"](unit)))
    embeddings = laion.embed(images)  # batch_size 2: one batch of two and one of one
    assert laion.raw_scores(embeddings) == pytest.approx(expected, abs=1e-5)
    assert laion.score(images) == pytest.approx(np.clip(expected, 1, 10), abs=1e-5)


@pytest.mark.parametrize(("bias", "expected"), [(50.0, 10.0), (-50.0, 1.0)])
def test_laion_output_outside_1_to_10_is_clipped_to_the_scale(tiny_clip, tmp_path, bias, expected):
    config, checkpoint = tiny_clip
    scorer = LaionAesthetic(clip_model=config, clip_checkpoint_path=checkpoint,
                            mlp_path=save_mlp(tmp_path / f"mlp{bias}.pth", last_bias=bias), device="cpu")
    images = random_images([(32, 32), (48, 40)])
    raw = scorer.raw_scores(scorer.embed(images))
    assert np.all(np.abs(raw) > 40), "the raw output really is off the scale"
    assert scorer.score(images).tolist() == [expected, expected]


def test_laion_missing_files_are_named(tiny_clip, tmp_path):
    config, checkpoint = tiny_clip
    missing_clip = LaionAesthetic(clip_model=config, clip_checkpoint_path=str(tmp_path / "ViT-L-14.bin"),
                                  mlp_path=save_mlp(tmp_path / "mlp.pth"))
    with pytest.raises(FileNotFoundError, match=r"CLIP checkpoint not found at .*ViT-L-14\.bin.*clip_checkpoint_path"):
        missing_clip.score(random_images([(32, 32)]))
    missing_mlp = LaionAesthetic(clip_model=config, clip_checkpoint_path=checkpoint, mlp_path=str(tmp_path / LAION_MLP_FILE))
    with pytest.raises(FileNotFoundError) as error:
        missing_mlp.score(random_images([(32, 32)]))
    assert str(tmp_path / LAION_MLP_FILE) in str(error.value) and "never downloads" in str(error.value)


def test_laion_refuses_a_file_that_is_not_the_mlp(tiny_clip, tmp_path):
    config, checkpoint = tiny_clip
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(1, 768)}, wrong)
    scorer = LaionAesthetic(clip_model=config, clip_checkpoint_path=checkpoint, mlp_path=str(wrong))
    with pytest.raises(ValueError, match="wrong.pth is not a LAION aesthetic MLP"):
        scorer.score(random_images([(32, 32)]))


# ------------------------------------------------------------------------------ MUSIQ


def test_musiq_missing_weights_are_named(tmp_path):
    scorer = Musiq(model_path=str(tmp_path / MUSIQ_KONIQ_FILE), device="cpu")
    with pytest.raises(FileNotFoundError) as error:
        scorer.score(random_images([(32, 32)]))
    message = str(error.value)
    assert str(tmp_path / MUSIQ_KONIQ_FILE) in message and "Musiq.model_path" in message


def test_musiq_without_pyiqa_says_how_to_install_it(tmp_path, monkeypatch):
    weights = tmp_path / MUSIQ_KONIQ_FILE
    weights.write_bytes(b"not read: the import fails first")
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import pyiqa → ImportError
    scoring.load_musiq.cache_clear()
    with pytest.raises(ImportError, match=r"pip install --no-deps pyiqa"):
        Musiq(model_path=str(weights), device="cpu").score(random_images([(32, 32)]))
    scoring.load_musiq.cache_clear()


@pytest.mark.slow
def test_musiq_forward_pass_on_random_weights(tmp_path):
    """pyiqa's own MUSIQ architecture, saved with random weights and loaded by create_metric."""
    pytest.importorskip("pyiqa", reason="pyiqa is optional (pip install --no-deps pyiqa==0.1.16)")
    from pyiqa.archs.musiq_arch import MUSIQ

    torch.manual_seed(0)
    weights = tmp_path / MUSIQ_KONIQ_FILE
    torch.save(MUSIQ(pretrained=False).state_dict(), weights)
    scorer = Musiq(model_path=str(weights), device="cpu", batch_size=2)
    images = random_images([(64, 64), (48, 80), (64, 64)])
    scores = scorer.score(images)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 100))
    alone = scorer.score(images[1:2])
    assert alone == pytest.approx(scores[1:2], abs=1e-4), "grouping by size must not change a score"


# ------------------------------------------------------------------------------ embedded backends


def test_embedded_backends_score_batches_of_mixed_sizes_like_single_images():
    images = random_images([(64, 64), (300, 200), (96, 128)], seed=5)
    technical, proxy = ClassicalTechnical(), ImageStatsAestheticProxy()
    assert technical.score(images).tolist() == [measures.technical_quality(i) for i in images]
    scores, embeddings = proxy.score_and_embed(images)
    assert scores.tolist() == [measures.aesthetic_proxy(i) for i in images]
    assert embeddings.shape == (3, measures.TINY_EMBEDDING_SIDE**2)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert proxy.backend_name() == "image-stats-aesthetic-proxy-v1" and "proxy" in proxy.backend_name()
    assert technical.backend_name() == "classical-technical-v1"


def test_scorers_name_the_image_that_is_not_rgb():
    with pytest.raises(ValueError, match="image 1: expected HxWx3 uint8"):
        ClassicalTechnical().score([random_images([(8, 8)])[0], np.zeros((8, 8), dtype=np.float32)])


# ------------------------------------------------------------------------------ face match


@pytest.fixture(scope="module")
def demo_references(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo_data(root / "roster", root / "reference_images")
    return root / "reference_images"


def load(path: Path) -> np.ndarray:
    """At 400 px the demo faces are still ~120 px wide, far above dlib's unsampled 80 px minimum."""
    image = Image.open(path).convert("RGB")
    image.thumbnail((400, 400))
    return np.asarray(image)


def test_face_match_on_the_demo_references(demo_references):
    face = DlibFaceBackend(upsample_times=0)  # the demo faces are large; skipping the upsample is 4x faster
    nova = demo_references / "nova-sterling"
    names = ["portraits/front.png", "portraits/close-up.jpg", "full_body/warm-light.jpg"]
    embeddings = [f.embedding for f in face.embed_largest_faces([load(nova / n) for n in names])]
    identity = summarize_identity(names, embeddings, face.similarity, face.match_threshold).mean_embedding

    candidates = {
        "astronaut mirrored": nova / "portraits/mirrored.png",
        "astronaut brighter": nova / "expressions/bright.png",
        "Grace Hopper": demo_references / "ada-marlowe/portraits/front.png",
        "face-less crop": nova / "full_body/backdrop.png",
    }
    batch = score_batch([load(p) for p in candidates.values()], ImageStatsAestheticProxy(), ClassicalTechnical(), face, identity)
    reasons = {
        name: quality.first_failed_gate(10.0, 100.0, None if np.isnan(f) else f, quality.Thresholds())
        for name, f in zip(candidates, batch.face_match)
    }
    assert reasons == {
        "astronaut mirrored": None,
        "astronaut brighter": None,
        "Grace Hopper": "face<0.7",
        "face-less crop": "no_face",
    }
    assert batch.face_match[0] > 0.9 and batch.face_match[2] < 0.7
