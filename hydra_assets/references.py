"""reference_images and reference_identity: the photos a queen's LoRA and face gate stand on."""


import io
from pathlib import Path

import dagster as dg
import numpy as np
from PIL import Image

from hydra_assets.domain import images
from hydra_assets.domain.identity import summarize_identity
from hydra_assets.domain.storage import atomic_write_bytes, atomic_write_json, read_json
from hydra_assets.metadata import CONTACT_SHEET_LIMIT, png_preview, table
from hydra_assets.partitions import queens_partitions
from resources.catalog import CatalogResource
from resources.face import FaceBackend
from resources.storage import HydraStorage


class ReferenceImagesConfig(dg.Config):
    min_short_side: int = images.DEFAULT_MIN_SHORT_SIDE
    max_pixels: int = images.DEFAULT_MAX_PIXELS


class ReferenceIdentityConfig(dg.Config):
    min_faces: int = 3
    """References with a detected face needed before anything is trained or gated on them."""


@dg.asset(
    partitions_def=queens_partitions,
    group_name="references",
    deps=["queen_profile"],
    kinds={"pillow", "png"},
    description="The queen's reference photos, checked and normalized to RGB PNG, with a manifest of every file.",
)
def reference_images(context: dg.AssetExecutionContext, config: ReferenceImagesConfig, storage: HydraStorage):
    slug = context.partition_key
    layout = storage.layout
    manifest = images.process_reference_folder(
        layout.reference_sources(slug),
        layout.normalized_references(slug),
        min_short_side=config.min_short_side,
        max_pixels=config.max_pixels,
    )
    rejected = [entry for entry in manifest.entries if entry.status == images.STATUS_REJECTED]
    for entry in rejected:
        context.log.warning(f"{slug}: rejected {entry.source}: {entry.reason}")
    accepted = manifest.accepted
    sheet = images.contact_sheet(
        [
            (Image.open(layout.normalized_references(slug) / entry.normalized), Path(entry.source).name)
            for entry in accepted[:CONTACT_SHEET_LIMIT]
        ]
    )
    return dg.MaterializeResult(
        metadata={
            "accepted": len(accepted),
            "rejected": len(rejected),
            "per_category": dg.MetadataValue.json(manifest.accepted_by_category),
            "rejections": table([{"file": e.source, "reason": e.reason} for e in rejected], {"file": "string", "reason": "string"}),
            "stale": dg.MetadataValue.json(list(manifest.stale)),
            "reference_set_hash": manifest.reference_set_hash,
            "manifest": dg.MetadataValue.path(str(layout.reference_manifest(slug))),
            "contact_sheet": png_preview(sheet, f"{slug} references"),
        },
        data_version=dg.DataVersion(manifest.reference_set_hash[:16]),
    )


@dg.asset(
    partitions_def=queens_partitions,
    group_name="references",
    deps=["reference_images"],
    kinds={"numpy"},
    check_specs=[
        dg.AssetCheckSpec(
            "enough_reference_faces",
            asset="reference_identity",
            blocking=True,
            description="Enough references show a face for training and the face gate to mean something.",
        )
    ],
    description="One mean face vector for the queen from her accepted references, and how well they agree.",
)
def reference_identity(
    context: dg.AssetExecutionContext,
    config: ReferenceIdentityConfig,
    storage: HydraStorage,
    face: FaceBackend,
    catalog: CatalogResource,
):
    slug = context.partition_key
    layout = storage.layout
    manifest = read_json(layout.reference_manifest(slug))
    if manifest is None:
        raise dg.Failure(f"{layout.reference_manifest(slug)} is missing: materialize reference_images for {slug} first")
    accepted = [e for e in manifest["entries"] if e["status"] == images.STATUS_ACCEPTED]
    names = [e["source"] for e in accepted]
    pixels = [images.load_rgb(layout.normalized_references(slug) / e["normalized"]) for e in accepted]
    faces = face.embed_largest_faces(pixels)
    summary = summarize_identity(
        names, [f.embedding if f else None for f in faces], face.similarity, face.match_threshold
    )
    for name in summary.no_face:
        context.log.warning(f"{slug}: no face found in {name}")
    for name in summary.off_identity:
        context.log.warning(f"{slug}: {name} looks like someone else ({summary.similarity_to_mean[name]:.3f})")

    out = layout.identity_dir(slug)
    document = {
        **summary.to_json(),
        "backend": face.backend_name(),
        "match_threshold": face.match_threshold,
        "reference_set_hash": manifest["reference_set_hash"],
    }
    if summary.mean_embedding is not None:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=summary.mean_embedding,
            embeddings=np.stack([f.embedding for f in faces if f is not None]),
            names=np.array(summary.with_face),
        )
        atomic_write_bytes(out / "identity.npz", buffer.getvalue())
    atomic_write_json(out / "identity.json", document)

    passed = len(summary.with_face) >= config.min_faces
    if passed:
        catalog.set_queen_status(slug, "reference_ready")
    return dg.MaterializeResult(
        metadata={
            "faces": len(summary.with_face),
            "no_face": dg.MetadataValue.json(summary.no_face),
            "off_identity": dg.MetadataValue.json(summary.off_identity),
            "spread": summary.spread,
            "backend": face.backend_name(),
            "similarity_to_mean": table(
                [{"reference": k, "similarity": round(v, 3)} for k, v in summary.similarity_to_mean.items()],
                {"reference": "string", "similarity": "float"},
            ),
            "identity": dg.MetadataValue.path(str(out / "identity.json")),
        },
        data_version=dg.DataVersion(f"{manifest['reference_set_hash'][:16]}-{face.backend_name()}"),
        check_results=[
            dg.AssetCheckResult(
                check_name="enough_reference_faces",
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=None
                if passed
                else f"{len(summary.with_face)} references with a face, {config.min_faces} needed",
                metadata={"faces": len(summary.with_face), "required": config.min_faces},
            )
        ],
    )
