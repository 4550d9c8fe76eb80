"""quality_report: one night summed up for the studio, every roster queen included (report.md + quality_metrics)."""

import datetime as dt
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AutomationCondition

from hydra_assets.domain import quality
from hydra_assets.domain import quality_report as figures
from hydra_assets.domain.charts import histogram_png
from hydra_assets.domain.events import EventType, PipelineStats
from hydra_assets.domain.night_report import REPORT_COLUMNS, build_night_report, not_run_reason
from hydra_assets.domain.review_files import review_links
from hydra_assets.domain.roster import load_roster, roster_files, slug_for_file
from hydra_assets.domain.stage_events import pipeline
from hydra_assets.domain.storage import StorageLayout, atomic_write_bytes, read_json, sha256_bytes
from hydra_assets.domain.threshold_suggestions import reversal_counts, suggest_thresholds
from hydra_assets.metadata import png_preview, table
from hydra_assets.partition_mappings import BY_NIGHT
from hydra_assets.partitions import nights_partitions, queen_night_key
from hydra_assets.quality.inputs import read_scores
from hydra_assets.run_tags import PARTITION_TAG
from hydra_assets.review.links import night_review_url
from hydra_assets.settings import SETTINGS
from resources.catalog import CatalogResource
from resources.events import EventPublisher
from resources.storage import HydraStorage

LEARNING_NIGHTS = 30
"""Manual decisions of this many nights (up to the report's) teach the threshold suggestions."""
LEARNING_COLUMNS = ["queen", "approved", "approval_method", "near_duplicate_of", *quality.SCORE_COLUMNS]

OVERNIGHT_START_HOUR = 22
"""The overnight schedule's hour (sensors/overnight.py builds its cron from it): no report exists before it."""
REPORT_DEADLINE_HOUR = 7
"""The studio reads the night's report in the morning: it is due by this hour (studio timezone)."""

QUEENS_PUBLISHED = AutomationCondition.any_deps_updated().since_last_handled().with_label(
    "a queen's approved_images of the night updated since the last report"
)
QUEENS_STILL_RUNNING = AutomationCondition.any_deps_in_progress().with_label(
    "a queen of the night still queued or running"
)
REPORT_RUNNING = AutomationCondition.in_progress().with_label("the report is already running")
REPORT_CONDITION = (QUEENS_PUBLISHED & ~QUEENS_STILL_RUNNING & ~REPORT_RUNNING).with_label(
    "one report per night once its queens are done"
)
"""Not eager(): eager() also fires when a night's partition appears (an empty report at midnight),
waits for every queen partition to exist (a queen without a LoRA would block the night forever)
and looks only at the latest night (runs finish after midnight, and a morning override re-runs
an older night). Queued overnight runs count as in progress, so a night of N queens gets one
report after the last of them, and a later re-run of one queen refreshes it once."""

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)  # freshness policies are a preview in 1.13
    REPORT_FRESHNESS = dg.FreshnessPolicy.cron(
        deadline_cron=f"0 {REPORT_DEADLINE_HOUR} * * *",
        lower_bound_delta=timedelta(hours=(REPORT_DEADLINE_HOUR - OVERNIGHT_START_HOUR) % 24),
        timezone=SETTINGS.timezone,
    )
"""The night's report is materialized between the overnight start and the morning deadline."""


def _night_frame(layout: StorageLayout, night: str) -> pd.DataFrame:
    frames = []
    for path in sorted((layout.overnight(night) / "scores").glob("*.parquet")):
        frame = read_scores(path)
        if frame is not None and len(frame):
            frames.append(frame.drop(columns=["embedding"], errors="ignore"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*REPORT_COLUMNS, "asset_type"])


def _has_photos(layout: StorageLayout, slug: str) -> bool:
    folder = layout.reference_sources(slug)
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def _references_processed(layout: StorageLayout, slug: str) -> bool:
    """reference_images has accepted some of her photos."""
    try:
        manifest = read_json(layout.reference_manifest(slug))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and bool(manifest.get("accepted_count"))


def _failed_run(instance: dg.DagsterInstance, slug: str, night: str) -> str | None:
    """The partition's latest run, when it failed: ``run 1a2b3c4d``."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: str(queen_night_key(slug, night))}), limit=1)
    if runs and runs[0].status == dg.DagsterRunStatus.FAILURE:
        return f"run {runs[0].run_id[:8]}"
    return None


def _learning_rows(layout: StorageLayout, night: str, log) -> list[dict[str, Any]]:
    """Manual decisions of the last LEARNING_NIGHTS nights up to ``night`` (only the columns they need)."""
    last = dt.date.fromisoformat(night)
    rows: list[dict[str, Any]] = []
    for path in sorted(layout.root.glob("overnight/*/scores/*.parquet")):
        try:
            age = (last - dt.date.fromisoformat(path.parent.parent.name)).days
        except ValueError:
            continue
        if not 0 <= age < LEARNING_NIGHTS:
            continue
        try:
            frame = pd.read_parquet(path, columns=LEARNING_COLUMNS)
        except (OSError, ValueError, KeyError) as exc:
            log.warning(f"{path} left out of the threshold suggestions: {exc}")
            continue
        rows += frame[frame["approval_method"] == quality.APPROVAL_MANUAL].to_dict("records")
    return rows


@dg.asset(
    partitions_def=nights_partitions,
    group_name="quality",
    deps=[dg.AssetDep("approved_images", partition_mapping=BY_NIGHT)],
    kinds={"markdown"},
    automation_condition=REPORT_CONDITION,
    freshness_policy=REPORT_FRESHNESS,
    description="The night's quality figures for every queen of the roster (not run: why), overall, rejected "
    "image ids per reason, an overrides snippet and learned-threshold suggestions (report.md, quality_metrics).",
)
def quality_report(
    context: dg.AssetExecutionContext, storage: HydraStorage, catalog: CatalogResource, events: EventPublisher
):
    night = context.partition_key
    layout = storage.layout
    frame = _night_frame(layout, night)
    summary = figures.quality_summary(frame) if len(frame) else {figures.OVERALL: figures.group_summary(frame)}

    roster = load_roster(Path(storage.roster_dir))
    slugs = sorted({slug_for_file(p) for p in roster_files(Path(storage.roster_dir))})
    errors = {slug_for_file(e.path): f"{e.field}: {e.rule}" for e in roster.errors}
    thresholds = {slug: quality.Thresholds.from_generation_config(q.generation_config) for slug, q in roster.queens.items()}
    ran = set(frame["queen"].astype(str)) if len(frame) else set()
    not_run: dict[str, str] = {}
    links: dict[str, list[tuple[str, str]]] = {}
    failed_runs = 0
    for slug in sorted(set(slugs) | ran):
        failed = _failed_run(context.instance, slug, night)
        failed_runs += failed is not None
        if slug in ran:
            types = frame.loc[frame["queen"] == slug, "asset_type"].astype(str).tolist()
            links[slug] = review_links(layout, night, slug, types)
            reason = not_run_reason(failed_run=failed, has_images=True)
        else:
            reason = not_run_reason(
                roster_error=errors.get(slug),
                has_references=_has_photos(layout, slug),
                references_processed=_references_processed(layout, slug),
                has_lora=layout.lora_info_path(slug).is_file() or layout.lora_path(slug).is_file(),
                failed_run=failed,
            )
        if reason:
            not_run[slug] = reason
    learning = _learning_rows(layout, night, context.log)
    report = build_night_report(
        night,
        frame,
        slugs,
        not_run=not_run,
        thresholds=thresholds,
        links=links,
        suggestions=suggest_thresholds(learning, thresholds),
        reversals=reversal_counts(learning, thresholds),
    )
    report_path = atomic_write_bytes(layout.report_path(night), report.markdown().encode())
    window = context.partition_time_window
    written = catalog.upsert_quality_metrics(figures.metrics_rows(summary, window.start, window.end)) if len(frame) else 0
    overall = summary[figures.OVERALL]
    stream = events.for_step(context)
    # The night's tasks are its queens: the ones that ran, and the ones whose run failed.
    stats = PipelineStats(
        total_tasks=len(set(slugs) | ran), completed_tasks=len(ran), failed_tasks=failed_runs,
        total_generated=overall["generated"], total_approved=overall["approved"],
    )
    stream.emit(EventType.REPORT_GENERATED, pipeline(stream.correlation_id, "quality_report", "completed", stats))
    metadata: dict[str, Any] = {
        "queens": len(summary) - 1,
        "roster_queens": len(slugs),
        "not_run": dg.MetadataValue.json({q.slug: q.why for q in report.queens if not q.ran}),
        "generated": overall["generated"],
        "approved": overall["approved"],
        "rejected": overall["rejected"],
        "approval_rate": overall["approval_rate"] if overall["approval_rate"] is not None else 0.0,
        "rejection_reasons": dg.MetadataValue.json(overall["rejection_reasons"]),
        "table": table(
            report.table_rows(),
            {c["name"]: c["type"] for c in report.table_columns()},
            {c["name"]: c["description"] for c in report.table_columns()},
        ),
        "threshold_suggestions": dg.MetadataValue.json([s.to_dict() for s in report.suggestions]),
        "report": dg.MetadataValue.path(str(report_path)),
        "review": dg.MetadataValue.url(night_review_url(SETTINGS.review_url, night)),
        "catalog_rows": written,
        **stream.metadata(),
    }
    if len(frame):
        metadata["histogram"] = png_preview(histogram_png(frame), f"scores {night}")
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(sha256_bytes(report_path.read_bytes())[:16]))
