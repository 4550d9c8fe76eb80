"""image_scores: every image generated for a queen that night, scored in batches, gated and recorded.

It reads the partition manifest that generated_images writes
(``overnight/{night}/generated/{slug}/manifest.json``), takes each image's model outputs from
night_scores' raw-score file when its reuse keys match (the night's GPU work, done once for all
queens), scores only what is missing with the configured backends, gates them and records the
result (parquet + catalog + embedding store). The near-duplicate gate compares tonight's images
with the queen's approved images of earlier nights as the embedding store finds them. A CPU
step: with night_scores run first it loads no model.
"""

import io
from collections.abc import Sequence
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
from hydra_assets.domain import score_table as table
from hydra_assets.domain.quality_report import group_summary
from hydra_assets.domain.embeddings import EmbeddingStoreError
from hydra_assets.domain.raw_scores import RAW_COLUMNS, raw_scores_path, rows_by_id
from hydra_assets.domain.storage import StorageLayout, atomic_write_bytes, sha256_file
from hydra_assets.embedding_index import store_scored_images
from hydra_assets.failures import load_queen
from hydra_assets.generation_tasks import mark_quality_check
from hydra_assets.metadata import table as ui_table
from hydra_assets.partition_mappings import BY_NIGHT, BY_QUEEN, queen_and_night
from hydra_assets.partitions import queen_nights_partitions
from hydra_assets.domain.damaged_files import DamagedFileError, read_identity_vector
from hydra_assets.quality.inputs import read_generated_manifest, read_scores
from hydra_assets.review.links import partition_review_url
from hydra_assets.settings import SETTINGS
from resources.catalog import CatalogResource
from resources.embeddings import EmbeddingStore
from resources.face import FaceBackend
from resources.scoring import AestheticScorer, TechnicalScorer
from resources.storage import HydraStorage

IDENTITY_FILE = "identity.npz"
SCORED_ONCE_CHECK = "every_image_scored_once"
SCORES_IN_RANGE_CHECK = "scores_in_range"
FACE_ANALYSIS_MAX_SIDE = 768
"""Faces are looked for on a copy at most this long: a portrait's face stays far above the detectors'
minimum (dlib's HOG about 80 px unsampled, InsightFace resizes to 640 anyway) and the embedders
work on small aligned crops, while dlib's upsampled HOG on a 1024 px image costs 4x as much."""


def load_identity(layout: StorageLayout, slug: str) -> tuple[np.ndarray, str]:
    """The queen's mean face vector and the hash of the file it came from."""
    path = layout.identity_dir(slug) / IDENTITY_FILE
    if not path.is_file():
        raise dg.Failure(f"{path} is missing: materialize reference_identity for {slug} (it needs faces in the references)")
    try:
        return read_identity_vector(path, slug), sha256_file(path)
    except DamagedFileError as error:
        raise dg.Failure(str(error), metadata={"file": str(path)}) from error


def prior_approved(layout: StorageLayout, slug: str, night: str, embedding_model: str) -> tuple[np.ndarray | None, list[str]]:
    """Embeddings of the queen's images approved on earlier nights, in the same embedding space, from
    every earlier night's score table: how the gate found them before the embedding store (kept as
    the reference the store's answers are tested and benchmarked against)."""
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
            if table.has_vector(vector):
                vectors.append(np.asarray(vector, dtype=np.float32))
                ids.append(str(image_id))
    return (np.stack(vectors) if vectors else None), ids


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
    identity: np.ndarray | Sequence[np.ndarray],
) -> BatchScores:
    """Every backend once over the whole batch; face match is the face most likely hers against the identity.

    ``identity`` is one queen's vector, or one vector per image for a batch that crosses queens
    (night_scores): the models see the whole batch either way, only the face choice is per image.
    """
    aesthetic_scores, embeddings = aesthetic.score_and_embed(images)
    technical_scores = technical.score(images)
    copies = [face_analysis_copy(image) for image in images]
    per_image = [identity] * len(images) if isinstance(identity, np.ndarray) and identity.ndim == 1 else list(identity)
    faces = face.embed_queen_faces(copies, per_image)
    face_scores = np.array(
        [np.nan if f is None else float(face.similarity(f.embedding, ident)) for f, ident in zip(faces, per_image)]
    )
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


def reuse_or_queue(
    rows: list[dict[str, Any]], previous_by_id: dict[str, dict], rescore: bool, log, raw_by_id: dict[str, dict] | None = None
) -> tuple[list[int], int]:
    """Hash every file; copy the scores of an unchanged row, queue the others. Returns (to score, reused).

    ``raw_by_id``: night_scores' rows for the partition, tried first; an earlier score row second.
    """
    to_score: list[int] = []
    reused = 0
    for index, row in enumerate(rows):
        path: Path = row["_path"]
        if not path.is_file():
            log.warning(f"{row['queen']} {row['night']}: {row['image_id']}: {path} is missing")
            row.update(file_hash=None, file_size=None)
            continue
        row.update(file_hash=sha256_file(path), file_size=path.stat().st_size)
        if row["_manifest_sha256"] and row["_manifest_sha256"] != row["file_hash"]:
            log.warning(f"{row['queen']} {row['night']}: {path} differs from its manifest sha256; scoring the file as it is")
        old = next((o for o in ((raw_by_id or {}).get(row["image_id"]), previous_by_id.get(row["image_id"])) if reusable(o, row)), None)
        if not rescore and old is not None:
            for column in (quality.AESTHETIC, quality.TECHNICAL, quality.FACE_MATCH, "embedding", "face_bbox", "face_det_score"):
                row[column] = old[column]
            reused += 1
        else:
            to_score.append(index)
    return to_score, reused


def reusable(old: dict | None, row: dict[str, Any]) -> bool:
    """An earlier row (score table or raw scores) whose file, backends and identity are the row's, with scores."""
    return (
        old is not None
        and all(old.get(k) == row.get(k) for k in table.REUSE_KEYS)
        and "face_det_score" in old
        and not pd.isna(old[quality.AESTHETIC])
    )


def score_rows(
    rows: list[dict[str, Any]], batch_size: int, backends: tuple, identity: np.ndarray | None, log
) -> tuple[int, list[str]]:
    """Decode and score ``rows`` in batches, in place; returns (scored, ids that could not be decoded).

    ``identity`` None: each row carries its queen's vector under ``_identity`` (a batch across queens)."""
    aesthetic, technical, face = backends
    unreadable, scored = [], 0
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        pixels, loaded = [], []
        for row in batch_rows:
            try:
                pixels.append(image_files.load_rgb(row["_path"]))
                loaded.append(row)
            except Exception as exc:  # Pillow raises many types on a damaged file
                log.warning(f"{row['queen']} {row['night']}: {row['_path']} cannot be decoded: {exc}")
                unreadable.append(row["image_id"])
        if not loaded:
            continue
        identities = identity if identity is not None else [row["_identity"] for row in loaded]
        batch = score_batch(pixels, aesthetic, technical, face, identities)
        for position, row in enumerate(loaded):
            row[quality.AESTHETIC] = float(batch.aesthetic[position])
            row[quality.TECHNICAL] = float(batch.technical[position])
            row[quality.FACE_MATCH] = float(batch.face_match[position])
            row["embedding"] = batch.embeddings[position]
            row["face_bbox"], row["face_det_score"] = batch.face_boxes[position], float(batch.face_det_scores[position])
        scored += len(loaded)
        who = rows[0]["queen"] if identity is not None else "all queens"
        log.info(f"{who} {rows[0]['night']}: scored {start + len(batch_rows)} of {len(rows)} images")
    return scored, unreadable


def _with_decisions(frame: pd.DataFrame, decisions: quality.Decisions, previous_by_id: dict[str, dict]) -> pd.DataFrame:
    """The score table as written: decisions, approval times kept across re-runs, the SPEC's column order."""
    now = datetime.now(UTC)
    frame["approved"] = decisions.approved
    frame["approval_method"] = decisions.approval_method
    frame["rejection_reason"] = decisions.rejection_reason
    frame["decided_by"] = decisions.decided_by
    frame["near_duplicate_of"] = decisions.near_duplicate_of
    frame["approved_at"] = [
        table.approved_at(previous_by_id.get(image_id), now) if ok else None
        for image_id, ok in zip(frame["image_id"], frame["approved"])
    ]
    frame["embedding"] = [np.asarray(e, np.float32) if table.has_vector(e) else None for e in frame["embedding"]]
    return frame[list(table.SCORE_FRAME_COLUMNS)]


@dg.asset(
    partitions_def=queen_nights_partitions,
    group_name="quality",
    deps=[
        dg.AssetDep("generated_images"),
        dg.AssetDep("night_scores", partition_mapping=BY_NIGHT),  # its raw scores, when it ran
        dg.AssetDep("reference_identity", partition_mapping=BY_QUEEN),
    ],
    kinds={"pytorch", "parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            SCORED_ONCE_CHECK,
            asset="image_scores",
            blocking=True,
            description="Every image in the generated manifest has exactly one score row.",
        ),
        dg.AssetCheckSpec(
            SCORES_IN_RANGE_CHECK,
            asset="image_scores",
            blocking=True,
            description="Aesthetic 1-10, technical 0-100, face 0-1 (or no face), composite 0-1.",
        ),
    ],
    description="Aesthetic, technical, face-match and composite scores of every image generated for the queen "
    "that night, and the gate's decision with its first failed reason. Scores come from night_scores' "
    "raw-score file where its keys match; only what it lacks is scored here.",
)
def image_scores(
    context: dg.AssetExecutionContext,
    config: ImageScoresConfig,
    storage: HydraStorage,
    catalog: CatalogResource,
    face: FaceBackend,
    aesthetic: AestheticScorer,
    technical: TechnicalScorer,
    embeddings: EmbeddingStore,
):
    slug, night = queen_and_night(context.partition_key)
    layout = storage.layout
    manifest = read_generated_manifest(layout, night, slug)
    mark_quality_check(catalog, context)
    queen = load_queen(storage, slug)
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

    rows = table.manifest_rows(manifest, layout, night, slug, context.log.warning)
    for row in rows:
        row.update(backends)
    raw_by_id = rows_by_id(read_scores(raw_scores_path(layout, night, slug), RAW_COLUMNS, "night_scores"))  # night_scores' batch, when it ran
    to_score, reused = reuse_or_queue(rows, previous_by_id, config.rescore, context.log, raw_by_id)
    from_night = 0 if config.rescore else sum(reusable(raw_by_id.get(r["image_id"]), r) for r in rows)
    missing = [r["image_id"] for r in rows if r["file_hash"] is None]
    scored, undecodable = score_rows(
        [rows[i] for i in to_score], config.batch_size, (aesthetic, technical, face), identity, context.log
    )

    frame = pd.DataFrame(rows, columns=[c for c in table.SCORE_FRAME_COLUMNS if c != quality.COMPOSITE])
    frame[quality.COMPOSITE] = quality.composite_score(
        frame[quality.AESTHETIC].astype(float), frame[quality.TECHNICAL].astype(float), frame[quality.FACE_MATCH].astype(float)
    )
    tonight = [np.asarray(v, dtype=np.float32) for v in frame["embedding"] if table.has_vector(v)]
    try:
        with embeddings.session() as store:
            prior_vectors, prior_ids = (
                store.nearest_prior_approved(np.stack(tonight), slug, night, aesthetic.embedding_name()) if tonight else (None, [])
            )
            decisions = quality.decide(
                frame,
                table.embedding_matrix(frame["embedding"]),
                thresholds,
                aesthetic.near_duplicate_cosine,
                prior_embeddings=prior_vectors,
                prior_ids=prior_ids,
                overrides=overrides,
            )
            for image_id in decisions.unknown_overrides:
                context.log.warning(f"{overrides_path}: {image_id} is not an image of {slug} on {night}; ignored")
            frame = _with_decisions(frame, decisions, previous_by_id)

            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            atomic_write_bytes(scores_path, buffer.getvalue())
            records = frame.to_dict("records")
            written = catalog.upsert_generated_assets(slug, (table.catalog_row(r) for r in records))
            stored, styles = store_scored_images(
                store, records, slug, queen.name, str(getattr(queen.tier, "value", queen.tier)), datetime.now(UTC).isoformat()
            )
    except EmbeddingStoreError as error:
        raise dg.Failure(description=f"{slug} {night}: {error}", metadata={"embedding_store": embeddings.location}) from error

    summary = group_summary(frame)
    return dg.MaterializeResult(
        metadata={
            "generated": summary["generated"],
            "approved": summary["approved"],
            "rejected": summary["rejected"],
            "approval_rate": summary["approval_rate"] if summary["approval_rate"] is not None else 0.0,
            "scored": scored,
            "reused": reused,
            "from_night_scores": from_night,
            "unreadable": dg.MetadataValue.json(sorted(missing + undecodable)),
            "failed_in_generation": len(manifest.get("failed") or []),
            "rejection_reasons": dg.MetadataValue.json(summary["rejection_reasons"]),
            "thresholds": dg.MetadataValue.json(thresholds.as_dict()),
            "backends": dg.MetadataValue.json({k: v for k, v in backends.items() if k != "identity_hash"}),
            "manual_overrides": len(overrides) - len(decisions.unknown_overrides),
            "unknown_overrides": dg.MetadataValue.json(decisions.unknown_overrides),
            "catalog_rows": written,
            "embedding_store": dg.MetadataValue.json({"images": stored, "style_vectors": styles, "prior_matches": len(prior_ids)}),
            "scores": ui_table(_display_rows(frame), SCORES_TABLE_COLUMNS),
            "scores_file": dg.MetadataValue.path(str(scores_path)),
            "review": dg.MetadataValue.url(partition_review_url(SETTINGS.review_url, night, slug)),
        },
        data_version=dg.DataVersion(table.decision_hash(frame)),
        check_results=score_checks(frame, table.manifest_ids(manifest)),
    )


def score_checks(frame: pd.DataFrame, ids: Sequence[str]) -> list[dg.AssetCheckResult]:
    """Blocking: a table that misses an image or holds an impossible score stops approved_images."""
    once, out_of_range = table.check_scores(frame, ids)
    once_ok = not any(once.values())
    return [
        dg.AssetCheckResult(
            check_name=SCORED_ONCE_CHECK,
            passed=once_ok,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None if once_ok else "; ".join(f"{k}: {', '.join(v)}" for k, v in once.items() if v),
            metadata={k: dg.MetadataValue.json(v) for k, v in once.items()},
        ),
        dg.AssetCheckResult(
            check_name=SCORES_IN_RANGE_CHECK,
            passed=not out_of_range,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None if not out_of_range
            else "; ".join(f"{k}: {', '.join(v)}" for k, v in out_of_range.items()),
            metadata={"out_of_range": dg.MetadataValue.json(out_of_range)},
        ),
    ]


SCORES_TABLE_COLUMNS = {
    "image": "string", "aesthetic": "float", "technical": "float", "face": "float", "composite": "float",
    "decision": "string",
}


def _display_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    def rounded(value: Any, digits: int) -> float | None:
        return None if value is None or pd.isna(value) else round(float(value), digits)

    return [
        {
            "image": r["image_id"],
            "aesthetic": rounded(r[quality.AESTHETIC], 2),
            "technical": rounded(r[quality.TECHNICAL], 1),
            "face": rounded(r[quality.FACE_MATCH], 3),
            "composite": rounded(r[quality.COMPOSITE], 3),
            "decision": table.decision_label(r),
        }
        for r in frame.to_dict("records")
    ]
