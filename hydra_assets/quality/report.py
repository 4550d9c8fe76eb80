"""quality_report: one night summed up for the studio, per queen and overall (report.md + quality_metrics)."""

import warnings
from datetime import timedelta
from typing import Any

import dagster as dg
from dagster import AutomationCondition
import pandas as pd

from hydra_assets.domain import quality
from hydra_assets.domain import quality_report as figures
from hydra_assets.domain.charts import histogram_png
from hydra_assets.domain.storage import atomic_write_bytes, sha256_bytes
from hydra_assets.metadata import png_preview, table
from hydra_assets.partition_mappings import BY_NIGHT
from hydra_assets.partitions import nights_partitions
from hydra_assets.settings import SETTINGS
from hydra_assets.quality.inputs import read_scores
from resources.catalog import CatalogResource
from resources.storage import HydraStorage


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


@dg.asset(
    partitions_def=nights_partitions,
    group_name="quality",
    deps=[dg.AssetDep("approved_images", partition_mapping=BY_NIGHT)],
    kinds={"markdown"},
    automation_condition=REPORT_CONDITION,
    freshness_policy=REPORT_FRESHNESS,
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
    summary = figures.quality_summary(frame) if len(frame) else {figures.OVERALL: figures.group_summary(frame)}
    report_path = atomic_write_bytes(layout.report_path(night), figures.report_markdown(night, summary).encode())
    window = context.partition_time_window
    written = catalog.upsert_quality_metrics(figures.metrics_rows(summary, window.start, window.end)) if len(frame) else 0
    overall = summary[figures.OVERALL]
    metadata: dict[str, Any] = {
        "queens": len(summary) - 1,
        "generated": overall["generated"],
        "approved": overall["approved"],
        "rejected": overall["rejected"],
        "approval_rate": overall["approval_rate"] if overall["approval_rate"] is not None else 0.0,
        "rejection_reasons": dg.MetadataValue.json(overall["rejection_reasons"]),
        "table": table(figures.queen_rows(summary), figures.queen_columns()),
        "report": dg.MetadataValue.path(str(report_path)),
        "catalog_rows": written,
    }
    if len(frame):
        metadata["histogram"] = png_preview(histogram_png(frame), f"scores {night}")
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(sha256_bytes(report_path.read_bytes())[:16]))
