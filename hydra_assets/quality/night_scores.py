"""night_scores: the night's GPU work as one step. Every queen's images, scored in batches that cross
queens, each model loaded once for the night; image_scores (per queen × night) then only gates.

Per queen it writes ``overnight/{night}/raw_scores/{slug}.parquet`` (domain/raw_scores.py) and a
line of ``status.json``. A queen whose manifest or identity cannot be read is reported as failed
there and in the check; the others are scored all the same. A re-run scores only images whose
file, backends or identity changed (score_table.REUSE_KEYS), as image_scores does.
"""

import io
from typing import Any

import dagster as dg
from dagster import AutomationCondition

from hydra_assets.domain import raw_scores as raw
from hydra_assets.domain import score_table as table
from hydra_assets.domain.roster import is_valid_slug
from hydra_assets.domain.storage import atomic_write_bytes, atomic_write_json
from hydra_assets.gpu import gpu_asset_kwargs
from hydra_assets.partition_mappings import BY_NIGHT
from hydra_assets.partitions import nights_partitions
from hydra_assets.quality.inputs import read_generated_manifest, read_scores
from hydra_assets.quality.scoring import load_identity, reuse_or_queue, score_rows
from resources.face import FaceBackend
from resources.scoring import AestheticScorer, TechnicalScorer
from resources.storage import HydraStorage

EVERY_QUEEN_CHECK = "every_queen_scored"

QUEENS_GENERATED = AutomationCondition.any_deps_updated().since_last_handled().with_label(
    "a queen's generated_images of the night updated since the night was last scored"
)
GENERATION_RUNNING = AutomationCondition.any_deps_in_progress().with_label(
    "a queen of the night still queued or generating"
)
NIGHT_SCORES_RUNNING = AutomationCondition.in_progress().with_label("the night is already being scored")
NIGHT_SCORES_CONDITION = (QUEENS_GENERATED & ~GENERATION_RUNNING & ~NIGHT_SCORES_RUNNING).with_label(
    "one scoring step per night once its queens are generated"
)
"""As quality_report's: the schedule queues every queen's generation at once, so the night is
scored once after the last of them; a later re-generation of one queen scores the night again,
which redoes only her changed images."""


class NightScoresConfig(dg.Config):
    batch_size: int = 32
    """Images decoded and scored together, across queens; bounds memory, models see whole batches."""
    rescore: bool = False
    """Score every image again even where the raw-score file already holds it with the same keys."""


def _prepare_queen(layout, night: str, slug: str, backends: dict[str, str], log) -> list[dict[str, Any]]:
    """Her rows with the backends' and identity's keys and her identity vector; raises dg.Failure naming the file."""
    if not is_valid_slug(slug):
        raise dg.Failure(f"{layout.generated_dir(night, slug)}: {slug!r} is not a queen slug (lowercase letters, digits, hyphens)")
    manifest = read_generated_manifest(layout, night, slug)
    identity, identity_hash = load_identity(layout, slug)
    rows = table.manifest_rows(manifest, layout, night, slug, log.warning)
    for row in rows:
        row.update(backends, identity_hash=identity_hash, _identity=identity)
    return rows


@dg.asset(
    partitions_def=nights_partitions,
    group_name="quality",
    deps=[dg.AssetDep("generated_images", partition_mapping=BY_NIGHT)],
    kinds={"pytorch", "parquet"},
    automation_condition=NIGHT_SCORES_CONDITION,
    check_specs=[
        dg.AssetCheckSpec(
            EVERY_QUEEN_CHECK,
            asset="night_scores",
            description="Every queen with a generated manifest that night was scored (a failed one: why).",
        )
    ],
    description="Raw aesthetic, technical and face scores and embeddings of every image of the night, all queens "
    "in one step with each model loaded once; image_scores gates each queen from them.",
    **gpu_asset_kwargs("quality-scoring"),
)
def night_scores(
    context: dg.AssetExecutionContext,
    config: NightScoresConfig,
    storage: HydraStorage,
    face: FaceBackend,
    aesthetic: AestheticScorer,
    technical: TechnicalScorer,
):
    night = context.partition_key
    layout = storage.layout
    backends = {
        "aesthetic_backend": aesthetic.backend_name(),
        "technical_backend": technical.backend_name(),
        "face_backend": face.backend_name(),
        "embedding_model": aesthetic.embedding_name(),
    }
    status: dict[str, dict[str, Any]] = {}
    queued: list[dict[str, Any]] = []
    rows_of: dict[str, list[dict[str, Any]]] = {}
    before: dict[str, str | None] = {}
    for slug in raw.night_queens(layout, night, table.MANIFEST_NAME):
        try:
            rows = _prepare_queen(layout, night, slug, backends, context.log)
            previous = read_scores(raw.raw_scores_path(layout, night, slug), raw.RAW_COLUMNS, "night_scores")
            to_score, reused = reuse_or_queue(rows, raw.rows_by_id(previous), config.rescore, context.log)
        except (dg.Failure, OSError, ValueError) as error:  # hers alone: the night goes on
            why = getattr(error, "description", None) or str(error)
            context.log.error(f"{slug} {night}: not scored: {why}")
            status[slug] = {"status": raw.STATUS_FAILED, "error": why}
            continue
        before[slug] = raw.raw_digest(previous)
        rows_of[slug] = rows
        queued += [rows[i] for i in to_score]
        status[slug] = {"status": raw.STATUS_SCORED, "images": len(rows), "reused": reused}

    scored, undecodable = score_rows(queued, config.batch_size, (aesthetic, technical, face), None, context.log)
    bad, queued_ids = set(undecodable), {id(r) for r in queued}
    for slug, rows in rows_of.items():
        frame = raw.raw_frame(rows)
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write_bytes(raw.raw_scores_path(layout, night, slug), buffer.getvalue())
        status[slug].update(
            scored=sum(1 for r in rows if id(r) in queued_ids and r["image_id"] not in bad),
            unreadable=sorted(r["image_id"] for r in rows if r["file_hash"] is None or r["image_id"] in bad),
            changed=raw.raw_digest(frame) != before[slug],
        )
    atomic_write_json(raw.status_path(layout, night), status)

    failed = {slug: s["error"] for slug, s in status.items() if s["status"] == raw.STATUS_FAILED}
    return dg.MaterializeResult(
        metadata={
            "queens": len(status),
            "scored_queens": len(rows_of),
            "failed_queens": dg.MetadataValue.json(failed),
            "images": sum(len(rows) for rows in rows_of.values()),
            "scored": scored,
            "reused": sum(s.get("reused", 0) for s in status.values()),
            "status": dg.MetadataValue.json(status),
            "backends": dg.MetadataValue.json(backends),
            "raw_scores": dg.MetadataValue.path(str(raw.raw_scores_dir(layout, night))),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=EVERY_QUEEN_CHECK,
                passed=not failed,
                severity=dg.AssetCheckSeverity.WARN,
                description=None if not failed else "; ".join(f"{k}: {v}" for k, v in sorted(failed.items())),
                metadata={"failed": dg.MetadataValue.json(failed)},
            )
        ],
    )
