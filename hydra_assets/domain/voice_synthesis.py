"""Synthesise a plan's lines into WAV files, reusing any audio already made with the same key.

A line's key is a hash of everything that makes its audio: the backend's identity, the queen-
level voice setup, the exact per-line request (text included) and the mastering settings
(trim, loudness target, true-peak ceiling). Equal key, equal audio, wherever it was made:

1. in place: the caller's own record of the line (its manifest) has the key and the file on
   disk still has the recorded sha256;
2. shared: the :class:`ReuseIndex` (one small JSON file per key under
   ``assets/voice/_index/``) points at a file made for the same key by any asset (a queen's
   ``voice_lines``, a chapter's dialogue); it is verified (decodes, sha256 matches) and copied;
3. otherwise the backend synthesises it, it is mastered (``audio.finish``), written atomically
   and indexed.

Every write is atomic and only to the caller's own target paths (plus the index entry of the
key it made), so steps of different partitions never write the same file; two steps that make
the same key at once write equivalent entries and the last one wins. ``on_line`` is called
after every stored line so the caller can save its manifest at once: a crash mid-batch loses
nothing already finished. No Dagster here: assets call this and turn the outcome into
metadata and checks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from hydra_assets.domain import audio, loudness
from hydra_assets.domain.storage import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from hydra_assets.domain.voice_plan import LineAudio, LinePlan, VoiceError, VoicePlan

POSTPROCESS_VERSION = 2
"""Bump when trimming/normalising/encoding changes in a way that should redo every line
(2: loudness normalisation replaced peak normalisation)."""
WAV_FORMAT = "wav/pcm16/mono"

STATUS_NEW, STATUS_REUSED, STATUS_FAILED, STATUS_SKIPPED = "new", "reused", "failed", "skipped"


class SynthesisBackend(Protocol):
    """What :func:`synthesize_lines` needs of a backend (every ``resources.voice`` backend)."""

    def synthesize_batch(self, plan: VoicePlan) -> Iterator[LineAudio]: ...


@dataclass(frozen=True)
class Mastering:
    """What is done to every line after synthesis; part of every line's key."""

    trim_threshold_db: float = audio.DEFAULT_TRIM_THRESHOLD_DB
    trim_padding_ms: int = round(audio.DEFAULT_TRIM_PADDING_SECONDS * 1000)
    target_lufs: float = loudness.DEFAULT_TARGET_LUFS
    true_peak_ceiling_dbtp: float = loudness.DEFAULT_TRUE_PEAK_DBTP

    def settings(self) -> dict[str, Any]:
        return {
            "version": POSTPROCESS_VERSION,
            "format": WAV_FORMAT,
            "trim_threshold_db": self.trim_threshold_db,
            "trim_padding_ms": self.trim_padding_ms,
            "loudness_target_lufs": self.target_lufs,
            "true_peak_ceiling_dbtp": self.true_peak_ceiling_dbtp,
        }

    def finish(self, clip: audio.Audio, source: str) -> audio.FinishedAudio:
        return audio.finish(
            clip,
            source=source,
            trim_threshold_db=self.trim_threshold_db,
            trim_padding_seconds=self.trim_padding_ms / 1000,
            target_lufs=self.target_lufs,
            true_peak_ceiling_dbtp=self.true_peak_ceiling_dbtp,
        )


def line_key(backend: str, setup: Mapping[str, Any], params: Mapping[str, Any], post: Mapping[str, Any]) -> str:
    """The line's key: text + voice settings + backend + mastering; equal key, equal audio."""
    document = {"backend": backend, "setup": setup, "params": params, "post": post}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def plan_keys(plan: VoicePlan, mastering: Mastering) -> dict[str, str]:
    post = mastering.settings()
    return {p.line.id: line_key(plan.backend, plan.setup, p.params, post) for p in plan.lines}


def _finite(value: float | None, digits: int = 2) -> float | None:
    return round(value, digits) if value is not None and math.isfinite(value) else None


def reuse_problem(path: Path, sha256: str | None) -> str | None:
    """Why the stored file cannot be reused (None: it is a readable PCM16 mono WAV with that sha256)."""
    problem = audio.stored_wav_problem(path)
    if problem is None and sha256_file(path) != sha256:
        problem = "changed on disk since it was written (sha256 differs)"
    return problem


class ReuseIndex:
    """Key → the last file made for it, one JSON file per key (no shared file, no lock).

    Entries are only hints: every lookup checks that the file still decodes and has the
    recorded sha256, so a file rewritten for another key or removed is simply a miss.
    """

    def __init__(self, directory: Path, storage_root: Path):
        self.directory = Path(directory)
        self.storage_root = Path(storage_root)

    def _entry_path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def lookup(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The verified file and its record for ``key``; None when absent, unreadable or changed."""
        try:
            document = read_json(self._entry_path(key))
        except ValueError:
            return None  # a torn or hand-edited entry is only a missed reuse
        if not isinstance(document, dict) or not isinstance(document.get("record"), dict):
            return None
        path = self.storage_root / str(document.get("path", ""))
        if reuse_problem(path, document["record"].get("sha256")) is not None:
            return None
        return path, document["record"]

    def record(self, key: str, path: Path, record: Mapping[str, Any]) -> None:
        """Point ``key`` at ``path`` (relative to the storage root when under it, else absolute)."""
        path = Path(path).resolve()
        try:
            where = str(path.relative_to(self.storage_root.resolve()))
        except ValueError:
            where = str(path)
        atomic_write_json(self._entry_path(key), {"key": key, "path": where, "record": dict(record)})


@dataclass
class LineOutcome:
    line_id: str
    status: str
    key: str
    record: dict[str, Any] | None = None
    """The stored line's record (file name, sha256, measurements, settings); None unless stored."""
    error: str | None = None
    reused_from: str | None = None
    """For a line copied through the index: the file it was copied from."""


@dataclass
class SynthesisOutcome:
    lines: dict[str, LineOutcome] = field(default_factory=dict)
    aborted: str | None = None
    """Why the batch stopped early (backend unreachable, too many failures in a row)."""
    synth_seconds: float = 0.0
    new_audio_seconds: float = 0.0

    def ids(self, status: str) -> list[str]:
        return [i for i, outcome in self.lines.items() if outcome.status == status]

    @property
    def realtime_factor(self) -> float | None:
        return self.synth_seconds / self.new_audio_seconds if self.new_audio_seconds > 0 else None


def audio_record(
    plan: VoicePlan, line_plan: LinePlan, key: str, finished: audio.FinishedAudio, file_name: str,
    post: Mapping[str, Any], seconds: float,
) -> dict[str, Any]:
    """What is known about a freshly made line: the manifest entry and the index record."""
    line = line_plan.line
    return {
        "file": file_name,
        "sha256": hashlib.sha256(finished.wav).hexdigest(),
        "bytes": len(finished.wav),
        "duration": round(finished.duration, 4),
        "source_duration": round(finished.source_duration, 4),
        "sample_rate": finished.sample_rate,
        "channels": 1,
        "format": WAV_FORMAT,
        "backend": plan.backend,
        "settings_hash": key,
        "voice": plan.setup,
        "params": line_plan.params,
        "postprocess": dict(post),
        "text": line.text,
        "emotion": line.emotion,
        "level": line.level,
        "speed": line.speed,
        "source_rms_dbfs": _finite(finished.source_rms_dbfs),
        "rms_dbfs": _finite(finished.rms_dbfs),
        "peak_dbfs": _finite(finished.peak_dbfs),
        "loudness_lufs": _finite(finished.loudness_lufs),
        "true_peak_dbtp": _finite(finished.true_peak_dbtp),
        "loudness_error": finished.loudness_error,
        "synth_seconds": round(seconds, 4),
        "synthesized_at": datetime.now(UTC).isoformat(),
    }


def _tagged(record: Mapping[str, Any], line_plan: LinePlan, file_name: str) -> dict[str, Any]:
    """A reused record with this line's own tags (level and emotion do not change the audio)."""
    line = line_plan.line
    return {**record, "file": file_name, "level": line.level, "emotion": line.emotion}


def synthesize_lines(
    backend: SynthesisBackend,
    plan: VoicePlan,
    targets: Mapping[str, Path],
    *,
    mastering: Mastering,
    index: ReuseIndex | None = None,
    existing: Mapping[str, Mapping[str, Any]] | None = None,
    resynthesize: bool = False,
    max_consecutive_failures: int = 3,
    on_line: Callable[[LineOutcome], None] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> SynthesisOutcome:
    """Make ``targets[line_id]`` (a WAV path) for every line of ``plan``; see the module docstring.

    ``existing`` holds the caller's records of lines already at their targets (its manifest's
    entries, keyed by line id); ``resynthesize`` ignores both it and the index. Per-line failures
    are outcomes; a batch failure (backend unreachable, ``max_consecutive_failures`` in a row)
    sets ``aborted`` and marks the rest skipped. Nothing already stored is ever removed.
    """
    existing = existing or {}
    post = mastering.settings()
    keys = plan_keys(plan, mastering)
    outcome = SynthesisOutcome()
    by_id = {p.line.id: p for p in plan.lines}

    def stored(line_outcome: LineOutcome) -> None:
        outcome.lines[line_outcome.line_id] = line_outcome
        if on_line is not None:
            on_line(line_outcome)

    for line_plan in [] if resynthesize else plan.lines:
        line_id, key = line_plan.line.id, keys[line_plan.line.id]
        target = Path(targets[line_id])
        entry = existing.get(line_id)
        if entry is not None and entry.get("settings_hash") == key:
            problem = reuse_problem(target, entry.get("sha256"))
            if problem is None:
                record = _tagged(entry, line_plan, target.name)
                if index is not None and index.lookup(key) is None:
                    index.record(key, target, record)
                stored(LineOutcome(line_id, STATUS_REUSED, key, record))
                continue
            warn(f"line {line_id}: {target} {problem}; synthesising it again")
        found = index.lookup(key) if index is not None else None
        if found is not None:
            source, record = found
            if source.resolve() != target.resolve():
                atomic_write_bytes(target, source.read_bytes())
                stored(LineOutcome(line_id, STATUS_REUSED, key, _tagged(record, line_plan, target.name), None, str(source)))

    todo = plan.only({i for i in by_id if i not in outcome.lines})
    consecutive_failures = 0
    done = 0
    try:
        for result in backend.synthesize_batch(todo):
            done += 1
            outcome.synth_seconds += result.seconds
            line_plan, key = by_id[result.line_id], keys[result.line_id]
            if result.audio is None:
                outcome.lines[result.line_id] = LineOutcome(result.line_id, STATUS_FAILED, key, error=result.error or "no audio")
                warn(f"line {result.line_id}: {result.error}")
                consecutive_failures += 1
                if consecutive_failures >= max_consecutive_failures and done < len(todo.lines):
                    outcome.aborted = f"{consecutive_failures} lines failed in a row (last: {result.error})"
                    break
                continue
            consecutive_failures = 0
            target = Path(targets[result.line_id])
            finished = mastering.finish(result.audio, f"line {result.line_id}")
            atomic_write_bytes(target, finished.wav)
            record = audio_record(plan, line_plan, key, finished, target.name, post, result.seconds)
            if index is not None:
                index.record(key, target, record)
            outcome.new_audio_seconds += finished.duration
            stored(LineOutcome(result.line_id, STATUS_NEW, key, record))
    except VoiceError as error:
        outcome.aborted = str(error)
    for line_id in by_id:
        if line_id not in outcome.lines:
            outcome.lines[line_id] = LineOutcome(line_id, STATUS_SKIPPED, keys[line_id], error="not attempted: the batch stopped")
    return outcome
