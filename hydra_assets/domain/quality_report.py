"""The night's quality figures: per-queen and overall summaries, report.md and the quality_metrics rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from hydra_assets.domain.markdown import markdown_table
from hydra_assets.domain.quality import APPROVAL_ALERT_RATE, SCORE_COLUMNS


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


def summary_table(summary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per group for markdown: counts, rate, and mean / p10 / p90 per score."""
    rows = []
    for name, group in summary.items():
        row: dict[str, Any] = {
            "queen": name,
            "generated": group["generated"],
            "approved": group["approved"],
            "rejected": group["rejected"],
            "approval rate": "-" if group["approval_rate"] is None else f"{group['approval_rate']:.0%}",
        }
        for column, stats in group["scores"].items():
            label = column.removesuffix("_score")
            row[label] = _format_stats(stats)
        row["rejections"] = ", ".join(f"{k}: {v}" for k, v in group["rejection_reasons"].items()) or "-"
        rows.append(row)
    return rows


def _format_stats(stats: Mapping[str, Any]) -> str:
    if not stats.get("count"):
        return "-"
    precision = 1 if (stats["max"] or 0) > 1.0 else 3
    mean, p10, p90 = (f"{stats[k]:.{precision}f}" for k in ("mean", "p10", "p90"))
    return f"{mean} ({p10}-{p90})"


def detail_rows(summary: Mapping[str, Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every statistic of every score, one row per group and score (the report's second table)."""
    for name, group in summary.items():
        for column, stats in group["scores"].items():
            yield {
                "queen": name,
                "score": column.removesuffix("_score"),
                "n": stats["count"],
                **{k: "-" if stats[k] is None else f"{stats[k]:.3f}" for k in STATISTICS},
            }


def low_approval(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Queens whose approval rate is below the studio's alert rate."""
    return [name for name, g in summary.items()
            if name != OVERALL and g["approval_rate"] is not None and g["approval_rate"] < APPROVAL_ALERT_RATE]


def report_markdown(night: str, summary: Mapping[str, Mapping[str, Any]]) -> str:
    overall = summary[OVERALL]
    lines = [
        f"# Overnight quality report {night}",
        "",
        f"{overall['generated']} images generated, {overall['approved']} approved, {overall['rejected']} rejected"
        + ("." if overall["approval_rate"] is None else f" (approval rate {overall['approval_rate']:.1%})."),
        "",
        "Scores: mean (p10-p90).",
        "",
        markdown_table(summary_table(summary)),
        "",
        "## Score distributions",
        "",
        markdown_table(list(detail_rows(summary))),
        "",
    ]
    if low := low_approval(summary):
        lines += [f"**Alert:** approval rate below {APPROVAL_ALERT_RATE:.0%} for {', '.join(low)}.", ""]
    return "\n".join(lines)


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
