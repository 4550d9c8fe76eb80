"""Learned thresholds: which manual overrides teach which threshold, and the cut that agrees best."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hydra_assets.domain import quality
from hydra_assets.domain.overrides import Override
from hydra_assets.domain.quality import Thresholds
from hydra_assets.domain.threshold_suggestions import (
    CANDIDATES,
    auto_reason,
    best_cut,
    reversal_counts,
    suggest_thresholds,
)

DEFAULT = Thresholds(6.5, 70.0, 0.7)


def row(face=0.9, technical=85.0, aesthetic=7.2, approved=True, method="manual", queen="q", duplicate=None):
    return {"queen": queen, "aesthetic_score": aesthetic, "technical_score": technical, "face_match_score": face,
            "approved": approved, "approval_method": method, "near_duplicate_of": duplicate}


def by_score(suggestions):
    return {(s.queen, s.score): s for s in suggestions}


@pytest.mark.parametrize(
    ("rows", "score", "expected"),
    [
        # people approved three faces the gate rejected: the highest cut that approves them all
        ([row(face=0.56), row(face=0.60), row(face=0.65)], "face_match", (0.56, 3, 3, 0, 3)),
        # approvals at 0.62/0.65, a rejection at 0.58: any cut in (0.58, 0.62] agrees; nearest to 0.7 wins
        ([row(face=0.62), row(face=0.65), row(face=0.58, approved=False)], "face_match", (0.62, 3, 2, 1, 3)),
        # people agreed with the gate: keep the threshold (approve 0.8, reject 0.6)
        ([row(face=0.8), row(face=0.6, approved=False)], "face_match", (0.7, 2, 0, 2, 2)),
        # a score exactly at the threshold passes (the gate is ">="): approving it is no reversal
        ([row(face=0.7)], "face_match", (0.7, 1, 0, 1, 1)),
        # people rejected images the gate approved: raise the cut just above the best rejected one
        ([row(technical=75.0, approved=False), row(technical=78.0, approved=False), row(technical=90.0)],
         "technical", (79.0, 3, 2, 1, 3)),
        # no cut separates them: 6.4 and 6.0 both agree with 2 of 3; 6.4 is nearer the current 6.5
        ([row(aesthetic=6.0), row(aesthetic=6.2, approved=False), row(aesthetic=6.4)], "aesthetic", (6.4, 3, 2, 1, 2)),
    ],
)
def test_the_suggestion_is_the_cut_that_agrees_best(rows, score, expected):
    suggestion = by_score(suggest_thresholds(rows, DEFAULT))[("q", score)]
    assert (suggestion.suggested, suggestion.labelled, suggestion.reversed, suggestion.agree_current,
            suggestion.agree_suggested) == expected
    assert suggestion.changed == (suggestion.suggested != suggestion.current)
    assert suggestion.to_dict()["changed"] == suggestion.changed


def test_equal_agreement_at_equal_distance_breaks_towards_the_stricter_cut():
    # reject 30, approve 40, reject 60, approve 70: cuts in (30, 40] and (60, 70] agree with 3 of 4;
    # from 50.5 the nearest of each are 40 and 61, both 10.5 away: the higher one is chosen
    rows = [row(technical=30, approved=False), row(technical=40), row(technical=60, approved=False), row(technical=70)]
    suggestion = by_score(suggest_thresholds(rows, Thresholds(6.5, 50.5, 0.7)))[("q", "technical")]
    assert (suggestion.suggested, suggestion.agree_suggested, suggestion.agree_current) == (61.0, 3, 2)
    assert best_cut([30, 40, 60, 70], [False, True, False, True], 50.5, CANDIDATES["technical"].values()) == (61.0, 3)


def test_only_rows_this_threshold_alone_decided_teach_it():
    rows = [
        row(technical=50.0, face=0.9),  # technical fails, face and aesthetic pass: teaches technical only
        row(technical=50.0, face=0.6),  # two gates fail: teaches neither
        row(face=math.nan),  # no face: the gate rejects whatever the thresholds
        row(face=0.6, duplicate="q-0"),  # a near-duplicate: about duplicates, not scores
        row(face=0.6, method="auto", approved=False),  # no person decided
        row(face=None, technical=None, aesthetic=None),  # unreadable
    ]
    suggestions = by_score(suggest_thresholds(rows, DEFAULT))
    assert list(suggestions) == [("q", "technical")]
    assert (suggestions[("q", "technical")].labelled, suggestions[("q", "technical")].suggested) == (1, 50.0)


def test_per_queen_thresholds_and_queens_without_them_are_left_out():
    rows = [row(queen="a", face=0.5), row(queen="b", face=0.5), row(queen="c", face=0.5)]
    limits = {"a": Thresholds(6.5, 70.0, 0.7), "b": Thresholds(6.5, 70.0, 0.4)}
    suggestions = by_score(suggest_thresholds(rows, limits))
    # a's face fails her gate, so her image teaches only her face threshold; b's passes all three
    assert set(suggestions) == {("a", "face_match"), ("b", "face_match"), ("b", "technical"), ("b", "aesthetic")}
    assert (suggestions[("a", "face_match")].suggested, suggestions[("a", "face_match")].reversed) == (0.5, 1)
    assert (suggestions[("b", "face_match")].suggested, suggestions[("b", "face_match")].reversed) == (0.4, 0)
    assert suggest_thresholds([], DEFAULT) == []
    assert suggest_thresholds([row(method="auto")], DEFAULT) == []


def test_candidates_are_values_a_person_writes():
    assert CANDIDATES["face_match"].values()[:3] == [0.0, 0.01, 0.02] and CANDIDATES["face_match"].values()[-1] == 1.0
    assert len(CANDIDATES["technical"].values()) == 101 and len(CANDIDATES["aesthetic"].values()) == 91
    assert 0.3 in CANDIDATES["face_match"].values(), "no 0.30000000000000004"


def test_reversals_count_every_gate_including_duplicates_and_missing_faces():
    rows = [row(face=0.5), row(face=math.nan), row(duplicate="q-0"), row(approved=False), row(face=0.5, approved=False),
            row(method="auto")]
    [counts] = reversal_counts(rows, DEFAULT).values()
    assert (counts.queen, counts.manual, counts.reversed, counts.approved_against_gate, counts.rejected_against_gate) == (
        "q", 5, 4, 3, 1)
    assert auto_reason(row(duplicate="q-0"), DEFAULT) == "near_duplicate"
    assert auto_reason(row(face=np.nan), DEFAULT) == "no_face"
    assert auto_reason(row(), DEFAULT) is None


def test_rows_as_image_scores_records_manual_overrides():
    """decide() with overrides, recorded as image_scores writes the parquet, read back as dicts."""
    scores = pd.DataFrame({
        "image_id": ["q-a", "q-b", "q-c", "q-d"],
        quality.AESTHETIC: [7.0, 7.0, 7.0, 7.0],
        quality.TECHNICAL: [80.0, 80.0, 80.0, 80.0],
        quality.FACE_MATCH: [0.56, 0.62, 0.9, 0.66],
    })
    scores[quality.COMPOSITE] = quality.composite_score(scores[quality.AESTHETIC], scores[quality.TECHNICAL],
                                                        scores[quality.FACE_MATCH])
    embeddings = np.eye(4, dtype=np.float32)  # nobody is anybody's duplicate
    overrides = {"q-a": Override("q-a", "approve", "maria", "same person, badge on the jacket"),
                 "q-b": Override("q-b", "approve", "maria"), "q-c": Override("q-c", "reject", "li", "wrong outfit")}
    decisions = quality.decide(scores, embeddings, DEFAULT, 0.95, overrides=overrides)
    scores["queen"] = "q"
    scores["approved"] = decisions.approved
    scores["approval_method"] = decisions.approval_method
    scores["rejection_reason"] = decisions.rejection_reason
    scores["near_duplicate_of"] = decisions.near_duplicate_of
    records = scores.to_dict("records")
    assert records[0]["rejection_reason"] is None, "the override replaced the gate's reason: it must be recomputed"

    suggestions = by_score(suggest_thresholds(records, DEFAULT))
    face = suggestions[("q", "face_match")]
    # q-a, q-b approved below 0.7 and q-c rejected at 0.9: three reversals; q-d (gate only) is not labelled
    assert (face.labelled, face.reversed, face.suggested, face.agree_suggested) == (3, 3, 0.56, 2)
    # li rejected q-c whatever its scores: raising technical or aesthetic above it would agree
    assert suggestions[("q", "technical")].suggested == 81.0 and suggestions[("q", "aesthetic")].suggested == 7.1
    assert reversal_counts(records, DEFAULT)["q"].reversed == 3
