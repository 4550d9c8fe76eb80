"""Face backends: dlib for real on shipped sample photos, InsightFace on tiny ONNX stand-ins.

Run as a script (``.venv/bin/python tests/test_face_backends.py``) to print the calibration
table recorded in docs/face_calibration.md.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import dagster as dg
import dlib
import matplotlib.cbook
import numpy as np
import onnx
import pytest
import skimage.data
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageEnhance, ImageFilter

from hydra_assets.domain.identity import SIZE_WEIGHT, FaceCandidate, choose_face
from resources import face
from resources.face import (
    CALIBRATED_MATCH,
    DLIB_DESCRIPTOR_NORM,
    DLIB_MIN_DET_SCORE,
    DLIB_RECOGNITION_MODEL_FILE,
    DLIB_SAME_PERSON_DISTANCE,
    DLIB_SHAPE_PREDICTOR_FILE,
    DlibFaceBackend,
    FaceBackend,
    FaceEmbedding,
    InsightFaceBackend,
)

SAMPLE_DATA = Path(os.path.dirname(skimage.data.__file__))


def load_rgb(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def astronaut() -> np.ndarray:
    return load_rgb(SAMPLE_DATA / "astronaut.png")


def grace_hopper() -> np.ndarray:
    return load_rgb(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def jpeg_reencoded(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def astronaut_variants() -> dict[str, np.ndarray]:
    """The same identity under edits a generator or a re-save could make."""
    photo = Image.fromarray(astronaut())
    edited = {
        "original": photo,
        "horizontal flip": photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "brightness 1.3, contrast 0.8": ImageEnhance.Contrast(ImageEnhance.Brightness(photo).enhance(1.3)).enhance(0.8),
        "crop 256 px, resized to 512": photo.crop((100, 0, 356, 256)).resize((512, 512), Image.Resampling.BICUBIC),
        "rotated 8 degrees": photo.rotate(8, resample=Image.Resampling.BICUBIC),
        "JPEG quality 40": jpeg_reencoded(photo, quality=40),
    }
    return {name: np.asarray(image) for name, image in edited.items()}


def calibration_rows(backend: DlibFaceBackend) -> list[dict[str, float | str]]:
    """Raw norm, raw distance, cosine and calibrated similarity of each photo to the astronaut."""
    photos = {**astronaut_variants(), "Grace Hopper (other person)": grace_hopper()}
    raws = backend.raw_descriptors(list(photos.values()))
    reference = raws[0].descriptor
    rows = []
    for name, raw in zip(photos, raws):
        cosine = float(face.unit(raw.descriptor) @ face.unit(reference))
        rows.append(
            {
                "photo": name,
                "raw norm": float(np.linalg.norm(raw.descriptor)),
                "raw distance": float(np.linalg.norm(raw.descriptor - reference)),
                "cosine": cosine,
                "calibrated": float(backend.calibration(cosine)),
            }
        )
    return rows


def lfw_subset_statistics(backend: DlibFaceBackend) -> dict[str, float]:
    """Descriptor norms and pairwise distances over scikit-image's 100 LFW faces.

    The faces are 25 px, so they are upscaled 8x before detection; blur pulls distances
    together, so only the norms are used for calibration.
    """
    faces = [
        np.asarray(Image.fromarray((gray * 255).astype(np.uint8)).resize((200, 200), Image.Resampling.BICUBIC).convert("RGB"))
        for gray in skimage.data.lfw_subset()[:100]
    ]
    descriptors = np.array([raw.descriptor for raw in backend.raw_descriptors(faces) if raw is not None])
    norms = np.linalg.norm(descriptors, axis=1)
    pairs = np.triu_indices(len(descriptors), 1)
    distances = np.linalg.norm(descriptors[:, None] - descriptors[None], axis=-1)[pairs]
    return {
        "faces found": len(descriptors),
        "norm mean": norms.mean(),
        "norm sd": norms.std(),
        "norm min": norms.min(),
        "norm max": norms.max(),
        "pair distance p5": np.percentile(distances, 5),
        "pair distance median": np.median(distances),
        "pair distance p95": np.percentile(distances, 95),
    }


# ---------------------------------------------------------------- calibration


@pytest.mark.parametrize("backend_class", [DlibFaceBackend, InsightFaceBackend])
def test_calibration_sends_each_backends_rule_to_the_shared_threshold(backend_class: type[FaceBackend]) -> None:
    calibration = backend_class.calibration
    cosines = np.linspace(-1.0, 1.0, 201)
    calibrated = calibration(cosines)
    assert calibration(calibration.same_person) == pytest.approx(CALIBRATED_MATCH)
    assert calibration(1.0) == pytest.approx(1.0)
    assert calibration(calibration.unrelated) == pytest.approx(0.0)
    assert np.all(np.diff(calibrated) >= 0.0)
    assert calibrated.min() == 0.0 and calibrated.max() == 1.0


def test_dlib_distance_rule_maps_to_the_match_threshold() -> None:
    """Two raw descriptors of the measured norm, exactly 0.6 apart, score exactly 0.7."""
    half_angle = np.arcsin(DLIB_SAME_PERSON_DISTANCE / 2 / DLIB_DESCRIPTOR_NORM)
    a = DLIB_DESCRIPTOR_NORM * np.array([np.cos(half_angle), np.sin(half_angle)])
    b = DLIB_DESCRIPTOR_NORM * np.array([np.cos(half_angle), -np.sin(half_angle)])
    assert np.linalg.norm(a - b) == pytest.approx(DLIB_SAME_PERSON_DISTANCE)
    backend = DlibFaceBackend()
    assert backend.similarity(face.unit(a), face.unit(b)) == pytest.approx(CALIBRATED_MATCH)


def test_similarity_takes_one_or_many_embeddings() -> None:
    backend = InsightFaceBackend()
    reference = np.array([1.0, 0.0], dtype=np.float32)
    many = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(backend.similarity(many, reference), [1.0, 0.0, 0.0])
    assert isinstance(backend.similarity(many[0], reference), float)


def test_images_must_be_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        DlibFaceBackend().embed_largest_faces([np.zeros((32, 32), dtype=np.uint8)])


# ---------------------------------------------------------------- dlib, for real

VARIANT_NAMES = list(astronaut_variants())
FACELESS = ["coffee", "flat grey"]


@pytest.fixture(scope="module")
def dlib_results() -> dict[str, FaceEmbedding | None]:
    """Every photo embedded in one batch call; faceless images sit between faces on purpose."""
    photos = {
        **astronaut_variants(),
        "coffee": load_rgb(SAMPLE_DATA / "coffee.png"),
        "grace hopper": grace_hopper(),
        "flat grey": np.full((300, 400, 3), 128, dtype=np.uint8),
    }
    return dict(zip(photos, DlibFaceBackend().embed_largest_faces(list(photos.values()))))


@pytest.mark.parametrize("variant", VARIANT_NAMES[1:])
def test_dlib_astronaut_variants_match_the_astronaut(dlib_results, variant: str) -> None:
    backend = DlibFaceBackend()
    similarity = backend.similarity(dlib_results[variant].embedding, dlib_results["original"].embedding)
    assert similarity >= backend.match_threshold


def test_dlib_grace_hopper_is_not_the_astronaut(dlib_results) -> None:
    backend = DlibFaceBackend()
    for variant in VARIANT_NAMES:
        similarity = backend.similarity(dlib_results["grace hopper"].embedding, dlib_results[variant].embedding)
        assert similarity < backend.match_threshold


@pytest.mark.parametrize("name", FACELESS)
def test_dlib_faceless_image_gives_none(dlib_results, name: str) -> None:
    assert dlib_results[name] is None


def test_dlib_embeddings_are_unit_float32_with_box_and_score(dlib_results) -> None:
    original = dlib_results["original"]
    for result in (r for r in dlib_results.values() if r is not None):
        assert result.embedding.shape == (128,) and result.embedding.dtype == np.float32
        assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-6)
        assert result.det_score > 0.0
    # The astronaut's face, not the smaller second HOG hit on her suit.
    x0, y0, x1, y1 = original.bbox
    assert (x0, y0) == (175, 76) and x1 - x0 > 80 and y1 - y0 > 80


def test_backends_plug_into_an_asset_as_a_resource() -> None:
    @dg.asset
    def astronaut_self_match(face_backend: FaceBackend) -> float:
        (found,) = face_backend.embed_largest_faces([astronaut()])
        return face_backend.similarity(found.embedding, found.embedding)

    result = dg.materialize([astronaut_self_match], resources={"face_backend": DlibFaceBackend()})
    assert result.output_for_node("astronaut_self_match") == pytest.approx(1.0)


def test_dlib_models_load_once_for_a_batch(monkeypatch) -> None:
    loads = {"shape_predictor": 0, "face_recognition_model_v1": 0}

    def counting(name):
        real = getattr(dlib, name)

        def load(path):
            loads[name] += 1
            return real(path)

        return load

    for name in loads:
        monkeypatch.setattr(dlib, name, counting(name))
    face.load_dlib_models.cache_clear()
    try:
        images = [astronaut(), grace_hopper(), astronaut()[:, ::-1], np.zeros((64, 64, 3), np.uint8)]
        first = DlibFaceBackend().embed_largest_faces(images)
        DlibFaceBackend().embed_largest_faces(images[:1])
    finally:
        face.load_dlib_models.cache_clear()
    assert loads == {"shape_predictor": 1, "face_recognition_model_v1": 1}
    assert [r is None for r in first] == [False, False, False, True]


def test_dlib_missing_weight_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "resnet.dat"
    with pytest.raises(FileNotFoundError, match=DLIB_RECOGNITION_MODEL_FILE) as raised:
        DlibFaceBackend(recognition_model_path=str(missing)).embed_largest_faces([astronaut()])
    assert str(missing) in str(raised.value) and "recognition_model_path" in str(raised.value)


def test_dlib_without_the_weights_package_says_how_to_install_it(monkeypatch) -> None:
    real_find_spec = face.importlib.util.find_spec
    monkeypatch.setattr(
        face.importlib.util,
        "find_spec",
        lambda name, *args: None if name == face.DLIB_MODELS_PACKAGE else real_find_spec(name, *args),
    )
    with pytest.raises(FileNotFoundError, match=DLIB_SHAPE_PREDICTOR_FILE) as raised:
        DlibFaceBackend().model_paths()
    assert "pip install face-recognition-models" in str(raised.value)


# ---------------------------------------------------------------- which face is the queen's


def test_choose_face_drops_weak_detections_then_prefers_her_and_then_size() -> None:
    big_weak = FaceCandidate((0, 0, 200, 200), det_score=0.1, similarity=0.9)
    her_small = FaceCandidate((300, 0, 350, 50), det_score=1.2, similarity=0.8)
    other_big = FaceCandidate((0, 300, 150, 450), det_score=1.5, similarity=0.2)
    assert choose_face([big_weak, her_small, other_big], min_det_score=0.3) == 1
    assert choose_face([big_weak], min_det_score=0.3) is None
    # without an identity: the largest confident face
    no_identity = [FaceCandidate(c.bbox, c.det_score) for c in (big_weak, her_small, other_big)]
    assert choose_face(no_identity, min_det_score=0.3) == 2
    # two detections of her: size decides unless the smaller is clearly more like her
    full = FaceCandidate((0, 0, 100, 100), 1.0, similarity=0.80)
    badge = FaceCandidate((200, 200, 250, 250), 1.4, similarity=0.80 + SIZE_WEIGHT * 0.5 - 0.01)
    assert choose_face([badge, full], 0.3) == 1
    assert choose_face([FaceCandidate(badge.bbox, 1.4, 0.80 + SIZE_WEIGHT * 0.5 + 0.01), full], 0.3) == 0


def paste(base: np.ndarray, patch: Image.Image, at: tuple[int, int]) -> np.ndarray:
    frame = Image.fromarray(base).copy()
    frame.paste(patch, at)
    return np.asarray(frame)


def astronaut_identity(backend: DlibFaceBackend) -> np.ndarray:
    """Her identity from edited copies (not the frame under test): flipped, re-encoded, brightened."""
    variants = astronaut_variants()
    faces = backend.embed_largest_faces([variants[n] for n in ("horizontal flip", "JPEG quality 40", "brightness 1.3, contrast 0.8")])
    return face.unit(np.mean([f.embedding for f in faces], axis=0))


def inside(bbox: tuple[int, int, int, int], point: tuple[int, int]) -> bool:
    x0, y0, x1, y1 = bbox
    return x0 <= point[0] < x1 and y0 <= point[1] < y1


ASTRONAUT_FACE_CENTRE = (222, 125)


def test_a_weak_face_like_patch_larger_than_her_face_is_not_chosen() -> None:
    """The issue's badge: her head shrunk to 0.8 so HOG's weak hit on the suit (score 0.12, 90 px)
    is larger than her face (76 px, score 1.7): the largest-face rule takes that patch."""
    backend = DlibFaceBackend()
    photo = astronaut()
    head = Image.fromarray(photo).crop((140, 40, 310, 210)).resize((136, 136))
    frame = paste(photo, head, (157, 57))
    (faces,) = backend.embed_all_faces([frame])
    patch = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    assert not inside(patch.bbox, ASTRONAUT_FACE_CENTRE) and patch.det_score < 0.3 < min(f.det_score for f in faces if f is not patch)
    (largest,) = backend.embed_largest_faces([frame])
    assert largest.bbox == patch.bbox, "without her identity the largest detection is taken"

    identity = astronaut_identity(backend)
    (chosen,) = backend.embed_queen_faces([frame], identity)
    assert inside(chosen.bbox, ASTRONAUT_FACE_CENTRE) and chosen.det_score > 1.0
    assert backend.similarity(chosen.embedding, identity) >= backend.match_threshold
    assert backend.similarity(patch.embedding, identity) < backend.match_threshold, "the issue: face<0.7 from the patch"
    # a backend configured with a higher floor drops the patch before any choice
    (strict,) = backend.model_copy(update={"min_det_score": 0.3}).embed_largest_faces([frame])
    assert inside(strict.bbox, ASTRONAUT_FACE_CENTRE)


def test_a_blurred_real_face_is_still_a_face() -> None:
    """Why the dlib floor is dlib's own threshold: a 3 px blur brings her real face down to HOG 0.08."""
    blurred = np.asarray(Image.fromarray(astronaut()).filter(ImageFilter.GaussianBlur(3)))
    (found,) = DlibFaceBackend().embed_largest_faces([blurred])
    assert found is not None and inside(found.bbox, ASTRONAUT_FACE_CENTRE) and DLIB_MIN_DET_SCORE <= found.det_score < 0.3


@pytest.mark.parametrize(("badge", "width"), [("grace hopper", 60), ("herself", 80)])
def test_a_small_face_pasted_as_a_badge_does_not_replace_hers(badge: str, width: int) -> None:
    """A small real face on her suit, detected more confidently than her own face (HOG 1.2-1.5)."""
    backend = DlibFaceBackend()
    source = Image.fromarray(grace_hopper()).crop((150, 120, 390, 380)) if badge == "grace hopper" \
        else Image.fromarray(astronaut()).crop((160, 60, 280, 190))
    frame = paste(astronaut(), source.resize((width, round(width * 1.08))), (150, 340))
    (faces,) = backend.embed_all_faces([frame])
    assert len(faces) == 2 and max(faces, key=lambda f: f.det_score).bbox[1] > 300, "the badge is the most confident"
    identity = astronaut_identity(backend)
    (chosen,) = backend.embed_queen_faces([frame], identity)
    assert inside(chosen.bbox, ASTRONAUT_FACE_CENTRE)
    assert backend.similarity(chosen.embedding, identity) >= backend.match_threshold


def test_of_two_real_faces_the_queens_is_chosen_even_when_smaller() -> None:
    backend = DlibFaceBackend()
    canvas = Image.new("RGB", (900, 600), (128, 128, 128))
    canvas.paste(Image.fromarray(astronaut()).resize((300, 300)), (0, 150))
    canvas.paste(Image.fromarray(grace_hopper()), (388, 0))
    frame = np.asarray(canvas)
    (largest,) = backend.embed_largest_faces([frame])
    assert largest.bbox[0] > 388, "Grace Hopper's is the larger face"
    identity = astronaut_identity(backend)
    (chosen,) = backend.embed_queen_faces([frame], identity)
    assert chosen.bbox[2] <= 300 and backend.similarity(chosen.embedding, identity) >= backend.match_threshold
    # and for Grace Hopper as the queen, hers
    (grace,) = backend.embed_largest_faces([grace_hopper()])
    (chosen_grace,) = backend.embed_queen_faces([frame], grace.embedding)
    assert chosen_grace.bbox[0] > 388


# ---------------------------------------------------------------- InsightFace

DET_INPUT = 640
STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
# (stride, cell x, cell y, score weight, (left, top, right, bottom) distances in pixels)
BIG_FACE = (32, 10, 8, 0.4, (100.0, 120.0, 100.0, 140.0))
SMALL_FACE = (8, 10, 10, 0.5, (20.0, 20.0, 20.0, 20.0))


def scrfd_like_detector(path: Path) -> None:
    """SCRFD's 9-output layout (scores, boxes, keypoints per stride) with two fixed faces.

    Scores are weight x (max - min) of the input, so a flat image has no face. The small face
    scores higher than the big one: the backend must still pick the big one.
    """
    pixels = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET_INPUT, DET_INPUT])
    nodes = [
        helper.make_node("ReduceMax", ["input.1"], ["max"], keepdims=0),
        helper.make_node("ReduceMin", ["input.1"], ["min"], keepdims=0),
        helper.make_node("Sub", ["max", "min"], ["contrast"]),
    ]
    initializers, outputs = [], []
    tables = {"score": [], "bbox": [], "kps": []}
    for stride in STRIDES:
        cells = (DET_INPUT // stride) ** 2 * ANCHORS_PER_CELL
        score, bbox, kps = np.zeros((cells, 1)), np.zeros((cells, 4)), np.zeros((cells, 10))
        for face_stride, cx, cy, weight, distances in (BIG_FACE, SMALL_FACE):
            if face_stride != stride:
                continue
            row = (cy * (DET_INPUT // stride) + cx) * ANCHORS_PER_CELL
            centre = np.array([cx * stride, cy * stride], dtype=float)
            left, top, right, bottom = distances
            score[row] = weight
            bbox[row] = np.array(distances) / stride
            corner, size = centre - (left, top), np.array([left + right, top + bottom])
            kps[row] = ((corner + ARCFACE_TEMPLATE / 112.0 * size - centre) / stride).ravel()
        tables["score"].append(score)
        tables["bbox"].append(bbox)
        tables["kps"].append(kps)
    for kind, arrays in tables.items():
        for stride, array in zip(STRIDES, arrays):
            name = f"{kind}_{stride}"
            initializers.append(numpy_helper.from_array(array.astype(np.float32), f"{name}_table"))
            if kind == "score":
                nodes.append(helper.make_node("Mul", [f"{name}_table", "contrast"], [name]))
            else:
                nodes.append(helper.make_node("Identity", [f"{name}_table"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(array.shape)))
    save_model(helper.make_graph(nodes, "scrfd_like", [pixels], outputs, initializers), path)


def arcface_like_recognizer(path: Path) -> None:
    """ArcFace's contract (Nx3x112x112 → 512): pooled pixels times a fixed random projection."""
    pixels = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])
    features = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])
    projection = np.random.default_rng(0).standard_normal((3 * 7 * 7, 512)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["data"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "projection"], ["fc1"]),
    ]
    graph = helper.make_graph(nodes, "arcface_like", [pixels], [features], [numpy_helper.from_array(projection, "projection")])
    save_model(graph, path)


def save_model(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def insightface_root(tmp_path_factory) -> Path:
    """ROOT with ROOT/models/tiny_pack laid out like buffalo_l (det_10g.onnx, w600k_r50.onnx)."""
    root = tmp_path_factory.mktemp("insightface")
    pack = root / "models" / "tiny_pack"
    pack.mkdir(parents=True)
    scrfd_like_detector(pack / "det_10g.onnx")
    arcface_like_recognizer(pack / "w600k_r50.onnx")
    return root


@pytest.fixture
def tiny_backend(insightface_root: Path):
    face.load_face_analysis.cache_clear()
    yield InsightFaceBackend(model_root=str(insightface_root), model_pack="tiny_pack", ctx_id=-1)
    face.load_face_analysis.cache_clear()


def test_insightface_missing_pack_fails_before_any_download(tmp_path: Path, monkeypatch) -> None:
    import insightface.app

    def never(*args, **kwargs):
        raise AssertionError("FaceAnalysis must not be constructed without a local pack")

    monkeypatch.setattr(insightface.app, "FaceAnalysis", never)
    backend = InsightFaceBackend(model_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="buffalo_l") as raised:
        backend.embed_largest_faces([astronaut()])
    assert str(tmp_path / "models" / "buffalo_l") in str(raised.value)
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no .onnx files"):
        backend.embed_largest_faces([astronaut()])
    assert [p.name for p in tmp_path.rglob("*")] == ["models", "buffalo_l"]


def test_insightface_embeds_the_largest_face(tiny_backend: InsightFaceBackend) -> None:
    photo = np.asarray(Image.fromarray(astronaut()).resize((DET_INPUT, DET_INPUT)))
    flat = np.full((DET_INPUT, DET_INPUT, 3), 128, dtype=np.uint8)
    with_face, without = tiny_backend.embed_largest_faces([photo, flat])
    assert without is None
    assert with_face.bbox == (220, 136, 420, 396)
    assert with_face.det_score == pytest.approx(BIG_FACE[3] * (photo.max() - photo.min()) / 128.0, rel=1e-3)
    assert with_face.embedding.shape == (512,) and with_face.embedding.dtype == np.float32
    assert np.linalg.norm(with_face.embedding) == pytest.approx(1.0, abs=1e-6)
    assert tiny_backend.backend_name() == "insightface-tiny_pack"


def test_insightface_keeps_every_confident_face_and_applies_its_floor(tiny_backend: InsightFaceBackend) -> None:
    photo = np.asarray(Image.fromarray(astronaut()).resize((DET_INPUT, DET_INPUT)))
    (faces,) = tiny_backend.embed_all_faces([photo])
    assert sorted(f.bbox for f in faces) == sorted([(220, 136, 420, 396), (60, 60, 100, 100)])
    strict = tiny_backend.model_copy(update={"min_det_score": max(f.det_score for f in faces) - 1e-3})
    (only,) = strict.embed_all_faces([photo])
    assert [f.bbox for f in only] == [(60, 60, 100, 100)], "only the more confident (small) face clears a higher floor"
    (chosen,) = tiny_backend.embed_queen_faces([photo], faces[[f.bbox for f in faces].index((60, 60, 100, 100))].embedding)
    assert chosen.bbox == (60, 60, 100, 100), "her identity outweighs size"


def test_insightface_batch_matches_one_by_one_and_loads_once(tiny_backend: InsightFaceBackend, monkeypatch) -> None:
    import insightface.app

    constructed = []
    real = insightface.app.FaceAnalysis

    def counting(*args, **kwargs):
        constructed.append(kwargs["name"])
        return real(*args, **kwargs)

    monkeypatch.setattr(insightface.app, "FaceAnalysis", counting)
    photos = [
        np.asarray(Image.fromarray(image).resize((DET_INPUT, DET_INPUT)))
        for image in (astronaut(), grace_hopper(), astronaut()[:, ::-1])
    ]
    batch = tiny_backend.embed_largest_faces(photos)
    single = [tiny_backend.model_copy().embed_largest_faces([photo])[0] for photo in photos]
    assert constructed == ["tiny_pack"]
    for together, alone in zip(batch, single):
        np.testing.assert_allclose(together.embedding, alone.embedding, atol=1e-6)
    assert tiny_backend.similarity(batch[0].embedding, batch[1].embedding) < 1.0


if __name__ == "__main__":
    header = ["photo", "raw norm", "raw distance", "cosine", "calibrated"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in calibration_rows(DlibFaceBackend()):
        print(f"| {row['photo']} | " + " | ".join(f"{row[key]:.4f}" for key in header[1:]) + " |")
    print()
    for key, value in lfw_subset_statistics(DlibFaceBackend()).items():
        print(f"- {key}: {value:.4g}")
