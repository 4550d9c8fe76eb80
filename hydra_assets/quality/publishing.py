"""approved_images: the gate's decisions as files, in the queen's asset folders and the night's folders."""

from collections import Counter
from typing import Any

import dagster as dg
import pandas as pd
from PIL import Image

from hydra_assets.domain import images as image_files
from hydra_assets.domain import quality
from hydra_assets.domain.events import EventType
from hydra_assets.domain.generation import type_folder
from hydra_assets.domain.metrics import PipelineMetrics, record_partition
from hydra_assets.domain.publishing import count_files, publish_file, withdraw_file
from hydra_assets.domain.review_files import write_review_files
from hydra_assets.domain.roster import RosterError
from hydra_assets.domain.score_table import MANIFEST_NAME, decision_hash
from hydra_assets.domain.stage_events import image_decided, night_stats, pipeline
from hydra_assets.domain.storage import StorageLayout, read_json, sha256_file
from hydra_assets.generation_tasks import mark_decided
from hydra_assets.metadata import CONTACT_SHEET_LIMIT, png_preview, table
from hydra_assets.partition_mappings import queen_and_night
from hydra_assets.partitions import queen_nights_partitions
from hydra_assets.quality.inputs import read_scores
from hydra_assets.review.links import partition_review_url
from hydra_assets.settings import SETTINGS
from resources.catalog import COUNTED_ASSET_TYPES, CatalogResource
from resources.events import EventPublisher, EventStream
from resources.metrics import MetricsPusher
from resources.storage import HydraStorage

APPROVAL_RATE_CHECK = "approval_rate_at_least_half"


def _publish_rows(scores: pd.DataFrame, layout: StorageLayout, slug: str, night: str, log) -> dict[str, Any]:
    """Every scored image sorted into the night's approved/rejected folder, approved ones into the queen's."""
    actions: Counter[str] = Counter()
    withdrawn: list[str] = []
    sheets: dict[bool, list[tuple[Image.Image, str]]] = {True: [], False: []}
    per_type: dict[str, Counter[str]] = {}
    rejected_files: dict[str, str] = {}
    night_root = layout.overnight(night)
    for row in scores.to_dict("records"):
        approved = bool(row["approved"])
        per_type.setdefault(row["asset_type"], Counter())["approved" if approved else "rejected"] += 1
        source = layout.root / row["file_path"]
        if row["file_hash"] is None or not source.is_file():
            actions["missing"] += 1
            continue
        if sha256_file(source) != row["file_hash"]:
            log.warning(f"{source} changed after it was scored; not published until image_scores runs again")
            actions["changed_since_scoring"] += 1
            continue
        name, sha = source.name, row["file_hash"]
        decided, other = ("approved", "rejected") if approved else ("rejected", "approved")
        placed, action = publish_file(source, night_root / decided / slug, name, sha)
        actions[f"night_{action}"] += 1
        if not approved:
            rejected_files[str(row["image_id"])] = placed.name
        withdraw_file(night_root / other / slug, name, sha)
        asset_folder = layout.approved_images(slug, type_folder(row["asset_type"]))
        if approved:
            _, action = publish_file(source, asset_folder, name, sha)
            actions[f"asset_{action}"] += 1
        else:
            withdrawn += [str(p) for p in withdraw_file(asset_folder, name, sha)]
        if len(sheets[approved]) < CONTACT_SHEET_LIMIT and row["rejection_reason"] != quality.REASON_UNREADABLE:
            label = row["asset_type"] if approved else str(row["rejection_reason"])
            sheets[approved].append((Image.fromarray(image_files.load_rgb(source)), label))
    for path in withdrawn:
        log.info(f"withdrawn from the published assets (now rejected): {path}")
    return {"actions": actions, "withdrawn": withdrawn, "sheets": sheets, "per_type": per_type,
            "rejected_files": rejected_files}


def _failed_in_generation(layout: StorageLayout, night: str, slug: str, log) -> int:
    """Images the night planned that were never made, for the run's stats; 0 when the manifest cannot be read."""
    path = layout.generated_dir(night, slug) / MANIFEST_NAME
    try:
        return len((read_json(path) or {}).get("failed") or [])
    except (OSError, ValueError, AttributeError) as exc:
        log.warning(f"{path}: unreadable ({exc}); the run's stats count no failed image")
        return 0


def _emit_decisions(stream: EventStream, scores: pd.DataFrame, queen_id: int | None, failed: int) -> None:
    """generation.image.approved|rejected per image, then pipeline.overnight.completed with the run's stats."""
    rows = scores.to_dict("records")
    stream.emit_many(image_decided(row, queen_id=queen_id) for row in rows)
    approved = sum(bool(row["approved"]) for row in rows)
    stats = night_stats(planned=len(rows) + failed, generated=len(rows), failed=failed, approved=approved)
    stream.emit(EventType.OVERNIGHT_COMPLETED, pipeline(stream.correlation_id, "approved_images", "completed", stats))


def _queen_thresholds(storage: HydraStorage, slug: str, log) -> quality.Thresholds | None:
    """For reasons.json; a roster file broken since scoring leaves them out rather than failing the publish."""
    try:
        return quality.Thresholds.from_generation_config(storage.load_queen(slug).generation_config)
    except RosterError as error:
        log.warning(f"reasons.json without thresholds: {error}")
        return None


@dg.asset(
    partitions_def=queen_nights_partitions,
    group_name="quality",
    deps=["image_scores"],  # whose blocking checks stop a bad score table before anything is published
    kinds={"png"},
    check_specs=[
        dg.AssetCheckSpec(
            APPROVAL_RATE_CHECK,
            asset="approved_images",
            description=f"The studio's alert: at least {quality.APPROVAL_ALERT_RATE:.0%} of the queen's images approved.",
        ),
    ],
    description="Approved images in the queen's asset folders, and every image of the night sorted into "
    "overnight/{night}/approved or rejected, by hard link or copy; nothing is ever overwritten. Contact "
    "sheets per decision and type in overnight/{night}/contact_sheets/, and rejected/{queen}/reasons.json.",
)
def approved_images(
    context: dg.AssetExecutionContext,
    storage: HydraStorage,
    catalog: CatalogResource,
    metrics: MetricsPusher,
    events: EventPublisher,
):
    slug, night = queen_and_night(context.partition_key)
    layout = storage.layout
    scores_path = layout.scores_path(night, slug)
    scores = read_scores(scores_path)
    if scores is None:
        raise dg.Failure(f"{scores_path} is missing or unreadable: materialize image_scores for {slug} on {night} first")
    published = _publish_rows(scores, layout, slug, night, context.log)
    review = write_review_files(layout, slug, night, scores, _queen_thresholds(storage, slug, context.log),
                                published["rejected_files"])

    counts = {
        asset_type: count_files(layout.approved_images(slug, type_folder(asset_type)))
        for asset_type in COUNTED_ASSET_TYPES
        if asset_type != "voice_line"
    }
    catalog.set_queen_counts(slug, **counts)
    mark_decided(catalog, context, scores.to_dict("records"))

    generated = len(scores)
    approved_count = int(scores["approved"].astype(bool).sum())
    rate = approved_count / generated if generated else 0.0
    dashboard = PipelineMetrics()
    record_partition(dashboard, slug, scores.to_dict("records"), quality.SCORE_RANGES)
    queue = PipelineMetrics()
    queue.set_queue_depth(context.instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])))
    # One series per queen and night for the batch's numbers; the queue is one series for the studio.
    pushed = metrics.push(dashboard, {"queen": slug, "night": night}) & metrics.push(queue, {})
    stream = events.for_step(context)
    _emit_decisions(stream, scores, catalog.queen_id(slug), _failed_in_generation(layout, night, slug, context.log))
    sheets, per_type = published["sheets"], published["per_type"]
    return dg.MaterializeResult(
        metadata={
            "generated": generated,
            "approved": approved_count,
            "rejected": generated - approved_count,
            "approval_rate": rate,
            "per_type": table(
                [{"type": t, "approved": c["approved"], "rejected": c["rejected"]} for t, c in sorted(per_type.items())],
                {"type": "string", "approved": "int", "rejected": "int"},
            ),
            "files": dg.MetadataValue.json(dict(sorted(published["actions"].items()))),
            "withdrawn": dg.MetadataValue.json(published["withdrawn"]),
            "published_totals": dg.MetadataValue.json(counts),
            "approved_sheet": png_preview(image_files.contact_sheet(sheets[True]), f"{slug} {night} approved"),
            "rejected_sheet": png_preview(image_files.contact_sheet(sheets[False]), f"{slug} {night} rejected"),
            "contact_sheets": dg.MetadataValue.json({label: str(path) for label, path in sorted(review.sheets.items())}),
            "reasons_file": dg.MetadataValue.path(str(review.reasons)),
            "review": dg.MetadataValue.url(partition_review_url(SETTINGS.review_url, night, slug)),
            "metrics": dg.MetadataValue.json({**dashboard.samples(), **queue.samples()}),
            "metrics_pushed": pushed,
            **stream.metadata(),
        },
        data_version=dg.DataVersion(decision_hash(scores)),
        check_results=[
            dg.AssetCheckResult(
                check_name=APPROVAL_RATE_CHECK,
                passed=bool(generated) and rate >= quality.APPROVAL_ALERT_RATE,
                severity=dg.AssetCheckSeverity.WARN,
                description=None if generated and rate >= quality.APPROVAL_ALERT_RATE
                else f"{approved_count} of {generated} images approved ({rate:.0%})",
                metadata={"approval_rate": rate},
            ),
        ],
    )
