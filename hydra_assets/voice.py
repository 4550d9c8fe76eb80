"""voice_lines: the queen's dialogue spoken in her voice, one checked WAV per line.

Lines are keyed by a hash of what makes their audio: the backend's identity, the queen-level
voice setup, the exact per-line request (text included) and the post-processing settings. A
line whose key is unchanged and whose file still matches its recorded sha256 is reused;
everything else is synthesised, trimmed, normalised and written atomically, and the manifest
is rewritten after every line so a crash mid-batch loses nothing already finished. Lines that
left the dialogue are reported (metadata and log), never deleted: their files stay until a
person removes them, after which the manifest forgets them.

GPU: the asset carries the ``voice-synthesis`` workload profile (``hydra/workload`` and
``dagster-k8s/config`` tags, pool ``gpu-3060``). In-process (local, eSpeak on the CPU) the tags
are inert and the pool only serialises voice steps; under ``k8s_job_executor`` the step pod is
scheduled on a 3060 node with one GPU, which is where an in-process model would run. With the
HTTP backends the model runs in the TTS server's own pod, so the step's GPU request reserves a
card the step does not use; where the TTS server holds the node's only 3060, the step should
keep the pool but request no GPU.
"""

import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from hydra_assets.domain import audio
from hydra_assets.domain.dialogue import Dialogue, DialogueFileError, dialogue_path, load_dialogue
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import (
    StorageLayout,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    sha256_file,
)
from hydra_assets.gpu import gpu_asset_kwargs
from hydra_assets.metadata import markdown_table
from hydra_assets.partitions import queens_partitions
from resources.catalog import CatalogResource
from resources.storage import HydraStorage
from resources.voice import VoiceBackend, VoiceError, VoicePlan

ASSET = "voice_lines"
VOICE_LINE_ASSET_TYPE = "voice_line"
"""``generated_assets.asset_type`` of a line's catalog row (SPEC's counted voice_line type)."""
POSTPROCESS_VERSION = 1
"""Bump when trimming/normalising/encoding changes in a way that should redo every line."""
WAV_FORMAT = "wav/pcm16/mono"

STATUS_NEW, STATUS_REUSED, STATUS_FAILED, STATUS_SKIPPED = "new", "reused", "failed", "skipped"

CHECK_DESCRIPTIONS = {
    "dialogue_valid": "The queen's dialogue file exists and every line in it passed validation.",
    "every_line_has_audio": "Every valid dialogue line has a WAV made from its current text and voice settings.",
    "audio_not_empty": "Every line's audio lasts longer than zero seconds.",
    "audio_not_silent": "Every line's RMS (trimmed, before normalisation) is above the silence floor.",
    "duration_plausible": "Every line lasts about as long as its text takes to say (a third to three times the estimate).",
}


class VoiceLinesConfig(dg.Config):
    trim_threshold_db: float = Field(
        default=audio.DEFAULT_TRIM_THRESHOLD_DB, description="Frames this far below the peak count as silence."
    )
    trim_padding_ms: int = Field(default=round(audio.DEFAULT_TRIM_PADDING_SECONDS * 1000), ge=0)
    peak_dbfs: float = Field(default=audio.DEFAULT_PEAK_DBFS, le=0.0)
    silence_floor_dbfs: float = Field(default=audio.DEFAULT_SILENCE_FLOOR_DBFS)
    resynthesize: bool = Field(default=False, description="Ignore reusable files and synthesise every line again.")
    max_consecutive_failures: int = Field(
        default=3, ge=1, description="Stop the batch after this many failed lines in a row (the backend is broken)."
    )


def postprocess_settings(config: VoiceLinesConfig) -> dict[str, Any]:
    return {
        "version": POSTPROCESS_VERSION,
        "format": WAV_FORMAT,
        "trim_threshold_db": config.trim_threshold_db,
        "trim_padding_ms": config.trim_padding_ms,
        "peak_dbfs": config.peak_dbfs,
    }


def settings_hash(backend: str, setup: dict[str, Any], params: dict[str, Any], post: dict[str, Any]) -> str:
    """The line's key: text + voice settings + backend (+ post-processing); equal key, equal audio."""
    document = {"backend": backend, "setup": setup, "params": params, "post": post}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def _finite(value: float, digits: int = 2) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def line_problems(entry: dict[str, Any], silence_floor_dbfs: float) -> list[str]:
    """What the checks would hold against a stored line, first the gravest."""
    problems = []
    if entry["duration"] <= 0:
        problems.append("empty")
    if entry.get("source_rms_dbfs") is None or entry["source_rms_dbfs"] <= silence_floor_dbfs:
        problems.append("silent")
    low, high = audio.plausible_seconds(entry["text"], entry.get("speed", 1.0))
    if not low <= entry["duration"] <= high:
        problems.append("duration_implausible")
    return problems


def _queen_from_profile(layout: StorageLayout, slug: str) -> Queen:
    """The voice DNA as queen_profile validated it (not the roster file as it is now)."""
    document = read_json(layout.profile_path(slug))
    if document is None:
        raise dg.Failure(f"{layout.profile_path(slug)} is missing: materialize queen_profile for {slug} first")
    return Queen.model_validate(document["queen"])


def _reuse_problem(voice_dir: Path, entry: dict[str, Any]) -> str | None:
    path = voice_dir / entry["file"]
    problem = audio.stored_wav_problem(path)
    if problem is None and sha256_file(path) != entry.get("sha256"):
        problem = "changed on disk since it was written (sha256 differs)"
    return problem


def _load_dialogue(roster_dir: Path, slug: str) -> tuple[Dialogue, bool]:
    path = dialogue_path(roster_dir, slug)
    if path is None:
        return Dialogue(path=roster_dir / f"{slug}.dialogue.yaml", language="en"), False
    try:
        return load_dialogue(path, slug=slug), True
    except DialogueFileError as error:
        raise dg.Failure(description=str(error), metadata={"file": str(error.path)}) from error


@dg.asset(
    partitions_def=queens_partitions,
    group_name="voice",
    deps=["queen_profile"],
    kinds={"soundfile", "wav"},
    check_specs=[dg.AssetCheckSpec(name, asset=ASSET, description=text) for name, text in CHECK_DESCRIPTIONS.items()],
    description=(
        "The queen's dialogue lines spoken in her voice: assets/voice/{slug}/{line_id}.wav (16-bit PCM mono, "
        "trimmed, peak-normalised) with a manifest; unchanged lines are reused."
    ),
    **gpu_asset_kwargs("voice-synthesis"),
)
def voice_lines(
    context: dg.AssetExecutionContext,
    config: VoiceLinesConfig,
    storage: HydraStorage,
    voice: VoiceBackend,
    catalog: CatalogResource,
):
    slug = context.partition_key
    layout = storage.layout
    queen = _queen_from_profile(layout, slug)
    dialogue, dialogue_found = _load_dialogue(Path(storage.roster_dir), slug)
    if not dialogue_found:
        context.log.warning(f"{slug}: no dialogue file at {dialogue.path}; no voice lines to make")
    for error in dialogue.errors:
        context.log.warning(str(error))

    try:
        plan = voice.plan(slug, queen.voice_dna, dialogue.language, dialogue.lines)
    except VoiceError as error:
        raise dg.Failure(description=f"{slug}: {error}") from error

    voice_dir = layout.voice_dir(slug)
    manifest_path = layout.voice_manifest(slug)
    try:
        manifest = read_json(manifest_path) or {}
    except ValueError as error:
        raise dg.Failure(
            f"{manifest_path} is not valid JSON ({error}): restore it, or delete it to synthesise every line again"
        ) from error
    entries: dict[str, dict[str, Any]] = manifest.setdefault("lines", {})
    for line_id in [i for i, e in entries.items() if not (voice_dir / e["file"]).is_file()]:
        context.log.info(f"{slug}: {entries[line_id]['file']} is gone; dropping line {line_id} from the manifest")
        del entries[line_id]

    post = postprocess_settings(config)
    keys = {p.line.id: settings_hash(plan.backend, plan.setup, p.params, post) for p in plan.lines}
    status: dict[str, str] = {}
    notes: dict[str, str] = {}
    for line_plan in plan.lines:
        line = line_plan.line
        entry = entries.get(line.id)
        if config.resynthesize or entry is None or entry.get("settings_hash") != keys[line.id]:
            continue
        problem = _reuse_problem(voice_dir, entry)
        if problem is None:
            status[line.id] = STATUS_REUSED
            entry.update(level=line.level, emotion=line.emotion)  # tags only; the audio is the same
        else:
            context.log.warning(f"{slug}: {entry['file']} {problem}; synthesising it again")
    todo = {p.line.id for p in plan.lines if p.line.id not in status}

    def save_manifest() -> None:
        manifest.update(
            queen=slug,
            dialogue_file=str(dialogue.path),
            backend=plan.backend,
            updated_at=datetime.now(UTC).isoformat(),
        )
        atomic_write_json(manifest_path, manifest)

    by_id = {p.line.id: p for p in plan.lines}
    synth_seconds = new_audio_seconds = 0.0
    consecutive_failures = 0
    aborted: str | None = None
    batch = plan.only(todo)
    done = 0
    try:
        for result in voice.synthesize_batch(batch):
            done += 1
            synth_seconds += result.seconds
            line_plan = by_id[result.line_id]
            line = line_plan.line
            if result.audio is None:
                status[line.id] = STATUS_FAILED
                notes[line.id] = result.error or "no audio"
                context.log.warning(f"{slug}: line {line.id}: {result.error}")
                consecutive_failures += 1
                if consecutive_failures >= config.max_consecutive_failures and done < len(batch.lines):
                    aborted = f"{consecutive_failures} lines failed in a row (last: {result.error})"
                    break
                continue
            consecutive_failures = 0
            finished = audio.finish(
                result.audio,
                trim_threshold_db=config.trim_threshold_db,
                trim_padding_seconds=config.trim_padding_ms / 1000,
                target_peak_dbfs=config.peak_dbfs,
            )
            file_name = f"{line.id}.wav"
            atomic_write_bytes(voice_dir / file_name, finished.wav)
            entries[line.id] = {
                "file": file_name,
                "sha256": hashlib.sha256(finished.wav).hexdigest(),
                "bytes": len(finished.wav),
                "duration": round(finished.duration, 4),
                "source_duration": round(finished.source_duration, 4),
                "sample_rate": finished.sample_rate,
                "channels": 1,
                "format": WAV_FORMAT,
                "backend": plan.backend,
                "settings_hash": keys[line.id],
                "voice": plan.setup,
                "params": line_plan.params,
                "postprocess": post,
                "text": line.text,
                "emotion": line.emotion,
                "level": line.level,
                "speed": line.speed,
                "source_rms_dbfs": _finite(finished.source_rms_dbfs),
                "rms_dbfs": _finite(finished.rms_dbfs),
                "peak_dbfs": _finite(finished.peak_dbfs),
                "synth_seconds": round(result.seconds, 4),
                "synthesized_at": datetime.now(UTC).isoformat(),
            }
            status[line.id] = STATUS_NEW
            new_audio_seconds += finished.duration
            save_manifest()
    except VoiceError as error:
        aborted = str(error)
    for line_id in todo - set(status):
        status[line_id] = STATUS_SKIPPED
        notes[line_id] = "not attempted: the batch stopped"

    valid_ids = {line.id for line in dialogue.lines}
    removed = sorted(set(entries) - valid_ids - dialogue.rejected_ids)
    for line_id in removed:
        context.log.warning(
            f"{slug}: line {line_id} is no longer in {dialogue.path}; {voice_dir / entries[line_id]['file']} "
            f"is kept (delete the file to retire the line)"
        )
    tracked = {e["file"] for e in entries.values()}
    untracked = sorted(p.name for p in voice_dir.glob("*.wav") if p.name not in tracked) if voice_dir.is_dir() else []
    manifest["removed"] = removed
    save_manifest()

    synthesized = [i for i, s in status.items() if s == STATUS_NEW]
    if aborted:
        raise dg.Failure(
            description=(
                f"{slug}: synthesis with {plan.backend} stopped: {aborted}. {len(synthesized)} new lines were "
                f"stored and will be reused; run again once the backend works."
            ),
            metadata={"synthesized": len(synthesized), "not_done": len(todo) - len(synthesized)},
        )

    current = {line.id: entries[line.id] for line in dialogue.lines if status.get(line.id) in (STATUS_NEW, STATUS_REUSED)}
    problems = {line_id: line_problems(entry, config.silence_floor_dbfs) for line_id, entry in current.items()}
    missing = {line.id: notes.get(line.id, "no audio") for line in dialogue.lines if line.id not in current}

    def failing(problem: str) -> list[str]:
        return sorted(i for i, found in problems.items() if problem in found)

    empty, silent, implausible = failing("empty"), failing("silent"), failing("duration_implausible")
    loudness = [e["source_rms_dbfs"] for e in current.values() if e["source_rms_dbfs"] is not None]
    approved = [i for i, found in problems.items() if not found]

    total_seconds = sum(e["duration"] for e in current.values())
    realtime_factor = synth_seconds / new_audio_seconds if new_audio_seconds > 0 else None
    stale = {i: entries[i] for i in missing if i in entries}
    _record_catalog(catalog, slug, plan, voice_dir, current, stale, problems, approved)

    rows = []
    for line in dialogue.lines:
        entry = current.get(line.id)
        note = ", ".join(problems.get(line.id, [])) or notes.get(line.id, "")
        rows.append(
            {
                "id": line.id,
                "emotion": line.emotion,
                "level": line.level,
                "seconds": f"{entry['duration']:.2f}" if entry else "-",
                "status": status.get(line.id, "-"),
                "note": note[:160],
            }
        )
    data_version = hashlib.sha256(
        json.dumps(sorted((i, e["sha256"]) for i, e in current.items())).encode()
    ).hexdigest()
    dialogue_problem = (
        f"no dialogue file at {dialogue.path}" if not dialogue_found else "; ".join(str(e) for e in dialogue.errors)
    )
    return dg.MaterializeResult(
        metadata={
            "lines": markdown_table(rows, ["id", "emotion", "level", "seconds", "status", "note"]),
            "line_count": len(dialogue.lines),
            "synthesized": len(synthesized),
            "reused": sum(1 for s in status.values() if s == STATUS_REUSED),
            "failed": len(missing),
            "invalid_lines": len(dialogue.errors),
            "removed_lines": dg.MetadataValue.json(removed),
            "untracked_files": dg.MetadataValue.json(untracked),
            "total_audio_seconds": round(total_seconds, 3),
            "synthesis_seconds": round(synth_seconds, 4),
            "realtime_factor": dg.MetadataValue.float(round(realtime_factor, 5))
            if realtime_factor is not None
            else dg.MetadataValue.null(),
            "backend": plan.backend,
            "voice_settings": dg.MetadataValue.json(plan.setup),
            "sample_rates": dg.MetadataValue.json(sorted({e["sample_rate"] for e in current.values()})),
            "dialogue_file": dg.MetadataValue.path(str(dialogue.path)),
            "manifest": dg.MetadataValue.path(str(manifest_path)),
        },
        data_version=dg.DataVersion(data_version[:16]),
        check_results=[
            dg.AssetCheckResult(
                check_name="dialogue_valid",
                passed=dialogue_found and not dialogue.errors,
                severity=dg.AssetCheckSeverity.WARN if not dialogue_found else dg.AssetCheckSeverity.ERROR,
                description=dialogue_problem[:1000] or None,
                metadata={"errors": dg.MetadataValue.json([str(e) for e in dialogue.errors])},
            ),
            dg.AssetCheckResult(
                check_name="every_line_has_audio",
                passed=not missing,
                description=f"{len(missing)} of {len(dialogue.lines)} lines have no audio" if missing else None,
                metadata={"missing": dg.MetadataValue.json(missing)},
            ),
            dg.AssetCheckResult(
                check_name="audio_not_empty",
                passed=not empty,
                metadata={"empty": dg.MetadataValue.json(empty)},
            ),
            dg.AssetCheckResult(
                check_name="audio_not_silent",
                passed=not silent,
                metadata={
                    "silent": dg.MetadataValue.json(silent),
                    "floor_dbfs": config.silence_floor_dbfs,
                    "quietest_dbfs": dg.MetadataValue.float(min(loudness))
                    if loudness
                    else dg.MetadataValue.null(),
                },
            ),
            dg.AssetCheckResult(
                check_name="duration_plausible",
                passed=not implausible,
                metadata={
                    "implausible": dg.MetadataValue.json(
                        {
                            i: {
                                "seconds": current[i]["duration"],
                                "range": [round(x, 2) for x in audio.plausible_seconds(current[i]["text"], current[i]["speed"])],
                            }
                            for i in implausible
                        }
                    )
                },
            ),
        ],
    )


def _record_catalog(
    catalog: CatalogResource,
    slug: str,
    plan: VoicePlan,
    voice_dir: Path,
    current: dict[str, dict[str, Any]],
    stale: dict[str, dict[str, Any]],
    problems: dict[str, list[str]],
    approved: list[str],
) -> None:
    """voice_models row for the queen's voice, one generated_assets row per line, her line count.

    A stored line that no longer matches its text (its new synthesis failed) is marked unapproved.
    """
    clip_seconds = [audio.clip_seconds(Path(clip).expanduser()) for clip in plan.model.reference_clips]
    readable = [s for s in clip_seconds if s is not None]
    if not plan.lines:
        model_status = "pending"
    else:
        model_status = "ready" if current else "failed"
    catalog.upsert_voice_model(
        slug,
        model_type=plan.model.model_type,
        reference_clips=plan.model.reference_clips,
        total_reference_duration=round(sum(readable), 3) if readable else None,
        model_path=plan.model.model_path,
        status=model_status,
    )
    rows = []
    for line_id, entry in [*current.items(), *stale.items()]:
        found = problems[line_id] if line_id in current else ["stale"]
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
                },
                "prompt_used": entry["text"],
                "seed": entry["params"].get("seed"),
                "generated_at": datetime.fromisoformat(entry["synthesized_at"]),
                "approved_at": datetime.fromisoformat(entry["synthesized_at"]) if not found else None,
            }
        )
    if rows:
        catalog.upsert_generated_assets(slug, rows)
    catalog.set_queen_counts(slug, voice_line=len(approved))
