"""The night's quality figures: per-queen and overall summaries and the quality_metrics rows.

report.md itself is rendered by domain/night_report.py from these summaries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from hydra_assets.domain.quality import SCORE_COLUMNS

STATISTICS = ("min", "max", "mean", "std", "p10", "p50", "p90")
OVERALL = "overall"


def score_distribution(values: pd.Series) -> dict[str, float | int | None]:
    """min/max/mean/std/p10/p50/p90 of the non-missing values; std is the sample std (ddof=1)."""
    present = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    if present.empty:
        return {"count": 0, **{name: None for name in STATISTICS}}
    stats = {
        "min": present.min(),
        "max": present.max(),
        "mean": present.mean(),
        "std": present.std(ddof=1),
        "p10": present.quantile(0.10),
        "p50": present.quantile(0.50),
        "p90": present.quantile(0.90),
    }
    return {"count": int(present.size), **{k: None if pd.isna(v) else float(v) for k, v in stats.items()}}


def group_summary(frame: pd.DataFrame) -> dict[str, Any]:
    generated = int(len(frame))
    approved = int(frame["approved"].astype(bool).sum()) if generated else 0
    reasons = frame.loc[~frame["approved"].astype(bool), "rejection_reason"].fillna("unknown") if generated else []
    return {
        "generated": generated,
        "approved": approved,
        "rejected": generated - approved,
        "approval_rate": approved / generated if generated else None,
        "scores": {column: score_distribution(frame[column]) for column in SCORE_COLUMNS if column in frame},
        "rejection_reasons": {str(k): int(v) for k, v in pd.Series(reasons).value_counts().sort_index().items()},
    }


def quality_summary(frame: pd.DataFrame, by: str = "queen") -> dict[str, dict[str, Any]]:
    """Per value of ``by`` (sorted) and ``OVERALL`` last."""
    summary = {str(key): group_summary(group) for key, group in frame.groupby(by, sort=True)}
    summary[OVERALL] = group_summary(frame)
    return summary


def metrics_rows(summary: Mapping[str, Mapping[str, Any]], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """quality_metrics rows: one per queen and the global one (no queen), daily granularity."""
    return [
        {
            "queen_slug": None if name == OVERALL else name,
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
        for name, group in summary.items()
    ]
