"""Face backends for the quality gate's face match, behind one pluggable interface.

Each backend finds every face in an image and returns unit-norm embeddings; the face used for
face match is the detection most likely to be the queen's (``choose_face`` in
hydra_assets/domain/identity.py): detector confidence at least the backend's documented
``min_det_score``, then similarity to her identity and size. Raw
similarities are not comparable across models (dlib states its rule as a Euclidean distance
between 128-d descriptors, InsightFace as a cosine between 512-d ArcFace embeddings), so
every backend maps cosine similarity through a piecewise-linear calibration that sends its
own documented "same person" point to ``CALIBRATED_MATCH`` (0.7). A queen's
``face_match_threshold`` then means the same thing whichever backend scored the image.
docs/face_calibration.md records the measurements behind the anchors.

``DlibFaceBackend`` is the embedded default: its weights ship in the
``face-recognition-models`` package, so nothing is ever downloaded.

``InsightFaceBackend`` needs a pack unpacked under ``ROOT/models/<pack>``. InsightFace's
pretrained packs (buffalo_l and the others) are licensed for non-commercial research only;
keep the backend pluggable so a commercial deployment can swap in a model it may use.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import dagster as dg
import dlib
import numpy as np
from pydantic import Field

from hydra_assets.domain.identity import FaceCandidate, choose_face, unit
from resources.scoring import log_model_load

CALIBRATED_MATCH = 0.7
"""Calibrated similarity at which every backend's own same-person rule sits."""

DLIB_SAME_PERSON_DISTANCE = 0.6
"""dlib's documented rule: raw descriptors closer than this are the same person."""
DLIB_DIFFERENT_PERSON_DISTANCE = 1.2
"""Twice the same-person distance: taken as clearly different people (calibrated 0)."""
DLIB_DESCRIPTOR_NORM = 1.4
"""Measured L2 norm of raw dlib descriptors (1.41-1.47 on seven full-size photos, mean 1.38 on
91 LFW faces; docs/face_calibration.md): converts dlib's distances into cosines."""

INSIGHTFACE_SAME_PERSON_COSINE = 0.65
"""InsightFace's examples treat cosine 0.65 between ArcFace embeddings as one identity."""
INSIGHTFACE_UNRELATED_COSINE = 0.0
"""Orthogonal ArcFace embeddings: unrelated faces (calibrated 0)."""

DLIB_MIN_DET_SCORE = 0.0
"""dlib's own decision threshold on its HOG score (``detector.run``): what ``detector(img)`` reports.
No higher floor separates weak false hits from real faces: the face-like patch on the astronaut's
suit scores 0.12 (upsample 1), while the same portrait's real face blurred by 3 px scores 0.08
(sharp real faces: 1.1-1.7). Such weak hits are left to ``choose_face``: a patch is not like
the queen, so similarity to her identity passes it over."""
INSIGHTFACE_MIN_DET_SCORE = 0.5
"""SCRFD's own default ``det_thresh``: its det_score is a probability, real frontal faces 0.7-0.9."""

DLIB_SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
DLIB_RECOGNITION_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_MODELS_PACKAGE = "face_recognition_models"


def cosine_at_distance(distance: float, norm: float) -> float:
    """Cosine between two vectors of length ``norm`` that lie ``distance`` apart."""
    return 1.0 - distance**2 / (2.0 * norm**2)


@dataclass(frozen=True)
class CosineCalibration:
    """Piecewise-linear map of cosine similarity: unrelated → 0, same person → 0.7, 1 → 1."""

    unrelated: float
    same_person: float

    def __call__(self, cosine: np.ndarray | float) -> np.ndarray:
        return np.interp(cosine, (self.unrelated, self.same_person, 1.0), (0.0, CALIBRATED_MATCH, 1.0))


@dataclass(frozen=True)
class FaceEmbedding:
    embedding: np.ndarray
    """float32, unit L2 norm."""
    bbox: tuple[int, int, int, int]
    """x0, y0, x1, y1 in image pixels (x1, y1 exclusive)."""
    det_score: float
    """Detector confidence: dlib's HOG score, InsightFace's det_score."""


class FaceBackend(dg.ConfigurableResource, abc.ABC):
    """One face model: face embeddings, the choice of the queen's face, a calibrated similarity."""

    match_threshold: float = Field(
        default=CALIBRATED_MATCH, ge=0.0, le=1.0, description="Calibrated similarity that means 'same person'."
    )
    min_det_score: float | None = Field(
        default=None, description="Detections below this confidence are not faces; default: the backend's documented floor."
    )

    calibration: ClassVar[CosineCalibration]
    default_min_det_score: ClassVar[float]

    @abc.abstractmethod
    def backend_name(self) -> str:
        """Model identity recorded with every score, e.g. ``dlib-resnet-v1``."""

    @abc.abstractmethod
    def embed_all_faces(self, images: Sequence[np.ndarray]) -> list[list[FaceEmbedding]]:
        """Per HxWx3 uint8 RGB image, every detection at or above the confidence floor, embedded."""

    def det_floor(self) -> float:
        return self.default_min_det_score if self.min_det_score is None else self.min_det_score

    def embed_largest_faces(self, images: Sequence[np.ndarray]) -> list[FaceEmbedding | None]:
        """Per image, the largest confident face's embedding, or None when there is none
        (references: there is no identity to compare with yet)."""
        return [self._chosen(faces, None) for faces in self.embed_all_faces(images)]

    def embed_queen_faces(
        self, images: Sequence[np.ndarray], identity: np.ndarray | Sequence[np.ndarray]
    ) -> list[FaceEmbedding | None]:
        """Per image, the confident face most likely to be the queen's (see ``choose_face``).

        ``identity``: her vector, or one vector per image when a batch crosses queens."""
        per_image = [identity] * len(images) if isinstance(identity, np.ndarray) and identity.ndim == 1 else list(identity)
        return [self._chosen(faces, ident) for faces, ident in zip(self.embed_all_faces(images), per_image, strict=True)]

    def _chosen(self, faces: Sequence[FaceEmbedding], identity: np.ndarray | None) -> FaceEmbedding | None:
        candidates = [
            FaceCandidate(f.bbox, f.det_score, None if identity is None else float(self.similarity(f.embedding, identity)))
            for f in faces
        ]
        index = choose_face(candidates, self.det_floor())
        return None if index is None else faces[index]

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
        """Calibrated similarity in [0, 1] of unit embeddings ``a`` ((d,) or (n, d)) to ``b`` ((d,))."""
        cosine = np.clip(np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64), -1.0, 1.0)
        calibrated = self.calibration(cosine)
        return float(calibrated) if np.ndim(calibrated) == 0 else calibrated


def rgb_uint8(image: np.ndarray) -> np.ndarray:
    """The image as a C-contiguous HxWx3 uint8 array, which both native libraries require."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {array.shape} dtype {array.dtype}")
    return np.ascontiguousarray(array)


def clipped_bbox(x0: float, y0: float, x1: float, y1: float, image: np.ndarray) -> tuple[int, int, int, int]:
    """Detectors may report boxes reaching past the border; keep them inside the image."""
    height, width = image.shape[:2]
    return (
        int(np.clip(round(x0), 0, width)),
        int(np.clip(round(y0), 0, height)),
        int(np.clip(round(x1), 0, width)),
        int(np.clip(round(y1), 0, height)),
    )


def packaged_dlib_weight(file_name: str) -> Path | None:
    """Where face-recognition-models put a weight file; importing that package fails (it needs
    pkg_resources, which is gone), so only its folder is located."""
    spec = importlib.util.find_spec(DLIB_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "models" / file_name


@functools.lru_cache(maxsize=4)
def load_dlib_models(shape_predictor_path: str, recognition_model_path: str):
    """Detector, landmark predictor and ResNet embedder, loaded once per process and paths."""
    log_model_load("dlib face detector + ResNet", recognition_model_path)
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(shape_predictor_path),
        dlib.face_recognition_model_v1(recognition_model_path),
    )


@dataclass(frozen=True)
class RawDescriptor:
    """dlib's descriptor before normalisation: the space its 0.6 distance rule is stated in."""

    descriptor: np.ndarray
    bbox: tuple[int, int, int, int]
    det_score: float


class DlibFaceBackend(FaceBackend):
    """HOG detector, 5-point landmarks and dlib's ResNet (128-d); weights from face-recognition-models."""

    shape_predictor_path: str | None = Field(
        default=None, description=f"{DLIB_SHAPE_PREDICTOR_FILE}; default: the face-recognition-models package."
    )
    recognition_model_path: str | None = Field(
        default=None, description=f"{DLIB_RECOGNITION_MODEL_FILE}; default: the face-recognition-models package."
    )
    upsample_times: int = Field(default=1, ge=0, description="HOG upsampling: 1 finds faces down to about 40 px.")
    num_jitters: int = Field(default=1, ge=1, description="Above 1, average that many jittered crops (slower).")

    default_min_det_score: ClassVar[float] = DLIB_MIN_DET_SCORE
    calibration: ClassVar[CosineCalibration] = CosineCalibration(
        unrelated=cosine_at_distance(DLIB_DIFFERENT_PERSON_DISTANCE, DLIB_DESCRIPTOR_NORM),
        same_person=cosine_at_distance(DLIB_SAME_PERSON_DISTANCE, DLIB_DESCRIPTOR_NORM),
    )

    def backend_name(self) -> str:
        return "dlib-resnet-v1"

    def model_paths(self) -> tuple[str, str]:
        """Both weight files, checked to exist so a missing one fails with a way to fix it."""
        return (
            self._weight_file(self.shape_predictor_path, DLIB_SHAPE_PREDICTOR_FILE, "shape_predictor_path"),
            self._weight_file(self.recognition_model_path, DLIB_RECOGNITION_MODEL_FILE, "recognition_model_path"),
        )

    @staticmethod
    def _weight_file(configured: str | None, file_name: str, field: str) -> str:
        path = Path(configured).expanduser() if configured is not None else packaged_dlib_weight(file_name)
        if path is None or not path.is_file():
            where = f"at {path}" if path else "(face-recognition-models is not installed)"
            raise FileNotFoundError(
                f"dlib weight file {file_name} not found {where}: "
                f"pip install face-recognition-models (it ships the file) "
                f"or set DlibFaceBackend.{field} to a local copy"
            )
        return str(path)

    def raw_descriptors(self, images: Sequence[np.ndarray]) -> list[RawDescriptor | None]:
        """Largest confident face per image as dlib's un-normalised descriptor."""
        results: list[RawDescriptor | None] = []
        for faces in self.raw_face_descriptors(images):
            index = choose_face([FaceCandidate(f.bbox, f.det_score) for f in faces], self.det_floor())
            results.append(None if index is None else faces[index])
        return results

    def raw_face_descriptors(self, images: Sequence[np.ndarray]) -> list[list[RawDescriptor]]:
        """Every confident detection per image, un-normalised, all faces in one batch call."""
        rgbs = [rgb_uint8(image) for image in images]
        detector, predictor, recognizer = load_dlib_models(*self.model_paths())
        floor = self.det_floor()

        found: list[tuple[int, dlib.rectangle, float]] = []
        for index, rgb in enumerate(rgbs):
            # adjust_threshold below the floor so that every detection's score is seen
            rects, scores, _ = detector.run(rgb, self.upsample_times, min(0.0, floor))
            found += [(index, rect, float(score)) for rect, score in zip(rects, scores) if score >= floor]

        results: list[list[RawDescriptor]] = [[] for _ in rgbs]
        if not found:
            return results
        images_with_faces = sorted({index for index, _, _ in found})
        shapes = []
        for index in images_with_faces:
            detections = dlib.full_object_detections()
            for i, rect, _ in found:
                if i == index:
                    detections.append(predictor(rgbs[index], rect))
            shapes.append(detections)
        descriptors = recognizer.compute_face_descriptor([rgbs[i] for i in images_with_faces], shapes, self.num_jitters)
        per_image = dict(zip(images_with_faces, descriptors))
        seen: dict[int, int] = {}
        for index, rect, score in found:
            position = seen.get(index, 0)
            seen[index] = position + 1
            bbox = clipped_bbox(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, rgbs[index])
            results[index].append(RawDescriptor(np.asarray(per_image[index][position], dtype=np.float64), bbox, score))
        return results

    def embed_all_faces(self, images: Sequence[np.ndarray]) -> list[list[FaceEmbedding]]:
        return [
            [FaceEmbedding(unit(raw.descriptor), raw.bbox, raw.det_score) for raw in faces]
            for faces in self.raw_face_descriptors(images)
        ]


@functools.lru_cache(maxsize=4)
def load_face_analysis(
    model_root: str, model_pack: str, providers: tuple[str, ...], ctx_id: int, det_size: int, det_thresh: float
):
    """A prepared FaceAnalysis (detection and recognition only), built once per configuration."""
    from insightface.app import FaceAnalysis

    log_model_load(f"InsightFace {model_pack}", model_root)
    app = FaceAnalysis(
        name=model_pack, root=model_root, providers=list(providers), allowed_modules=["detection", "recognition"]
    )
    app.prepare(ctx_id, det_thresh=det_thresh, det_size=(det_size, det_size))
    return app


class InsightFaceBackend(FaceBackend):
    """InsightFace SCRFD detector and ArcFace recognition (512-d) from a local model pack.

    The pretrained packs are for non-commercial research only (see the module docstring).
    """

    model_pack: str = Field(default="buffalo_l", description="Pack folder name under ROOT/models.")
    model_root: str = Field(default="~/.insightface", description="ROOT: the pack lives in ROOT/models/<pack>.")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    ctx_id: int = Field(default=0, description="GPU index for prepare(); negative forces CPU.")
    det_size: int = Field(default=640, gt=0, description="Square detector input size in pixels.")
    det_thresh: float = Field(default=0.5, ge=0.0, le=1.0)

    default_min_det_score: ClassVar[float] = INSIGHTFACE_MIN_DET_SCORE
    calibration: ClassVar[CosineCalibration] = CosineCalibration(
        unrelated=INSIGHTFACE_UNRELATED_COSINE, same_person=INSIGHTFACE_SAME_PERSON_COSINE
    )

    def backend_name(self) -> str:
        return f"insightface-{self.model_pack}"

    def model_dir(self) -> Path:
        """The pack folder, checked first: FaceAnalysis downloads a missing pack, which must not happen."""
        folder = Path(self.model_root).expanduser() / "models" / self.model_pack
        if not folder.is_dir() or not any(folder.glob("*.onnx")):
            raise FileNotFoundError(
                f"InsightFace model folder {folder} is missing or holds no .onnx files: unpack the "
                f"{self.model_pack} pack there (ROOT/models/{self.model_pack}/*.onnx) or set "
                f"InsightFaceBackend.model_root / model_pack; this pipeline never downloads it"
            )
        return folder

    def embed_all_faces(self, images: Sequence[np.ndarray]) -> list[list[FaceEmbedding]]:
        """Detect per image, then embed every confident face of every image in one recognition batch."""
        # InsightFace reads OpenCV's BGR order.
        bgrs = [np.ascontiguousarray(rgb_uint8(image)[..., ::-1]) for image in images]
        folder = self.model_dir()
        app = load_face_analysis(
            str(folder.parent.parent), self.model_pack, tuple(self.providers), self.ctx_id, self.det_size, self.det_thresh
        )
        from insightface.utils import face_align

        recognizer = app.models["recognition"]
        floor = self.det_floor()
        found: list[tuple[int, tuple[int, int, int, int], float]] = []
        crops: list[np.ndarray] = []
        for index, bgr in enumerate(bgrs):
            boxes, landmarks = app.det_model.detect(bgr, max_num=0)
            for (x0, y0, x1, y1, score), points in zip(boxes, landmarks):
                if score < floor:
                    continue
                found.append((index, clipped_bbox(x0, y0, x1, y1, bgr), float(score)))
                crops.append(face_align.norm_crop(bgr, landmark=points, image_size=recognizer.input_size[0]))

        results: list[list[FaceEmbedding]] = [[] for _ in bgrs]
        if not found:
            return results
        features = recognizer.get_feat(crops)
        for (index, bbox, score), feature in zip(found, features):
            results[index].append(FaceEmbedding(unit(feature), bbox, score))
        return results
