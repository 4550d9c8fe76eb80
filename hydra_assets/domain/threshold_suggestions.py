"""Learned thresholds: what people's manual overrides say each queen's gates should be.

A suggestion only; nothing here changes a roster file or a decision.

How it learns
-------------
image_scores records an override as ``approval_method = manual`` with the person's ``approved``;
the row's ``rejection_reason`` then holds the override (``manual: ...``), not the gate's verdict,
so the automatic decision is recomputed here from the scores and the queen's *current*
thresholds (``first_failed_gate``, plus ``near_duplicate_of``, which overrides leave in place).

For one queen and one score type, a manual decision can teach that threshold only when the
threshold alone would have decided the image: every score present (a face found), not a
near-duplicate, and the other two gates passing at the current thresholds. Those are the
*labelled* rows. Automatically such an image is approved exactly when its score >= the
threshold, so ``reversed`` counts the labelled rows where the person decided otherwise.

The suggested threshold is the candidate cut point that agrees with the most labelled rows
(approved when score >= cut). Candidates are the values a person would write in the roster,
a grid over the score's range (aesthetic every 0.1 on 1-10, technical every 1 on 0-100, face
every 0.01 on 0-1), plus the current threshold. Ties break towards the current threshold (the
smallest change that agrees as well), then towards the higher, stricter cut. So the suggestion
equals the current threshold exactly when no candidate agrees with people better.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hydra_assets.domain.quality import APPROVAL_MANUAL, REASON_NEAR_DUPLICATE, Thresholds, first_failed_gate
from hydra_assets.domain.rejections import SCORE_TYPES, number, text


@dataclass(frozen=True)
class Grid:
    low: float
    high: float
    step: float
    digits: int

    def values(self) -> list[float]:
        count = round((self.high - self.low) / self.step)
        return [round(self.low + i * self.step, self.digits) for i in range(count + 1)]


CANDIDATES = {
    "aesthetic": Grid(1.0, 10.0, 0.1, 1),
    "technical": Grid(0.0, 100.0, 1.0, 0),
    "face_match": Grid(0.0, 1.0, 0.01, 2),
}


@dataclass(frozen=True)
class ThresholdSuggestion:
    queen: str
    score: str
    """``aesthetic``, ``technical`` or ``face_match`` (the roster's ``{score}_threshold``)."""
    current: float
    suggested: float
    labelled: int
    """Manual decisions this threshold alone would have decided (see the module docstring)."""
    reversed: int
    """Of those, how many went against the automatic decision at the current threshold."""
    agree_current: int
    agree_suggested: int
    approved_by_people: int
    """Of the labelled rows, how many people approved."""

    @property
    def changed(self) -> bool:
        return self.suggested != self.current

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


@dataclass(frozen=True)
class Reversals:
    """All of a queen's manual decisions against the automatic ones, whatever the gate."""

    queen: str
    manual: int
    reversed: int
    approved_against_gate: int
    """Auto-rejected (any reason, near-duplicates and no face included) but approved by a person."""
    rejected_against_gate: int


def auto_reason(row: Mapping[str, Any], thresholds: Thresholds) -> str | None:
    """What the gate alone decides for ``row`` at ``thresholds``: a reason, or None for approval."""
    scores = {name: number(row.get(column)) for name, column in SCORE_TYPES.items()}
    reason = first_failed_gate(scores["aesthetic"], scores["technical"], scores["face_match"], thresholds)
    if reason is None and text(row.get("near_duplicate_of")):
        return REASON_NEAR_DUPLICATE
    return reason


def _manual_rows(rows: Iterable[Mapping[str, Any]], thresholds: Thresholds | Mapping[str, Thresholds]):
    """(queen, thresholds, row) for every manual row whose queen has thresholds."""
    for row in rows:
        if row.get("approval_method") != APPROVAL_MANUAL:
            continue
        queen = str(row.get("queen") or "")
        limits = thresholds if isinstance(thresholds, Thresholds) else thresholds.get(queen)
        if limits is not None:
            yield queen, limits, row


def reversal_counts(
    rows: Iterable[Mapping[str, Any]], thresholds: Thresholds | Mapping[str, Thresholds]
) -> dict[str, Reversals]:
    """Per queen (sorted): manual decisions, and how many reversed the gate's decision."""
    counts: dict[str, list[int]] = {}
    for queen, limits, row in _manual_rows(rows, thresholds):
        auto_approved = auto_reason(row, limits) is None
        human = bool(row.get("approved"))
        entry = counts.setdefault(queen, [0, 0, 0])
        entry[0] += 1
        entry[1] += human and not auto_approved
        entry[2] += auto_approved and not human
    return {
        queen: Reversals(queen, manual, up + down, up, down)
        for queen, (manual, up, down) in sorted(counts.items())
    }


def best_cut(scores: list[float], approved: list[bool], current: float, candidates: Iterable[float]) -> tuple[float, int]:
    """The cut that agrees with the most decisions (approved when score >= cut); ties as the module says."""
    def agreement(cut: float) -> int:
        return sum((score >= cut) == human for score, human in zip(scores, approved))

    ranked = sorted({*candidates, current}, key=lambda cut: (-agreement(cut), abs(cut - current), -cut))
    return ranked[0], agreement(ranked[0])


def suggest_thresholds(
    rows: Iterable[Mapping[str, Any]], thresholds: Thresholds | Mapping[str, Thresholds]
) -> list[ThresholdSuggestion]:
    """One suggestion per queen and score type that has labelled manual decisions, sorted.

    ``rows`` are image_scores rows (dicts, e.g. ``DataFrame.to_dict("records")``) with ``queen``,
    ``aesthetic_score``, ``technical_score``, ``face_match_score``, ``approved``,
    ``approval_method`` and ``near_duplicate_of``; other keys are ignored. ``thresholds`` is
    one Thresholds for every row, or a mapping queen → Thresholds (queens missing from it are
    left out). Non-manual rows are ignored.
    """
    labelled: dict[tuple[str, str], tuple[Thresholds, list[float], list[bool]]] = {}
    for queen, limits, row in _manual_rows(rows, thresholds):
        scores = {name: number(row.get(column)) for name, column in SCORE_TYPES.items()}
        if any(value is None for value in scores.values()) or text(row.get("near_duplicate_of")):
            continue
        for name in SCORE_TYPES:
            others = {**limits.as_dict(), name: -float("inf")}
            if first_failed_gate(scores["aesthetic"], scores["technical"], scores["face_match"], Thresholds(**others)):
                continue  # another gate rejects it whatever this threshold is
            _, values, decisions = labelled.setdefault((queen, name), (limits, [], []))
            values.append(scores[name])
            decisions.append(bool(row.get("approved")))
    suggestions = []
    for (queen, name), (limits, values, decisions) in sorted(labelled.items()):
        current = limits.as_dict()[name]
        cut, agree = best_cut(values, decisions, current, CANDIDATES[name].values())
        agree_now = sum((v >= current) == d for v, d in zip(values, decisions))
        suggestions.append(
            ThresholdSuggestion(
                queen=queen,
                score=name,
                current=current,
                suggested=cut,
                labelled=len(values),
                reversed=len(values) - agree_now,
                agree_current=agree_now,
                agree_suggested=agree,
                approved_by_people=sum(decisions),
            )
        )
    return suggestions
