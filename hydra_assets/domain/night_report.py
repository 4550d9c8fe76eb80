"""The night's report a person can act on: every queen in the roster, run or not, and what to do next.

One model (:class:`NightReport`) renders two ways: markdown for ``overnight/{night}/report.md``
and rows plus a column schema for the UI's table (plain dicts; the asset wraps them in
``TableRecord`` / ``TableSchema``). It says for each queen of the roster whether she ran and,
if not, why (the caller finds the reasons: no LoRA, run failed, no references, no images);
rates rounded to one decimal (``55.6 %``), medians with p10-p90 beside min/max/mean/std, the
rejected image ids per reason, a ready-to-paste overrides snippet that the overrides parser
accepts, and the thresholds people's overrides suggest (never applied).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml

from hydra_assets.domain.markdown import markdown_table
from hydra_assets.domain.quality import (
    APPROVAL_ALERT_RATE,
    APPROVAL_MANUAL,
    REASON_UNREADABLE,
    Thresholds,
    format_threshold,
)
from hydra_assets.domain.quality_report import OVERALL, group_summary
from hydra_assets.domain.rejections import SCORE_DIGITS, SCORE_LABELS, SCORE_TYPES, reason_detail
from hydra_assets.domain.threshold_suggestions import Reversals, ThresholdSuggestion

NOT_RUN = "not run"
RAN = "run"
REVIEWER_PLACEHOLDER = "your-name"
"""``by`` in the overrides snippet: the parser needs a name, the person pasting puts theirs."""
QUANTILES = ("p10", "p50", "p90")
DISTRIBUTION_ORDER = ("min", "p10", "p50", "p90", "max", "mean", "std")
"""``quality.STATISTICS`` in reading order; p50 is shown as the median."""
SCORE_DISPLAY_DIGITS = {**{SCORE_TYPES[name]: digits for name, digits in SCORE_DIGITS.items()}, "composite_score": 3}


def format_rate(rate: float | None) -> str:
    """0.5555… → ``55.6 %``; None (nothing generated) → ``-``."""
    return "-" if rate is None else f"{rate * 100:.1f} %"


def not_run_reason(
    *,
    roster_error: str | None = None,
    has_references: bool = True,
    references_processed: bool = True,
    has_lora: bool = True,
    failed_run: str | None = None,
    has_images: bool = False,
) -> str | None:
    """Why a queen has no images tonight, every cause that applies, most fundamental first;
    None when she has images and nothing went wrong. ``has_references``: photos in her reference
    folder; ``references_processed``: reference_images accepted some; ``failed_run`` names the run."""
    causes = []
    if roster_error:
        causes.append(f"roster file invalid ({roster_error})")
    if not has_references:
        causes.append("no references")
    elif not references_processed:
        causes.append("references not processed")
    if not has_lora:
        causes.append("no LoRA")
    if failed_run:
        causes.append(f"run failed ({failed_run})")
    if not causes and not has_images:
        causes.append("no images")
    return "; ".join(causes) or None


def overrides_snippet(frame: pd.DataFrame, reviewer: str = REVIEWER_PLACEHOLDER) -> str:
    """YAML for ``overrides/{slug}.yaml`` approving each image the gate rejected, one line each with
    its reason as a comment: keep the lines you mean, put your name in ``by``.

    Images already decided by a person are left out (they are in the file already), and so are
    unreadable ones (there is nothing to publish).
    """
    lines = []
    for row in _rows(frame):
        reason = row.get("rejection_reason")
        if bool(row.get("approved")) or row.get("approval_method") == APPROVAL_MANUAL or reason == REASON_UNREADABLE:
            continue
        detail = reason_detail(row)
        comment = " ".join((f"{reason}" + (f" ({detail})" if detail else "")).split())  # one line, whatever the text
        lines.append((str(reason), str(row["image_id"]), comment))
    return "".join(
        f"{_yaml_scalar(image_id)}: {{decision: approve, by: {_yaml_scalar(reviewer)}}}  # {comment}\n"
        for _, image_id, comment in sorted(lines)
    )


def _yaml_scalar(value: str) -> str:
    """Plain when YAML reads it back as the same string, single-quoted otherwise."""
    if value and yaml.safe_load(value) == value and not any(c in value for c in ":#{}[],&*!|>'\"%@`"):
        return value
    return "'" + value.replace("'", "''") + "'"


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dict("records") if len(frame) else []


@dataclass(frozen=True)
class QueenReport:
    slug: str
    ran: bool
    why: str | None
    """Not run: the reason. Run: a note (e.g. a later run failed), or None."""
    thresholds: Thresholds | None
    summary: dict[str, Any] | None
    """``quality.group_summary`` of her rows; None when she did not run."""
    rejected_ids: dict[str, list[str]] = field(default_factory=dict)
    snippet: str = ""
    links: tuple[tuple[str, str], ...] = ()
    """(label, path relative to report.md): contact sheets, reasons.json."""

    @property
    def status(self) -> str:
        if not self.ran:
            return f"{NOT_RUN}: {self.why or 'unknown'}"
        return RAN if not self.why else f"{RAN} ({self.why})"


@dataclass(frozen=True)
class NightReport:
    night: str
    queens: tuple[QueenReport, ...]
    overall: dict[str, Any]
    suggestions: tuple[ThresholdSuggestion, ...] = ()
    reversals: Mapping[str, Reversals] = field(default_factory=dict)
    overrides_folder: str = "overrides"

    @property
    def low_rate(self) -> list[str]:
        return [q.slug for q in self.queens if q.summary and q.summary["approval_rate"] is not None
                and q.summary["approval_rate"] < APPROVAL_ALERT_RATE]

    # -------------------------------------------------------------------------- table

    def table_columns(self) -> list[dict[str, str]]:
        """Column schema: ``{name, type, description}`` (types as TableColumn takes them)."""
        columns = [
            {"name": "queen", "type": "string", "description": "queen slug, or overall"},
            {"name": "status", "type": "string", "description": "run, or not run: why"},
            {"name": "generated", "type": "int", "description": "images scored"},
            {"name": "approved", "type": "int", "description": "approved, by the gate or a person"},
            {"name": "rejected", "type": "int", "description": "rejected"},
            {"name": "approval_rate_pct", "type": "float", "description": "approved / generated, %, 1 decimal"},
        ]
        for name in SCORE_TYPES:
            for q in QUANTILES:
                columns.append({"name": f"{name}_{q}", "type": "float", "description": f"{SCORE_LABELS[name]} score {q}"})
        columns.append({"name": "rejections", "type": "string", "description": "rejection reason: count"})
        return columns

    def table_rows(self) -> list[dict[str, str | int | float | bool | None]]:
        """One row per queen of the roster (and any other that ran), then ``overall``."""
        rows = [self._table_row(q.slug, q.status, q.summary) for q in self.queens]
        rows.append(self._table_row(OVERALL, "-", self.overall))
        return rows

    @staticmethod
    def _table_row(name: str, status: str, summary: Mapping[str, Any] | None) -> dict[str, Any]:
        row: dict[str, Any] = {"queen": name, "status": status}
        rate = None if summary is None else summary["approval_rate"]
        row.update(
            generated=None if summary is None else summary["generated"],
            approved=None if summary is None else summary["approved"],
            rejected=None if summary is None else summary["rejected"],
            approval_rate_pct=None if rate is None else round(rate * 100, 1),
        )
        for name, column in SCORE_TYPES.items():
            stats = (summary or {}).get("scores", {}).get(column, {})
            for q in QUANTILES:
                value = stats.get(q)
                row[f"{name}_{q}"] = None if value is None else round(value, SCORE_DISPLAY_DIGITS[column])
        reasons = (summary or {}).get("rejection_reasons", {})
        row["rejections"] = ", ".join(f"{k}: {v}" for k, v in reasons.items()) or None
        return row

    # -------------------------------------------------------------------------- markdown

    def markdown(self) -> str:
        overall = self.overall
        ran = [q for q in self.queens if q.ran]
        skipped = [q for q in self.queens if not q.ran]
        lines = [
            f"# Overnight quality report {self.night}",
            "",
            f"{overall['generated']} images generated, {overall['approved']} approved, {overall['rejected']} rejected"
            + ("." if overall["approval_rate"] is None else f" (approval rate {format_rate(overall['approval_rate'])})."),
            f"{len(ran)} of {len(self.queens)} queens ran"
            + (": not run " + ", ".join(f"{q.slug} ({q.why})" for q in skipped) + "." if skipped else "."),
            "",
            "## Queens",
            "",
            "Scores: median (p10-p90).",
            "",
            markdown_table(self._queen_rows()),
            "",
        ]
        if self.low_rate:
            lines += [f"**Alert:** approval rate below {APPROVAL_ALERT_RATE:.0%} for {', '.join(self.low_rate)}.", ""]
        lines += ["## Score distributions", "", markdown_table(self._distribution_rows()), ""]
        lines += self._rejected_section()
        lines += self._overrides_section()
        lines += self._suggestions_section()
        return "\n".join(lines)

    def _queen_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name, status, summary, limits in [
            *((q.slug, q.status, q.summary, q.thresholds) for q in self.queens),
            (OVERALL, "-", self.overall, None),
        ]:
            row: dict[str, Any] = {"queen": name, "status": status}
            if summary is None:
                row.update({k: "-" for k in ("generated", "approved", "rejected")})
            else:
                row.update({k: summary[k] for k in ("generated", "approved", "rejected")})
            row["approval rate"] = format_rate(None if summary is None else summary["approval_rate"])
            for score, column in SCORE_TYPES.items():
                stats = (summary or {}).get("scores", {}).get(column)
                row[SCORE_LABELS[score]] = _median_cell(stats, SCORE_DISPLAY_DIGITS[column])
            row["thresholds (aesthetic / technical / face)"] = "-" if limits is None else " / ".join(format_threshold(v) for v in limits.as_dict().values())
            reasons = (summary or {}).get("rejection_reasons", {})
            row["rejections"] = ", ".join(f"{k}: {v}" for k, v in reasons.items()) or "-"
            rows.append(row)
        return rows

    def _distribution_rows(self) -> list[dict[str, Any]]:
        rows = []
        groups = [*((q.slug, q.summary) for q in self.queens if q.summary), (OVERALL, self.overall)]
        for name, summary in groups:
            for column, stats in summary["scores"].items():
                digits = SCORE_DISPLAY_DIGITS.get(column, 3)
                rows.append({
                    "queen": name,
                    "score": column.removesuffix("_score"),
                    "n": stats["count"],
                    **{("median" if k == "p50" else k): "-" if stats[k] is None else f"{stats[k]:.{digits}f}" for k in DISTRIBUTION_ORDER},
                })
        return rows

    def _rejected_section(self) -> list[str]:
        lines = ["## Rejected images", ""]
        for queen in self.queens:
            if not queen.ran:
                continue
            lines.append(f"### {queen.slug}")
            lines.append("")
            if queen.rejected_ids:
                for reason, ids in queen.rejected_ids.items():
                    lines.append(f"- `{reason}` ({len(ids)}): " + ", ".join(f"`{i}`" for i in ids))
            else:
                lines.append("- none")
            if queen.links:
                lines += ["", "Files: " + " · ".join(f"[{label}]({path})" for label, path in queen.links)]
            lines.append("")
        return lines

    def _overrides_section(self) -> list[str]:
        snippets = [q for q in self.queens if q.snippet]
        if not snippets:
            return []
        lines = [
            "## Overrides",
            "",
            f"To publish an image the gate rejected, paste its line into the queen's "
            f"`{self.overrides_folder}/{{slug}}.yaml` for this night, put your name in `by`, and "
            "materialize `approved_images` again (a `reason:` field is welcome). Delete the lines you do not mean.",
            "",
        ]
        for queen in snippets:
            lines += [f"`{self.overrides_folder}/{queen.slug}.yaml`:", "", "```yaml", queen.snippet.rstrip("\n"), "```", ""]
        return lines

    def _suggestions_section(self) -> list[str]:
        if not self.suggestions and not self.reversals:
            return []
        lines = ["## Learned thresholds (suggestions, never applied)", ""]
        if self.reversals:
            lines += [
                markdown_table([
                    {"queen": r.queen, "manual decisions": r.manual, "reversed": r.reversed,
                     "approved against the gate": r.approved_against_gate,
                     "rejected against the gate": r.rejected_against_gate}
                    for r in self.reversals.values()
                ]),
                "",
            ]
        if self.suggestions:
            lines += [
                "Where one threshold alone decided an image, the cut that agrees best with people "
                "(ties: nearest the current value). Change the roster's `*_threshold` to adopt one.",
                "",
                markdown_table([
                    {"queen": s.queen, "score": s.score, "current": format_threshold(s.current),
                     "suggested": format_threshold(s.suggested) + ("" if s.changed else " (keep)"),
                     "decisions": s.labelled, "reversed": s.reversed,
                     "agree now": s.agree_current, "agree suggested": s.agree_suggested}
                    for s in self.suggestions
                ]),
                "",
            ]
        return lines


def _median_cell(stats: Mapping[str, Any] | None, digits: int) -> str:
    if not stats or not stats.get("count"):
        return "-"
    p10, p50, p90 = (f"{stats[k]:.{digits}f}" for k in QUANTILES)
    return f"{p50} ({p10}-{p90})"



def rejected_ids_by_reason(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Reason → sorted image ids of the rejected rows; reasons sorted."""
    grouped: dict[str, list[str]] = {}
    for row in _rows(frame):
        if not bool(row.get("approved")):
            reason = row.get("rejection_reason")
            grouped.setdefault("unknown" if reason is None or pd.isna(reason) else str(reason), []).append(str(row["image_id"]))
    return {reason: sorted(ids) for reason, ids in sorted(grouped.items())}


REPORT_COLUMNS = ("queen", "image_id", "approved", "approval_method", "rejection_reason", "near_duplicate_of",
                  "decided_by", *SCORE_TYPES.values(), "composite_score")
"""The score-file columns the report reads."""


def build_night_report(
    night: str,
    frame: pd.DataFrame,
    roster: Iterable[str],
    *,
    not_run: Mapping[str, str] | None = None,
    thresholds: Mapping[str, Thresholds] | None = None,
    links: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    suggestions: Iterable[ThresholdSuggestion] = (),
    reversals: Mapping[str, Reversals] | None = None,
    reviewer: str = REVIEWER_PLACEHOLDER,
    overrides_folder: str = "overrides",
) -> NightReport:
    """The report of ``night`` from its score rows (all queens, ``REPORT_COLUMNS``).

    ``roster`` is every queen that should have run; a queen with no rows is ``not run`` with
    ``not_run[slug]`` as the reason (``no images`` when the caller gives none). A queen with rows
    ran; ``not_run[slug]`` then is a note. Queens with rows but no roster file are reported too.
    """
    not_run, thresholds, links = dict(not_run or {}), dict(thresholds or {}), dict(links or {})
    roster = {str(slug) for slug in roster}
    by_queen = {str(k): g for k, g in frame.groupby("queen", sort=True)} if len(frame) else {}
    queens = []
    for slug in sorted(roster | set(by_queen)):
        rows = by_queen.get(slug)
        if rows is None:
            queens.append(QueenReport(slug, False, not_run.get(slug) or "no images", thresholds.get(slug), None))
            continue
        note = not_run.get(slug)
        if slug not in roster:
            note = "; ".join(filter(None, ["not in the roster", note]))
        queens.append(
            QueenReport(
                slug,
                True,
                note,
                thresholds.get(slug),
                group_summary(rows),
                rejected_ids_by_reason(rows),
                overrides_snippet(rows, reviewer),
                tuple(links.get(slug, ())),
            )
        )
    overall = group_summary(frame) if len(frame) else group_summary(pd.DataFrame(columns=list(REPORT_COLUMNS)))
    return NightReport(night, tuple(queens), overall, tuple(suggestions), dict(reversals or {}), overrides_folder)
