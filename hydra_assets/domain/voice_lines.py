"""The pure half of ``voice_lines``: the queen's manifest, what the checks hold against a line,
and the rows the UI table and the catalog get. No Dagster; the asset turns these into results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra_assets.domain import audio, loudness
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.storage import read_json
from hydra_assets.domain.voice_synthesis import STATUS_NEW, STATUS_REUSED, SynthesisOutcome

VOICE_LINE_ASSET_TYPE = "voice_line"
"""``generated_assets.asset_type`` of a line's catalog row (SPEC's counted voice_line type)."""

CHECK_DESCRIPTIONS = {
    "dialogue_valid": "The queen's dialogue file exists and every line in it passed validation.",
    "every_line_has_audio": "Every valid dialogue line has a WAV made from its current text and voice settings.",
    "audio_not_empty": "Every line's audio lasts longer than zero seconds.",
    "audio_not_silent": "Every line's RMS (trimmed, before normalisation) is above the silence floor.",
    "duration_plausible": "Every line lasts about as long as its text takes to say (a third to three times the estimate).",
    "loudness_on_target": (
        "Every line's integrated loudness (ITU-R BS.1770, measured on the stored WAV) is within the tolerance "
        "of the target and its true peak at or below the ceiling."
    ),
}
PROBLEM_BY_CHECK = {
    "audio_not_empty": "empty",
    "audio_not_silent": "silent",
    "duration_plausible": "duration_implausible",
    "loudness_on_target": "loudness_off_target",
}


def load_manifest(path: Path) -> dict[str, Any]:
    """The queen's manifest (empty when absent); ValueError naming the file when it is not JSON."""
    try:
        manifest = read_json(path) or {}
    except ValueError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}): restore it, or delete it to synthesise every line again"
        ) from error
    manifest.setdefault("lines", {})
    return manifest


def forget_missing(entries: dict[str, dict[str, Any]], voice_dir: Path) -> list[str]:
    """Drop entries whose file a person removed (that retires the line); returns their ids."""
    gone = [line_id for line_id, entry in entries.items() if not (voice_dir / entry["file"]).is_file()]
    for line_id in gone:
        del entries[line_id]
    return gone


def removed_and_untracked(
    entries: Mapping[str, Mapping[str, Any]], valid_ids: set[str], rejected_ids: set[str], voice_dir: Path
) -> tuple[list[str], list[str]]:
    """Lines that left the dialogue (their files stay), and WAVs in the folder no entry lists."""
    removed = sorted(set(entries) - valid_ids - rejected_ids)
    tracked = {entry["file"] for entry in entries.values()}
    untracked = sorted(p.name for p in voice_dir.glob("*.wav") if p.name not in tracked) if voice_dir.is_dir() else []
    return removed, untracked


@dataclass(frozen=True)
class LineRules:
    """What a stored line must meet; the loudness part is what it was mastered to."""

    silence_floor_dbfs: float = audio.DEFAULT_SILENCE_FLOOR_DBFS
    target_lufs: float = loudness.DEFAULT_TARGET_LUFS
    true_peak_ceiling_dbtp: float = loudness.DEFAULT_TRUE_PEAK_DBTP
    tolerance_lu: float = loudness.DEFAULT_TOLERANCE_LU

    def loudness_problem(self, entry: Mapping[str, Any]) -> str | None:
        problem = loudness.loudness_problem(
            entry.get("loudness_lufs"), entry.get("true_peak_dbtp"),
            self.target_lufs, self.true_peak_ceiling_dbtp, self.tolerance_lu,
        )
        if problem is not None and entry.get("loudness_error"):
            return entry["loudness_error"]
        return problem

    def problems(self, entry: Mapping[str, Any]) -> list[str]:
        """What the checks hold against a stored line, first the gravest."""
        found = []
        if entry["duration"] <= 0:
            found.append("empty")
        if entry.get("source_rms_dbfs") is None or entry["source_rms_dbfs"] <= self.silence_floor_dbfs:
            found.append("silent")
        low, high = audio.plausible_seconds(entry["text"], entry.get("speed", 1.0))
        if not low <= entry["duration"] <= high:
            found.append("duration_implausible")
        if self.loudness_problem(entry) is not None:
            found.append("loudness_off_target")
        return found


@dataclass(frozen=True)
class LineReview:
    """The lines of this materialization as the checks, the UI and the catalog see them."""

    current: dict[str, dict[str, Any]]
    """Lines with audio from their current text and settings, by id."""
    problems: dict[str, list[str]]
    missing: dict[str, str]
    """Lines without current audio → why."""

    def failing(self, check: str) -> list[str]:
        problem = PROBLEM_BY_CHECK[check]
        return sorted(i for i, found in self.problems.items() if problem in found)

    @property
    def approved(self) -> list[str]:
        return [i for i, found in self.problems.items() if not found]

    @property
    def total_seconds(self) -> float:
        return sum(entry["duration"] for entry in self.current.values())

    def data_version(self) -> str:
        return hashlib.sha256(json.dumps(sorted((i, e["sha256"]) for i, e in self.current.items())).encode()).hexdigest()


def review_lines(
    lines: Iterable[DialogueLine], entries: Mapping[str, dict[str, Any]], outcome: SynthesisOutcome, rules: LineRules
) -> LineReview:
    lines = list(lines)
    done = {i for i, o in outcome.lines.items() if o.status in (STATUS_NEW, STATUS_REUSED)}
    current = {line.id: entries[line.id] for line in lines if line.id in done}
    missing = {
        line.id: (outcome.lines[line.id].error if line.id in outcome.lines else None) or "no audio"
        for line in lines
        if line.id not in current
    }
    return LineReview(current, {i: rules.problems(e) for i, e in current.items()}, missing)


def table_rows(lines: Iterable[DialogueLine], review: LineReview, outcome: SynthesisOutcome) -> list[dict[str, Any]]:
    """One row per dialogue line for the UI's table."""
    rows = []
    for line in lines:
        entry = review.current.get(line.id)
        line_outcome = outcome.lines.get(line.id)
        note = ", ".join(review.problems.get(line.id, [])) or (line_outcome.error if line_outcome else "") or ""
        rows.append(
            {
                "id": line.id,
                "emotion": line.emotion,
                "level": line.level,
                "seconds": f"{entry['duration']:.2f}" if entry else "-",
                "lufs": f"{entry['loudness_lufs']:.1f}" if entry and entry.get("loudness_lufs") is not None else "-",
                "dbtp": f"{entry['true_peak_dbtp']:.1f}" if entry and entry.get("true_peak_dbtp") is not None else "-",
                "status": line_outcome.status if line_outcome else "-",
                "note": note[:160],
            }
        )
    return rows


def loudness_failures(review: LineReview, rules: LineRules) -> dict[str, str]:
    """Line id → why its loudness misses the convention, for the check's metadata."""
    return {i: rules.loudness_problem(review.current[i]) or "" for i in review.failing("loudness_on_target")}


def voice_model_status(planned_lines: int, current_lines: int) -> str:
    if not planned_lines:
        return "pending"
    return "ready" if current_lines else "failed"


def generated_asset_rows(
    voice_dir: Path, review: LineReview, stale: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One ``generated_assets`` row per stored line; a line whose new synthesis failed is ``stale``."""
    rows = []
    for line_id, entry in [*review.current.items(), *stale.items()]:
        found = review.problems[line_id] if line_id in review.current else ["stale"]
        made = datetime.fromisoformat(entry["synthesized_at"])
        rows.append(
            {
                "asset_type": VOICE_LINE_ASSET_TYPE,
                "file_path": str(voice_dir / entry["file"]),
                "file_size": entry["bytes"],
                "file_hash": entry["sha256"],
                "approved": not found,
                "approval_method": "auto",
                "rejection_reason": found[0] if found else None,
                "generation_params": {
                    "line_id": line_id,
                    "level": entry["level"],
                    "emotion": entry["emotion"],
                    "speed": entry["speed"],
                    "duration": entry["duration"],
                    "sample_rate": entry["sample_rate"],
                    "backend": entry["backend"],
                    "settings_hash": entry["settings_hash"],
                    "params": entry["params"],
                    "loudness_lufs": entry.get("loudness_lufs"),
                    "true_peak_dbtp": entry.get("true_peak_dbtp"),
                },
                "prompt_used": entry["text"],
                "seed": entry["params"].get("seed"),
                "generated_at": made,
                "approved_at": made if not found else None,
            }
        )
    return rows
