"""The quality gate: image_scores, approved_images and quality_report for each overnight batch.

image_scores reads the partition manifest that generated_images writes
(``overnight/{night}/generated/{slug}/manifest.json``), scores every image in batches with the
configured backends, gates it and records the result (parquet + catalog). approved_images
publishes the decisions as files; quality_report sums a night up for the studio.
"""


import io
import json
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image

from hydra_assets.domain import images as image_files
from hydra_assets.domain import quality
from hydra_assets.domain.metrics import PipelineMetrics, record_partition
from hydra_assets.domain.roster import RosterError
from hydra_assets.domain.storage import StorageLayout, atomic_write_bytes, read_json, sha256_bytes, sha256_file
from hydra_assets.gpu import gpu_asset_kwargs
from hydra_assets.metadata import markdown_table, png_preview
from hydra_assets.partitions import nights_partitions, queen_nights_partitions
from resources.catalog import COUNTED_ASSET_TYPES, CatalogResource
from resources.face import FaceBackend
from resources.metrics import MetricsPusher
from resources.scoring import AestheticScorer, TechnicalScorer
from resources.storage import HydraStorage

MANIFEST_NAME = "manifest.json"
IDENTITY_FILE = "identity.npz"
CONTACT_SHEET_LIMIT = 24
APPROVAL_ALERT_RATE = 0.5
"""SPEC: a queen whose approval rate falls below this needs attention."""
REASON_MAX_LENGTH = 200
"""generated_assets.rejection_reason is a String(200)."""
HASH_NAME_HEX = 16

SCORE_FRAME_COLUMNS = (
    "image_id", "queen", "night", "asset_type", "file_path", "file_size", "file_hash",
    *quality.SCORE_COLUMNS,
    "approved", "approval_method", "rejection_reason", "decided_by", "near_duplicate_of", "approved_at",
    "generation_params", "prompt_used", "seed", "generated_at",
    "aesthetic_backend", "technical_backend", "face_backend", "embedding_model", "identity_hash", "embedding",
    "face_bbox", "face_det_score",
)
"""One row per image: the SPEC's generated_assets columns plus what re-runs and lineage need."""
REUSE_KEYS = ("file_hash", "aesthetic_backend", "technical_backend", "face_backend", "embedding_model", "identity_hash")
"""A previous row's scores are reused only when all of these are unchanged."""


with warnings.catch_warnings():
    # Beta in Dagster 1.13, and exactly the mapping these edges mean: one queen's identity feeds
    # all her nights, one night's report reads all its queens.
    warnings.simplefilter("ignore", dg.BetaWarning)
    BY_QUEEN = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="queen")
    BY_NIGHT = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="night")


def partition_dims(context: dg.AssetExecutionContext) -> tuple[str, str]:
    key = queen_nights_partitions.get_partition_key_from_str(context.partition_key)
    return key.keys_by_dimension["queen"], key.keys_by_dimension["night"]


def published_folder(asset_type: str) -> str:
    """The contract's plural folder of an asset type: portrait → portraits."""
    return f"{asset_type}s"


# ------------------------------------------------------------------------------ reading inputs


def read_generated_manifest(layout: StorageLayout, night: str, slug: str) -> dict[str, Any]:
    path = layout.generated_dir(night, slug) / MANIFEST_NAME
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        raise dg.Failure(f"{path} cannot be read as JSON: {exc}") from exc
    if manifest is None:
        raise dg.Failure(f"{path} is missing: materialize generated_images for {slug} on {night} first")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("images"), list):
        raise dg.Failure(f"{path}: must be an object with an 'images' list (the generated_images manifest)")
    return manifest


def load_identity(layout: StorageLayout, slug: str) -> tuple[np.ndarray, str]:
    """The queen's mean face vector and the hash of the file it came from."""
    path = layout.identity_dir(slug) / IDENTITY_FILE
    if not path.is_file():
        raise dg.Failure(f"{path} is missing: materialize reference_identity for {slug} (it needs faces in the references)")
    with np.load(path) as archive:
        if "mean" not in archive:
            raise dg.Failure(f"{path} has no 'mean' vector: re-materialize reference_identity for {slug}")
        return np.asarray(archive["mean"], dtype=np.float32), sha256_file(path)


def read_scores(path: Path) -> pd.DataFrame | None:
    """A partition's scores, or None when there are none yet (or the file is unreadable: it is rewritten)."""
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid, a ValueError
        dg.get_dagster_logger().warning(f"{path} cannot be read ({exc}); every image is scored again")
        return None


def prior_approved(layout: StorageLayout, slug: str, night: str, embedding_model: str) -> tuple[np.ndarray | None, list[str]]:
    """Embeddings of the queen's images approved on earlier nights, in the same embedding space."""
    vectors: list[np.ndarray] = []
    ids: list[str] = []
    for path in sorted(layout.root.glob(f"overnight/*/scores/{slug}.parquet")):
        if path.parent.parent.name >= night:
            continue
        frame = read_scores(path)
        if frame is None or "embedding" not in frame:
            continue
        frame = frame[frame["approved"].astype(bool) & (frame["embedding_model"] == embedding_model)]
        for image_id, vector in zip(frame["image_id"], frame["embedding"]):
            if _has_vector(vector):
                vectors.append(np.asarray(vector, dtype=np.float32))
                ids.append(str(image_id))
    return (np.stack(vectors) if vectors else None), ids


# ------------------------------------------------------------------------------ scoring


FACE_ANALYSIS_MAX_SIDE = 768
"""Faces are looked for on a copy at most this long: a portrait's face stays far above the detectors'
minimum (dlib's HOG about 80 px unsampled, InsightFace resizes to 640 anyway) and the embedders
work on small aligned crops, while dlib's upsampled HOG on a 1024 px image costs 4x as much."""


def face_analysis_copy(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if max(height, width) <= FACE_ANALYSIS_MAX_SIDE:
        return image
    scale = FACE_ANALYSIS_MAX_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


@dataclass
class BatchScores:
    aesthetic: np.ndarray
    technical: np.ndarray
    face_match: np.ndarray
    """NaN where no face was found."""
    embeddings: np.ndarray
    face_boxes: list[list[int] | None]
    """The chosen face's x0, y0, x1, y1 in the image's own pixels."""
    face_det_scores: np.ndarray


def score_batch(
    images: Sequence[np.ndarray],
    aesthetic: AestheticScorer,
    technical: TechnicalScorer,
    face: FaceBackend,
    identity: np.ndarray,
) -> BatchScores:
    """Every backend once over the whole batch; face match is the face most likely hers against the identity."""
    aesthetic_scores, embeddings = aesthetic.score_and_embed(images)
    technical_scores = technical.score(images)
    copies = [face_analysis_copy(image) for image in images]
    faces = face.embed_queen_faces(copies, identity)
    face_scores = np.array([np.nan if f is None else float(face.similarity(f.embedding, identity)) for f in faces])
    scales = [image.shape[1] / copy.shape[1] for image, copy in zip(images, copies)]
    return BatchScores(
        np.asarray(aesthetic_scores, dtype=np.float64),
        np.asarray(technical_scores, dtype=np.float64),
        face_scores,
        np.asarray(embeddings, dtype=np.float32),
        [None if f is None else [round(v * k) for v in f.bbox] for f, k in zip(faces, scales)],
        np.array([np.nan if f is None else f.det_score for f in faces]),
    )


class ImageScoresConfig(dg.Config):
    batch_size: int = 16
    """Images decoded and scored together; bounds memory, models see whole batches."""
    rescore: bool = False
    """Score every image again even where an earlier row with the same file and backends exists."""


def _manifest_rows(manifest: Mapping[str, Any], layout: StorageLayout, night: str, slug: str, log) -> list[dict[str, Any]]:
    """One base row per usable manifest entry; an entry without id, type or file is logged and left out."""
    folder = layout.generated_dir(night, slug)
    rows, seen = [], set()
    for position, entry in enumerate(manifest["images"]):
        missing = [k for k in ("image_id", "asset_type", "file") if not isinstance(entry, dict) or not entry.get(k)]
        if missing:
            log.warning(f"{folder / MANIFEST_NAME}: images[{position}] lacks {', '.join(missing)}; left out")
            continue
        image_id = str(entry["image_id"])
        if image_id in seen:
            log.warning(f"{folder / MANIFEST_NAME}: {image_id} is listed twice; the first entry is scored")
            continue
        seen.add(image_id)
        path = (folder / entry["file"]).resolve()
        if not path.is_relative_to(folder.resolve()):
            log.warning(f"{folder / MANIFEST_NAME}: {image_id}: file {entry['file']!r} points outside {folder}; left out")
            continue
        params = entry.get("params") or {}
        rows.append(
            {
                "image_id": image_id,
                "queen": slug,
                "night": night,
                "asset_type": str(entry["asset_type"]),
                "file_path": path.relative_to(layout.root.resolve()).as_posix(),
                "generation_params": json.dumps(params, sort_keys=True),
                "prompt_used": params.get("prompt"),
                "seed": entry.get("seed", params.get("seed")),
                "generated_at": entry.get("generated_at"),
                "_path": path,
                "_manifest_sha256": entry.get("sha256"),
            }
        )
    return rows


@dg.asset(
    partitions_def=queen_nights_partitions,
    group_name="quality",
    deps=[
        dg.AssetDep("generated_images"),
        dg.AssetDep("reference_identity", partition_mapping=BY_QUEEN),
    ],
    kinds={"pytorch", "parquet"},
    description="Aesthetic, technical, face-match and composite scores of every image generated for the queen "
    "that night, and the gate's decision with its first failed reason.",
    **gpu_asset_kwargs("quality-scoring"),
)
def image_scores(
    context: dg.AssetExecutionContext,
    config: ImageScoresConfig,
    storage: HydraStorage,
    catalog: CatalogResource,
    face: FaceBackend,
    aesthetic: AestheticScorer,
    technical: TechnicalScorer,
):
    slug, night = partition_dims(context)
    layout = storage.layout
    manifest = read_generated_manifest(layout, night, slug)
    try:
        queen = storage.load_queen(slug)
    except RosterError as error:
        raise dg.Failure(description=str(error), metadata={"file": str(error.path), "field": error.field}) from error
    thresholds = quality.Thresholds.from_generation_config(queen.generation_config)
    identity, identity_hash = load_identity(layout, slug)
    overrides_path = layout.overrides_path(night, slug)
    try:
        overrides = quality.load_overrides(overrides_path)
    except quality.OverrideError as error:
        raise dg.Failure(description=str(error), metadata={"file": str(error.path)}) from error

    backends = {
        "aesthetic_backend": aesthetic.backend_name(),
        "technical_backend": technical.backend_name(),
        "face_backend": face.backend_name(),
        "embedding_model": aesthetic.embedding_name(),
        "identity_hash": identity_hash,
    }
    scores_path = layout.scores_path(night, slug)
    previous = read_scores(scores_path)
    previous_by_id = {} if previous is None else {str(r["image_id"]): r for r in previous.to_dict("records")}

    rows = _manifest_rows(manifest, layout, night, slug, context.log)
    to_score: list[int] = []
    reused = 0
    for index, row in enumerate(rows):
        path: Path = row["_path"]
        row.update(backends)
        if not path.is_file():
            context.log.warning(f"{slug} {night}: {row['image_id']}: {path} is missing")
            row.update(file_hash=None, file_size=None)
            continue
        row.update(file_hash=sha256_file(path), file_size=path.stat().st_size)
        if row["_manifest_sha256"] and row["_manifest_sha256"] != row["file_hash"]:
            context.log.warning(f"{slug} {night}: {path} differs from its manifest sha256; scoring the file as it is")
        old = previous_by_id.get(row["image_id"])
        unchanged = old is not None and all(old.get(k) == row.get(k) for k in REUSE_KEYS) and "face_det_score" in old
        if not config.rescore and unchanged and not pd.isna(old[quality.AESTHETIC]):
            for column in (quality.AESTHETIC, quality.TECHNICAL, quality.FACE_MATCH, "embedding", "face_bbox", "face_det_score"):
                row[column] = old[column]
            reused += 1
        else:
            to_score.append(index)

    unreadable = [r["image_id"] for r in rows if r["file_hash"] is None]
    scored = 0
    for start in range(0, len(to_score), config.batch_size):
        batch_rows = [rows[i] for i in to_score[start : start + config.batch_size]]
        pixels, loaded = [], []
        for row in batch_rows:
            try:
                pixels.append(image_files.load_rgb(row["_path"]))
                loaded.append(row)
            except Exception as exc:  # Pillow raises many types on a damaged file
                context.log.warning(f"{slug} {night}: {row['_path']} cannot be decoded: {exc}")
                unreadable.append(row["image_id"])
        if not loaded:
            continue
        batch = score_batch(pixels, aesthetic, technical, face, identity)
        for position, row in enumerate(loaded):
            row[quality.AESTHETIC] = float(batch.aesthetic[position])
            row[quality.TECHNICAL] = float(batch.technical[position])
            row[quality.FACE_MATCH] = float(batch.face_match[position])
            row["embedding"] = batch.embeddings[position]
            row["face_bbox"], row["face_det_score"] = batch.face_boxes[position], float(batch.face_det_scores[position])
        scored += len(loaded)
        context.log.info(f"{slug} {night}: scored {start + len(batch_rows)} of {len(to_score)} images")

    frame = pd.DataFrame(rows, columns=[c for c in SCORE_FRAME_COLUMNS if c not in ("composite_score",)])
    frame[quality.COMPOSITE] = quality.composite_score(
        frame[quality.AESTHETIC].astype(float), frame[quality.TECHNICAL].astype(float), frame[quality.FACE_MATCH].astype(float)
    )
    embeddings = embedding_matrix(frame["embedding"])
    prior_vectors, prior_ids = prior_approved(layout, slug, night, aesthetic.embedding_name())
    decisions = quality.decide(
        frame,
        embeddings,
        thresholds,
        aesthetic.near_duplicate_cosine,
        prior_embeddings=prior_vectors,
        prior_ids=prior_ids,
        overrides=overrides,
    )
    for image_id in decisions.unknown_overrides:
        context.log.warning(f"{overrides_path}: {image_id} is not an image of {slug} on {night}; ignored")
    now = datetime.now(UTC)
    frame["approved"] = decisions.approved
    frame["approval_method"] = decisions.approval_method
    frame["rejection_reason"] = decisions.rejection_reason
    frame["decided_by"] = decisions.decided_by
    frame["near_duplicate_of"] = decisions.near_duplicate_of
    frame["approved_at"] = [
        _approved_at(previous_by_id.get(image_id), now) if ok else None
        for image_id, ok in zip(frame["image_id"], frame["approved"])
    ]
    frame["embedding"] = [np.asarray(e, np.float32) if _has_vector(e) else None for e in frame["embedding"]]
    frame = frame[list(SCORE_FRAME_COLUMNS)]

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(scores_path, buffer.getvalue())
    written = catalog.upsert_generated_assets(slug, (catalog_row(r) for r in frame.to_dict("records")))

    summary = quality.group_summary(frame)
    visible = frame.drop(columns=["embedding", "generation_params", "prompt_used"])
    return dg.MaterializeResult(
        metadata={
            "generated": summary["generated"],
            "approved": summary["approved"],
            "rejected": summary["rejected"],
            "approval_rate": summary["approval_rate"] if summary["approval_rate"] is not None else 0.0,
            "scored": scored,
            "reused": reused,
            "unreadable": dg.MetadataValue.json(sorted(unreadable)),
            "failed_in_generation": len(manifest.get("failed") or []),
            "rejection_reasons": dg.MetadataValue.json(summary["rejection_reasons"]),
            "thresholds": dg.MetadataValue.json(thresholds.as_dict()),
            "backends": dg.MetadataValue.json({k: v for k, v in backends.items() if k != "identity_hash"}),
            "manual_overrides": len(overrides) - len(decisions.unknown_overrides),
            "unknown_overrides": dg.MetadataValue.json(decisions.unknown_overrides),
            "catalog_rows": written,
            "scores": markdown_table(_score_rows(visible)),
            "scores_file": dg.MetadataValue.path(str(scores_path)),
        },
        data_version=dg.DataVersion(_decision_hash(frame)),
    )


def _has_vector(value: Any) -> bool:
    return isinstance(value, np.ndarray | list) and len(value) > 0


def embedding_matrix(column: pd.Series) -> np.ndarray:
    """(n, d) from a column of vectors; zeros for images without one (unreadable, never compared)."""
    vectors = [np.asarray(v, dtype=np.float32) for v in column if _has_vector(v)]
    dim = vectors[0].shape[0] if vectors else 0
    return np.stack([np.asarray(v, np.float32) if _has_vector(v) else np.zeros(dim, np.float32) for v in column]) \
        if len(column) else np.empty((0, dim), np.float32)


def _approved_at(previous: Mapping[str, Any] | None, now: datetime) -> datetime:
    """An image approved before keeps its approval time across re-runs."""
    if previous is not None and previous.get("approved") and previous.get("approved_at") is not None:
        stamp = pd.Timestamp(previous["approved_at"])
        if not pd.isna(stamp):
            return (stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp).to_pydatetime()
    return now


def _decision_hash(frame: pd.DataFrame) -> str:
    subset = frame[["image_id", "file_hash", *quality.SCORE_COLUMNS, "approved", "rejection_reason"]].round(6)
    return sha256_bytes(subset.to_json(orient="records").encode())[:16]


def _score_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    def fmt(value: Any, digits: int) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"

    return [
        {
            "image": r["image_id"],
            "aesthetic": fmt(r[quality.AESTHETIC], 2),
            "technical": fmt(r[quality.TECHNICAL], 1),
            "face": fmt(r[quality.FACE_MATCH], 3),
            "composite": fmt(r[quality.COMPOSITE], 3),
            "decision": ("approved" if r["approved"] else r["rejection_reason"]) + (" (manual)" if r["approval_method"] == "manual" else ""),
        }
        for r in frame.to_dict("records")
    ]


def _none_if_nan(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float | np.floating) and np.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def catalog_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A score row as the catalog's generated_assets columns."""
    reason = row["rejection_reason"]
    generated_at = pd.Timestamp(row["generated_at"]) if row.get("generated_at") else None
    if generated_at is not None and generated_at.tzinfo is None:
        generated_at = generated_at.tz_localize(UTC)
    approved_at = pd.Timestamp(row["approved_at"]) if row.get("approved_at") is not None else None
    values = {
        "asset_type": row["asset_type"],
        "file_path": row["file_path"],
        "file_size": _none_if_nan(row["file_size"]),
        "file_hash": row["file_hash"],
        **{column: _none_if_nan(row[column]) for column in quality.SCORE_COLUMNS},
        "approved": bool(row["approved"]),
        "approval_method": row["approval_method"],
        "rejection_reason": None if reason is None else str(reason)[:REASON_MAX_LENGTH],
        "generation_params": json.loads(row["generation_params"]) if row["generation_params"] else None,
        "prompt_used": row["prompt_used"],
        "seed": None if _none_if_nan(row["seed"]) is None else int(row["seed"]),
        "approved_at": None if approved_at is None or pd.isna(approved_at) else approved_at.to_pydatetime(),
    }
    if generated_at is not None and not pd.isna(generated_at):
        values["generated_at"] = generated_at.to_pydatetime()
    return values


# ------------------------------------------------------------------------------ publishing


def publish_file(source: Path, folder: Path, name: str, sha256: str) -> tuple[Path, str]:
    """Place ``source`` (whose content hashes to ``sha256``) in ``folder`` without ever overwriting.

    Tries ``name``, then ``{stem}-{sha256[:16]}{suffix}`` when ``name`` holds other content.
    Returns the path and what happened: ``exists`` (same content already there), ``linked``
    (hard link) or ``copied`` (another file system: copied to a temp name, then linked or renamed).
    """
    stem, suffix = Path(name).stem, Path(name).suffix
    for target in (folder / name, folder / f"{stem}-{sha256[:HASH_NAME_HEX]}{suffix}"):
        if target.exists():
            if sha256_file(target) == sha256:
                return target, "exists"
            continue
        action = _place(source, target)
        if action is not None:
            return target, action
        if sha256_file(target) == sha256:  # someone placed the same file meanwhile
            return target, "exists"
    raise FileExistsError(f"{folder}: both {name} and its hash name hold other content; {source} not published")


def _place(source: Path, target: Path) -> str | None:
    """Hard-link, or copy atomically; None when ``target`` appeared in the meantime."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # atomic, and refuses to replace an existing file
        return "linked"
    except FileExistsError:
        return None
    except OSError:
        pass  # another file system, or no hard links here: copy instead
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            return None
        except OSError:
            if target.exists():
                return None
            os.replace(tmp, target)
        return "copied"
    finally:
        tmp.unlink(missing_ok=True)


def withdraw_file(folder: Path, name: str, sha256: str) -> list[Path]:
    """Remove this image's own copies (same content) from ``folder``; any other file stays."""
    stem, suffix = Path(name).stem, Path(name).suffix
    removed = []
    for target in (folder / name, folder / f"{stem}-{sha256[:HASH_NAME_HEX]}{suffix}"):
        if target.is_file() and sha256_file(target) == sha256:
            target.unlink()
            removed.append(target)
    return removed


def check_scores(scores: pd.DataFrame, manifest_ids: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(scored-once findings, out-of-range findings); all lists empty means both checks pass.

    A missing face score is valid (no face found); other scores may be missing only for an
    image that could not be read.
    """
    counts = Counter(str(i) for i in scores["image_id"])
    once = {
        "missing": sorted(set(manifest_ids) - set(counts)),
        "duplicated": sorted(i for i, n in counts.items() if n > 1),
        "unknown": sorted(set(counts) - set(manifest_ids)),
    }
    unreadable = scores["rejection_reason"] == quality.REASON_UNREADABLE
    out_of_range: dict[str, Any] = {}
    for column, (low, high) in quality.SCORE_RANGES.items():
        values = pd.to_numeric(scores[column], errors="coerce")
        bad = values.notna() & ((values < low) | (values > high))
        if column != quality.FACE_MATCH:
            bad |= values.isna() & ~unreadable
        if bad.any():
            out_of_range[column] = sorted(str(i) for i in scores.loc[bad, "image_id"])
    return once, out_of_range


@dg.asset(
    partitions_def=queen_nights_partitions,
    group_name="quality",
    deps=["image_scores"],
    kinds={"png"},
    check_specs=[
        dg.AssetCheckSpec(
            "approval_rate_at_least_half",
            asset="approved_images",
            description=f"The studio's alert: at least {APPROVAL_ALERT_RATE:.0%} of the queen's images approved.",
        ),
        dg.AssetCheckSpec(
            "every_image_scored_once",
            asset="approved_images",
            blocking=True,
            description="Every image in the generated manifest has exactly one score row.",
        ),
        dg.AssetCheckSpec(
            "scores_in_range",
            asset="approved_images",
            blocking=True,
            description="Aesthetic 1-10, technical 0-100, face 0-1 (or no face), composite 0-1.",
        ),
    ],
    description="Approved images in the queen's asset folders, and every image of the night sorted into "
    "overnight/{night}/approved or rejected, by hard link or copy; nothing is ever overwritten.",
)
def approved_images(
    context: dg.AssetExecutionContext, storage: HydraStorage, catalog: CatalogResource, metrics: MetricsPusher
):
    slug, night = partition_dims(context)
    layout = storage.layout
    scores_path = layout.scores_path(night, slug)
    scores = read_scores(scores_path)
    if scores is None:
        raise dg.Failure(f"{scores_path} is missing or unreadable: materialize image_scores for {slug} on {night} first")
    manifest = read_generated_manifest(layout, night, slug)
    manifest_ids = [str(e["image_id"]) for e in manifest["images"] if isinstance(e, dict) and e.get("image_id")]

    actions: Counter[str] = Counter()
    withdrawn: list[str] = []
    sheets: dict[bool, list[tuple[Image.Image, str]]] = {True: [], False: []}
    per_type: dict[str, Counter[str]] = {}
    for row in scores.to_dict("records"):
        approved = bool(row["approved"])
        per_type.setdefault(row["asset_type"], Counter())["approved" if approved else "rejected"] += 1
        source = layout.root / row["file_path"]
        if row["file_hash"] is None or not source.is_file():
            actions["missing"] += 1
            continue
        if sha256_file(source) != row["file_hash"]:
            context.log.warning(f"{source} changed after it was scored; not published until image_scores runs again")
            actions["changed_since_scoring"] += 1
            continue
        name, sha = source.name, row["file_hash"]
        night_root = layout.overnight(night)
        decided, other = ("approved", "rejected") if approved else ("rejected", "approved")
        _, action = publish_file(source, night_root / decided / slug, name, sha)
        actions[f"night_{action}"] += 1
        withdraw_file(night_root / other / slug, name, sha)
        asset_folder = layout.approved_images(slug, published_folder(row["asset_type"]))
        if approved:
            _, action = publish_file(source, asset_folder, name, sha)
            actions[f"asset_{action}"] += 1
        else:
            withdrawn += [str(p) for p in withdraw_file(asset_folder, name, sha)]
        if len(sheets[approved]) < CONTACT_SHEET_LIMIT and row["rejection_reason"] != quality.REASON_UNREADABLE:
            label = row["asset_type"] if approved else str(row["rejection_reason"])
            sheets[approved].append((Image.fromarray(image_files.load_rgb(source)), label))
    for path in withdrawn:
        context.log.info(f"withdrawn from the published assets (now rejected): {path}")

    counts = {
        asset_type: _count_files(layout.approved_images(slug, published_folder(asset_type)))
        for asset_type in COUNTED_ASSET_TYPES
        if asset_type != "voice_line"
    }
    catalog.set_queen_counts(slug, **counts)

    generated = len(scores)
    approved_count = int(scores["approved"].astype(bool).sum())
    rate = approved_count / generated if generated else 0.0
    once, out_of_range = check_scores(scores, manifest_ids)
    once_ok = not any(once.values())
    dashboard = PipelineMetrics()
    record_partition(dashboard, slug, scores.to_dict("records"), quality.SCORE_RANGES)
    queue = PipelineMetrics()
    queue.set_queue_depth(context.instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])))
    # One series per queen and night for the batch's numbers; the queue is one series for the studio.
    pushed = metrics.push(dashboard, {"queen": slug, "night": night}) & metrics.push(queue, {})
    return dg.MaterializeResult(
        metadata={
            "generated": generated,
            "approved": approved_count,
            "rejected": generated - approved_count,
            "approval_rate": rate,
            "per_type": markdown_table(
                [{"type": t, "approved": c["approved"], "rejected": c["rejected"]} for t, c in sorted(per_type.items())],
                ["type", "approved", "rejected"],
            ),
            "files": dg.MetadataValue.json(dict(sorted(actions.items()))),
            "withdrawn": dg.MetadataValue.json(withdrawn),
            "published_totals": dg.MetadataValue.json(counts),
            "approved_sheet": png_preview(image_files.contact_sheet(sheets[True]), f"{slug} {night} approved"),
            "rejected_sheet": png_preview(image_files.contact_sheet(sheets[False]), f"{slug} {night} rejected"),
            "metrics": dg.MetadataValue.json({**dashboard.samples(), **queue.samples()}),
            "metrics_pushed": pushed,
        },
        data_version=dg.DataVersion(_decision_hash(scores)),
        check_results=[
            dg.AssetCheckResult(
                check_name="approval_rate_at_least_half",
                passed=bool(generated) and rate >= APPROVAL_ALERT_RATE,
                severity=dg.AssetCheckSeverity.WARN,
                description=None if generated and rate >= APPROVAL_ALERT_RATE
                else f"{approved_count} of {generated} images approved ({rate:.0%})",
                metadata={"approval_rate": rate},
            ),
            dg.AssetCheckResult(
                check_name="every_image_scored_once",
                passed=once_ok,
                severity=dg.AssetCheckSeverity.ERROR,
                description=None if once_ok else "; ".join(f"{k}: {', '.join(v)}" for k, v in once.items() if v),
                metadata={k: dg.MetadataValue.json(v) for k, v in once.items()},
            ),
            dg.AssetCheckResult(
                check_name="scores_in_range",
                passed=not out_of_range,
                severity=dg.AssetCheckSeverity.ERROR,
                description=None if not out_of_range
                else "; ".join(f"{k}: {', '.join(v)}" for k, v in out_of_range.items()),
                metadata={"out_of_range": dg.MetadataValue.json(out_of_range)},
            ),
        ],
    )


def _count_files(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


# ------------------------------------------------------------------------------ report


def histogram_png(frame: pd.DataFrame) -> bytes:
    """Approved vs rejected histograms of the three gated scores; small, for the event log."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 2.4), dpi=64, layout="constrained")
    axes = figure.subplots(1, 3)
    approved = frame["approved"].astype(bool)
    for ax, column in zip(axes, (quality.AESTHETIC, quality.TECHNICAL, quality.FACE_MATCH)):
        low, high = quality.SCORE_RANGES[column]
        bins = np.linspace(low, high, 19)
        values = pd.to_numeric(frame[column], errors="coerce")
        ax.hist([values[approved].dropna(), values[~approved].dropna()], bins=bins, stacked=True,
                color=["#3a8f5c", "#c4553b"], label=["approved", "rejected"])
        ax.set_title(column.removesuffix("_score"), fontsize=10)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def report_markdown(night: str, summary: Mapping[str, Mapping[str, Any]]) -> str:
    overall = summary[quality.OVERALL]
    lines = [
        f"# Overnight quality report {night}",
        "",
        f"{overall['generated']} images generated, {overall['approved']} approved, {overall['rejected']} rejected"
        + ("." if overall["approval_rate"] is None else f" (approval rate {overall['approval_rate']:.1%})."),
        "",
        "Scores: mean (p10-p90).",
        "",
        markdown_table(quality.summary_table(summary)).value,
        "",
        "## Score distributions",
        "",
        markdown_table(list(quality.detail_rows(summary))).value,
        "",
    ]
    low = [name for name, g in summary.items()
           if name != quality.OVERALL and g["approval_rate"] is not None and g["approval_rate"] < APPROVAL_ALERT_RATE]
    if low:
        lines += [f"**Alert:** approval rate below {APPROVAL_ALERT_RATE:.0%} for {', '.join(low)}.", ""]
    return "\n".join(lines)


def metrics_rows(summary: Mapping[str, Mapping[str, Any]], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """quality_metrics rows: one per queen and the global one (no queen), daily granularity."""
    rows = []
    for name, group in summary.items():
        rows.append(
            {
                "queen_slug": None if name == quality.OVERALL else name,
                "period_start": start,
                "period_end": end,
                "granularity": "daily",
                "task_type": "all",
                "total_generated": group["generated"],
                "total_approved": group["approved"],
                "total_rejected": group["rejected"],
                "approval_rate": group["approval_rate"],
                "score_distributions": group["scores"],
                "rejection_breakdown": group["rejection_reasons"],
            }
        )
    return rows


@dg.asset(
    partitions_def=nights_partitions,
    group_name="quality",
    deps=[dg.AssetDep("approved_images", partition_mapping=BY_NIGHT)],
    kinds={"markdown"},
    description="The night's quality figures per queen and overall: counts, approval rate, score "
    "distributions and rejection reasons (report.md and the catalog's quality_metrics).",
)
def quality_report(context: dg.AssetExecutionContext, storage: HydraStorage, catalog: CatalogResource):
    night = context.partition_key
    layout = storage.layout
    frames = []
    for path in sorted((layout.overnight(night) / "scores").glob("*.parquet")):
        frame = read_scores(path)
        if frame is not None and len(frame):
            frames.append(frame.drop(columns=["embedding"], errors="ignore"))
    columns = ["queen", "approved", "rejection_reason", *quality.SCORE_COLUMNS]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    summary = quality.quality_summary(frame) if len(frame) else {quality.OVERALL: quality.group_summary(frame)}
    report_path = atomic_write_bytes(layout.report_path(night), report_markdown(night, summary).encode())
    window = context.partition_time_window
    written = catalog.upsert_quality_metrics(metrics_rows(summary, window.start, window.end)) if len(frame) else 0
    overall = summary[quality.OVERALL]
    metadata: dict[str, Any] = {
        "queens": len(summary) - 1,
        "generated": overall["generated"],
        "approved": overall["approved"],
        "rejected": overall["rejected"],
        "approval_rate": overall["approval_rate"] if overall["approval_rate"] is not None else 0.0,
        "rejection_reasons": dg.MetadataValue.json(overall["rejection_reasons"]),
        "table": markdown_table(quality.summary_table(summary)),
        "report": dg.MetadataValue.path(str(report_path)),
        "catalog_rows": written,
    }
    if len(frame):
        metadata["histogram"] = png_preview(histogram_png(frame), f"scores {night}")
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(sha256_bytes(report_path.read_bytes())[:16]))


QUALITY_ASSETS = [image_scores, approved_images, quality_report]
