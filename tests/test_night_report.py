"""The night report: every roster queen, rounded rates, medians, rejected ids, a snippet that parses."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from hydra_assets.domain.night_report import (
    build_night_report,
    format_rate,
    not_run_reason,
    overrides_snippet,
    rejected_ids_by_reason,
)
from hydra_assets.domain.overrides import parse_overrides
from hydra_assets.domain.quality import Thresholds
from hydra_assets.domain.threshold_suggestions import reversal_counts, suggest_thresholds

NIGHT = "2026-11-20"
DEFAULT = Thresholds(6.5, 70.0, 0.7)


def image(queen, n, approved, reason=None, face=0.9, technical=85.0, aesthetic=7.0, method="auto", duplicate=None):
    return {"queen": queen, "image_id": f"{queen}-{NIGHT}-portrait-{n:03d}", "approved": approved,
            "approval_method": method, "rejection_reason": reason, "near_duplicate_of": duplicate,
            "decided_by": "maria" if method == "manual" else None, "aesthetic_score": aesthetic,
            "technical_score": technical, "face_match_score": face,
            "composite_score": 0.4 * (0 if math.isnan(face) else face) + 0.3 * (aesthetic - 1) / 9 + 0.3 * technical / 100}


def night_frame() -> pd.DataFrame:
    """nova: 9 images, 5 approved (55.6 %); technical splits into 0 and 100 so the mean (44) says little."""
    rows = [image("nova", i, True, technical=100.0) for i in range(4)]
    rows += [image("nova", 4, True, technical=100.0, method="manual", face=0.56)]
    rows += [image("nova", 5, False, "technical<70", technical=0.0), image("nova", 6, False, "technical<70", technical=0.0),
             image("nova", 7, False, "face<0.7", face=0.56, technical=0.0), image("nova", 8, False, "no_face", face=math.nan, technical=0.0),
             ]
    rows += [image("ada", 0, False, "unreadable", face=math.nan, technical=math.nan, aesthetic=math.nan),
             image("ada", 1, False, "near_duplicate", duplicate="ada-x"), image("ada", 2, False, "manual: wrong outfit", method="manual")]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("rate", "text"),
    [(5 / 9, "55.6 %"), (2 / 9, "22.2 %"), (1.0, "100.0 %"), (0.0, "0.0 %"), (0.9996, "100.0 %"), (None, "-")],
)
def test_rates_are_rounded_to_one_decimal(rate, text):
    assert format_rate(rate) == text


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"has_lora": False}, "no LoRA"),
        ({"has_references": False, "has_lora": False}, "no references; no LoRA"),
        ({"references_processed": False}, "references not processed"),
        ({"has_references": False, "references_processed": False}, "no references"),
        ({"failed_run": "run 1a2b3c: generated_images failed"}, "run failed (run 1a2b3c: generated_images failed)"),
        ({"has_lora": False, "failed_run": "run 9"}, "no LoRA; run failed (run 9)"),
        ({"roster_error": "tier: not a tier"}, "roster file invalid (tier: not a tier)"),
        ({}, "no images"),
        ({"has_images": True}, None),
        ({"has_images": True, "failed_run": "run 7"}, "run failed (run 7)"),
    ],
)
def test_not_run_reasons_name_every_cause(kwargs, reason):
    assert not_run_reason(**kwargs) == reason


def report():
    frame = night_frame()
    return build_night_report(
        NIGHT,
        frame,
        ["nova", "ada", "lena", "mira"],
        not_run={"lena": "no LoRA", "mira": "run failed (run 1a2b3c)"},
        thresholds={"nova": DEFAULT, "ada": Thresholds(7.0, 60.0, 0.65)},
        links={"nova": [("approved portrait", "contact_sheets/nova-approved-portrait.png"),
                        ("reasons.json", "rejected/nova/reasons.json")]},
        suggestions=suggest_thresholds(frame.to_dict("records"), DEFAULT),
        reversals=reversal_counts(frame.to_dict("records"), DEFAULT),
    )


def test_every_roster_queen_has_a_row_and_queens_not_run_say_why():
    r = report()
    assert [q.slug for q in r.queens] == ["ada", "lena", "mira", "nova"]
    assert {q.slug: q.status for q in r.queens} == {
        "ada": "run", "lena": "not run: no LoRA", "mira": "not run: run failed (run 1a2b3c)", "nova": "run"}
    text = r.markdown()
    assert "| lena | not run: no LoRA | - | - | - | - |" in text
    assert "| mira | not run: run failed (run 1a2b3c) | - |" in text
    assert "| nova | run | 9 | 5 | 4 | 55.6 % |" in text
    assert "12 images generated, 5 approved, 7 rejected (approval rate 41.7 %)." in text
    assert "2 of 4 queens ran: not run lena (no LoRA), mira (run failed (run 1a2b3c))." in text
    assert "**Alert:** approval rate below 50% for ada." in text, "nova at 55.6 % is above the alert"


def test_a_queen_with_no_rows_and_no_reason_is_not_run_for_lack_of_images():
    r = build_night_report(NIGHT, night_frame(), ["nova", "zoe"])
    assert {q.slug: q.status for q in r.queens}["zoe"] == "not run: no images"
    empty = build_night_report(NIGHT, pd.DataFrame(), ["zoe"])
    assert empty.overall["generated"] == 0 and "0 images generated, 0 approved, 0 rejected." in empty.markdown()
    assert [row["status"] for row in empty.table_rows()] == ["not run: no images", "-"]


def test_a_queen_who_ran_outside_the_roster_is_reported_with_a_note():
    r = build_night_report(NIGHT, night_frame(), ["nova"], not_run={"nova": "run failed (run 5)"})
    assert {q.slug: q.status for q in r.queens} == {"ada": "run (not in the roster)", "nova": "run (run failed (run 5))"}


def test_medians_and_quantiles_show_what_a_mean_hides():
    r = report()
    [nova] = [q for q in r.queens if q.slug == "nova"]
    technical = nova.summary["scores"]["technical_score"]
    assert (technical["p10"], technical["p50"], technical["p90"], technical["mean"]) == (0.0, 100.0, 100.0, pytest.approx(500 / 9))
    text = r.markdown()
    # the queens table shows the median (p10-p90), the distribution table every statistic
    assert "| 100.0 (0.0-100.0) |" in text
    assert "| nova | technical | 9 | 0.0 | 0.0 | 100.0 | 100.0 | 100.0 | 55.6 | 52.7 |" in text
    assert "| queen | score | n | min | p10 | median | p90 | max | mean | std |" in text
    # missing faces are left out of the face statistics, not counted as 0
    assert nova.summary["scores"]["face_match_score"]["count"] == 8


def test_rejected_ids_are_listed_per_reason_with_the_files():
    ids = rejected_ids_by_reason(night_frame()[lambda f: f["queen"] == "nova"])
    assert ids == {"face<0.7": ["nova-2026-11-20-portrait-007"], "no_face": ["nova-2026-11-20-portrait-008"],
                   "technical<70": ["nova-2026-11-20-portrait-005", "nova-2026-11-20-portrait-006"]}
    text = report().markdown()
    assert "- `technical<70` (2): `nova-2026-11-20-portrait-005`, `nova-2026-11-20-portrait-006`" in text
    assert "[reasons.json](rejected/nova/reasons.json)" in text
    assert "[approved portrait](contact_sheets/nova-approved-portrait.png)" in text


def test_the_overrides_snippet_parses_and_approves_only_what_the_gate_rejected():
    frame = night_frame()
    snippet = overrides_snippet(frame[frame["queen"] == "nova"], reviewer="maria")
    parsed = parse_overrides(snippet, "overrides/nova.yaml")
    assert sorted(parsed) == [f"nova-{NIGHT}-portrait-00{i}" for i in (5, 6, 7, 8)]
    assert {(o.decision, o.by) for o in parsed.values()} == {("approve", "maria")}
    assert f"nova-{NIGHT}-portrait-007: {{decision: approve, by: maria}}  # face<0.7 (face 0.560)" in snippet
    # manual decisions are in the file already; unreadable images have nothing to publish
    ada = parse_overrides(overrides_snippet(frame[frame["queen"] == "ada"]), "overrides/ada.yaml")
    assert list(ada) == [f"ada-{NIGHT}-portrait-001"] and ada[f"ada-{NIGHT}-portrait-001"].by == "your-name"
    # whatever the reviewer's name, the YAML stays valid and reads back the same
    awkward = overrides_snippet(frame[frame["queen"] == "nova"], reviewer="o'neil: #1")
    assert {o.by for o in parse_overrides(awkward, "x.yaml").values()} == {"o'neil: #1"}
    # the report carries each queen's snippet in a yaml block under its file name
    text = report().markdown()
    block = text.split("`overrides/nova.yaml`:\n\n```yaml\n", 1)[1].split("```", 1)[0]
    assert sorted(parse_overrides(block, "nova.yaml")) == sorted(parsed)


def test_the_table_matches_its_schema_and_dagster_accepts_it():
    r = report()
    columns, rows = r.table_columns(), r.table_rows()
    assert [row["queen"] for row in rows] == ["ada", "lena", "mira", "nova", "overall"]
    types = {"string": (str,), "int": (int,), "float": (float,)}
    for row in rows:
        assert list(row) == [c["name"] for c in columns]
        for column in columns:
            value = row[column["name"]]
            assert value is None or (isinstance(value, types[column["type"]]) and not isinstance(value, bool)), (
                row["queen"], column["name"], value)
    nova = rows[3]
    assert (nova["generated"], nova["approval_rate_pct"], nova["technical_p50"], nova["face_match_p10"]) == (9, 55.6, 100.0, 0.56)
    assert rows[1]["generated"] is None and rows[1]["status"] == "not run: no LoRA"
    assert rows[4]["approval_rate_pct"] == 41.7
    value = dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(**column) for column in columns]),
    )
    assert len(value.records) == 5 and value.schema.columns[0].name == "queen"


def test_the_learned_thresholds_are_shown_as_suggestions():
    text = report().markdown()
    assert "## Learned thresholds (suggestions, never applied)" in text
    # nova-004 approved by a person at face 0.56: the face cut that agrees is 0.56
    assert "| nova | face_match | 0.7 | 0.56 | 1 | 1 | 0 | 1 |" in text
    assert "| nova | 1 | 1 | 1 | 0 |" in text
    plain = build_night_report(NIGHT, night_frame(), ["nova"]).markdown()
    assert "Learned thresholds" not in plain


def test_numpy_and_nan_values_from_parquet_render():
    frame = night_frame()
    frame["technical_score"] = frame["technical_score"].astype(np.float32)
    r = build_night_report(NIGHT, frame, ["nova", "ada"])
    assert "| nova | run | 9 | 5 | 4 | 55.6 % |" in r.markdown()
    assert all(not isinstance(v, np.generic) for row in r.table_rows() for v in row.values())
