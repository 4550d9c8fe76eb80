"""quality_report: one night summed up for the studio, per queen and overall (report.md + quality_metrics)."""

from typing import Any

import dagster as dg
import pandas as pd

from hydra_assets.domain import quality
from hydra_assets.domain import quality_report as figures
from hydra_assets.domain.charts import histogram_png
from hydra_assets.domain.storage import atomic_write_bytes, sha256_bytes
from hydra_assets.metadata import markdown_table, png_preview
from hydra_assets.partition_mappings import BY_NIGHT
from hydra_assets.partitions import nights_partitions
from hydra_assets.quality.inputs import read_scores
from resources.catalog import CatalogResource
from resources.storage import HydraStorage


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
        "table": markdown_table(figures.summary_table(summary)),
        "report": dg.MetadataValue.path(str(report_path)),
        "catalog_rows": written,
    }
    if len(frame):
        metadata["histogram"] = png_preview(histogram_png(frame), f"scores {night}")
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(sha256_bytes(report_path.read_bytes())[:16]))
