"""voice_lines: the queen's dialogue spoken in her voice, one checked WAV per line.

Lines are made by ``domain/voice_synthesis.synthesize_lines``: keyed by a hash of what makes
their audio, reused in place or through the shared index (``assets/voice/_index``, also used by
chapter dialogue), otherwise synthesised, trimmed, loudness-normalised (BS.1770 target, true-
peak ceiling: ``domain/loudness.py``) and written atomically; the manifest is rewritten after
every line so a crash mid-batch loses nothing already finished. Lines that left the dialogue are
reported (metadata and log), never deleted: their files stay until a person removes them, after
which the manifest forgets them. The checks and rows come from ``domain/voice_lines.py``.

Cluster: the step's workload profile follows the environment's voice backend
(``VoiceBackend.runs_in_pod``): a model in the step's process gets ``voice-synthesis`` (a 3060,
pool ``gpu-3060``); an HTTP TTS server gets ``voice-synthesis-remote`` (CPU only, pool
``voice-tts``), since the server's own pod holds the GPU. ``definitions.py`` builds the asset
with :func:`build_voice_lines` from the backend it configures; the asset never reads the
environment. In-process (local) the tags are inert and the pool only serialises voice steps.
"""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from hydra_assets.domain import audio, loudness
from hydra_assets.domain.dialogue import Dialogue, DialogueFileError, dialogue_path, load_dialogue
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import StorageLayout, atomic_write_json, read_json
from hydra_assets.domain.voice_lines import (
    CHECK_DESCRIPTIONS,
    LineReview,
    LineRules,
    forget_missing,
    generated_asset_rows,
    load_manifest,
    loudness_failures,
    removed_and_untracked,
    review_lines,
    table_rows,
    voice_model_status,
)
from hydra_assets.domain.voice_synthesis import (
    STATUS_NEW,
    STATUS_REUSED,
    Mastering,
    ReuseIndex,
    SynthesisOutcome,
    synthesize_lines,
)
from hydra_assets.domain.workloads import VOICE_IN_POD_PROFILE
from hydra_assets.gpu import gpu_asset_kwargs
from hydra_assets.metadata import markdown_table
from hydra_assets.partitions import queens_partitions
from resources.catalog import CatalogResource
from resources.storage import HydraStorage
from resources.voice import VoiceBackend, VoiceError, VoicePlan

ASSET = "voice_lines"


class VoiceLinesConfig(dg.Config):
    trim_threshold_db: float = Field(
        default=audio.DEFAULT_TRIM_THRESHOLD_DB, description="Frames this far below the peak count as silence."
    )
    trim_padding_ms: int = Field(default=round(audio.DEFAULT_TRIM_PADDING_SECONDS * 1000), ge=0)
    silence_floor_dbfs: float = Field(default=audio.DEFAULT_SILENCE_FLOOR_DBFS)
    loudness_tolerance_lu: float = Field(
        default=loudness.DEFAULT_TOLERANCE_LU, gt=0, description="loudness_on_target fails beyond this many LU."
    )
    resynthesize: bool = Field(default=False, description="Ignore reusable files and synthesise every line again.")
    max_consecutive_failures: int = Field(
        default=3, ge=1, description="Stop the batch after this many failed lines in a row (the backend is broken)."
    )


def mastering(config: VoiceLinesConfig, voice: VoiceBackend) -> Mastering:
    """Trim from the run's config; the loudness target and ceiling from the backend resource."""
    return Mastering(
        trim_threshold_db=config.trim_threshold_db,
        trim_padding_ms=config.trim_padding_ms,
        target_lufs=voice.loudness_target_lufs,
        true_peak_ceiling_dbtp=voice.true_peak_ceiling_dbtp,
    )


def _queen_from_profile(layout: StorageLayout, slug: str) -> Queen:
    """The voice DNA as queen_profile validated it (not the roster file as it is now)."""
    document = read_json(layout.profile_path(slug))
    if document is None:
        raise dg.Failure(f"{layout.profile_path(slug)} is missing: materialize queen_profile for {slug} first")
    return Queen.model_validate(document["queen"])


def _load_dialogue(roster_dir: Path, slug: str) -> tuple[Dialogue, bool]:
    path = dialogue_path(roster_dir, slug)
    if path is None:
        return Dialogue(path=roster_dir / f"{slug}.dialogue.yaml", language="en"), False
    try:
        return load_dialogue(path, slug=slug), True
    except DialogueFileError as error:
        raise dg.Failure(description=str(error), metadata={"file": str(error.path)}) from error


def _check_results(
    dialogue: Dialogue, found: bool, review: LineReview, rules: LineRules
) -> list[dg.AssetCheckResult]:
    problem = f"no dialogue file at {dialogue.path}" if not found else "; ".join(str(e) for e in dialogue.errors)
    quietest = [e["source_rms_dbfs"] for e in review.current.values() if e["source_rms_dbfs"] is not None]
    implausible = {
        i: {
            "seconds": review.current[i]["duration"],
            "range": [round(x, 2) for x in audio.plausible_seconds(review.current[i]["text"], review.current[i]["speed"])],
        }
        for i in review.failing("duration_plausible")
    }
    off_target = loudness_failures(review, rules)
    measured = [e["loudness_lufs"] for e in review.current.values() if e.get("loudness_lufs") is not None]
    return [
        dg.AssetCheckResult(
            check_name="dialogue_valid",
            passed=found and not dialogue.errors,
            severity=dg.AssetCheckSeverity.WARN if not found else dg.AssetCheckSeverity.ERROR,
            description=problem[:1000] or None,
            metadata={"errors": dg.MetadataValue.json([str(e) for e in dialogue.errors])},
        ),
        dg.AssetCheckResult(
            check_name="every_line_has_audio",
            passed=not review.missing,
            description=f"{len(review.missing)} of {len(dialogue.lines)} lines have no audio" if review.missing else None,
            metadata={"missing": dg.MetadataValue.json(review.missing)},
        ),
        dg.AssetCheckResult(
            check_name="audio_not_empty",
            passed=not review.failing("audio_not_empty"),
            metadata={"empty": dg.MetadataValue.json(review.failing("audio_not_empty"))},
        ),
        dg.AssetCheckResult(
            check_name="audio_not_silent",
            passed=not review.failing("audio_not_silent"),
            metadata={
                "silent": dg.MetadataValue.json(review.failing("audio_not_silent")),
                "floor_dbfs": rules.silence_floor_dbfs,
                "quietest_dbfs": dg.MetadataValue.float(min(quietest)) if quietest else dg.MetadataValue.null(),
            },
        ),
        dg.AssetCheckResult(
            check_name="duration_plausible",
            passed=not implausible,
            metadata={"implausible": dg.MetadataValue.json(implausible)},
        ),
        dg.AssetCheckResult(
            check_name="loudness_on_target",
            passed=not off_target,
            description="; ".join(f"line {i}: {why}" for i, why in off_target.items())[:1000] or None,
            metadata={
                "off_target": dg.MetadataValue.json(off_target),
                "target_lufs": rules.target_lufs,
                "tolerance_lu": rules.tolerance_lu,
                "true_peak_ceiling_dbtp": rules.true_peak_ceiling_dbtp,
                "loudest_lufs": dg.MetadataValue.float(max(measured)) if measured else dg.MetadataValue.null(),
                "quietest_lufs": dg.MetadataValue.float(min(measured)) if measured else dg.MetadataValue.null(),
            },
        ),
    ]


def _record_catalog(
    catalog: CatalogResource, slug: str, plan: VoicePlan, voice_dir: Path, review: LineReview,
    stale: dict[str, dict],
) -> None:
    """voice_models row for the queen's voice, one generated_assets row per line, her line count.

    A stored line that no longer matches its text (its new synthesis failed) is marked unapproved.
    """
    clip_seconds = [audio.clip_seconds(Path(clip).expanduser()) for clip in plan.model.reference_clips]
    readable = [s for s in clip_seconds if s is not None]
    catalog.upsert_voice_model(
        slug,
        model_type=plan.model.model_type,
        reference_clips=plan.model.reference_clips,
        total_reference_duration=round(sum(readable), 3) if readable else None,
        model_path=plan.model.model_path,
        status=voice_model_status(len(plan.lines), len(review.current)),
    )
    rows = generated_asset_rows(voice_dir, review, stale)
    if rows:
        catalog.upsert_generated_assets(slug, rows)
    catalog.set_queen_counts(slug, voice_line=len(review.approved))


def _metadata(
    dialogue: Dialogue, plan: VoicePlan, outcome: SynthesisOutcome, review: LineReview,
    removed: list[str], untracked: list[str], manifest_path: Path,
) -> dict:
    realtime = outcome.realtime_factor
    columns = ["id", "emotion", "level", "seconds", "lufs", "dbtp", "status", "note"]
    return {
        "lines": markdown_table(table_rows(dialogue.lines, review, outcome), columns),
        "line_count": len(dialogue.lines),
        "synthesized": len(outcome.ids(STATUS_NEW)),
        "reused": len(outcome.ids(STATUS_REUSED)),
        "failed": len(review.missing),
        "invalid_lines": len(dialogue.errors),
        "removed_lines": dg.MetadataValue.json(removed),
        "untracked_files": dg.MetadataValue.json(untracked),
        "total_audio_seconds": round(review.total_seconds, 3),
        "synthesis_seconds": round(outcome.synth_seconds, 4),
        "realtime_factor": dg.MetadataValue.float(round(realtime, 5)) if realtime is not None else dg.MetadataValue.null(),
        "backend": plan.backend,
        "voice_settings": dg.MetadataValue.json(plan.setup),
        "sample_rates": dg.MetadataValue.json(sorted({e["sample_rate"] for e in review.current.values()})),
        "dialogue_file": dg.MetadataValue.path(str(dialogue.path)),
        "manifest": dg.MetadataValue.path(str(manifest_path)),
    }


def build_voice_lines(workload: str = VOICE_IN_POD_PROFILE) -> dg.AssetsDefinition:
    """The asset, its step tagged with ``workload`` (``VoiceBackend.workload_profile()`` of the configured backend)."""

    @dg.asset(
        name=ASSET,
        partitions_def=queens_partitions,
        group_name="voice",
        deps=["queen_profile"],
        kinds={"soundfile", "wav"},
        check_specs=[dg.AssetCheckSpec(name, asset=ASSET, description=text) for name, text in CHECK_DESCRIPTIONS.items()],
        description=(
            "The queen's dialogue lines spoken in her voice: assets/voice/{slug}/{line_id}.wav (16-bit PCM mono, "
            "trimmed, loudness-normalised to the BS.1770 target) with a manifest; unchanged lines are reused."
        ),
        **gpu_asset_kwargs(workload),
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

        voice_dir, manifest_path = layout.voice_dir(slug), layout.voice_manifest(slug)
        try:
            manifest = load_manifest(manifest_path)
        except ValueError as error:
            raise dg.Failure(str(error)) from error
        entries: dict[str, dict] = manifest["lines"]
        for line_id in forget_missing(entries, voice_dir):
            context.log.info(f"{slug}: the file of line {line_id} is gone; dropping it from the manifest")

        def save_manifest(outcome=None) -> None:
            if outcome is not None:
                entries[outcome.line_id] = outcome.record
                if outcome.status == STATUS_REUSED and outcome.reused_from is None:
                    return  # same file, new tags only: the final save records them
            manifest.update(
                queen=slug, dialogue_file=str(dialogue.path), backend=plan.backend, updated_at=datetime.now(UTC).isoformat()
            )
            atomic_write_json(manifest_path, manifest)

        outcome = synthesize_lines(
            voice,
            plan,
            {line.id: voice_dir / f"{line.id}.wav" for line in dialogue.lines},
            mastering=mastering(config, voice),
            index=ReuseIndex(layout.voice_index_dir(), layout.root),
            existing=dict(entries),
            resynthesize=config.resynthesize,
            max_consecutive_failures=config.max_consecutive_failures,
            on_line=save_manifest,
            warn=lambda message: context.log.warning(f"{slug}: {message}"),
        )
        removed, untracked = removed_and_untracked(entries, {line.id for line in dialogue.lines}, dialogue.rejected_ids, voice_dir)
        for line_id in removed:
            context.log.warning(
                f"{slug}: line {line_id} is no longer in {dialogue.path}; {voice_dir / entries[line_id]['file']} "
                f"is kept (delete the file to retire the line)"
            )
        manifest["removed"] = removed
        save_manifest()

        if outcome.aborted:
            synthesized = len(outcome.ids(STATUS_NEW))
            raise dg.Failure(
                description=(
                    f"{slug}: synthesis with {plan.backend} stopped: {outcome.aborted}. {synthesized} new lines were "
                    f"stored and will be reused; run again once the backend works."
                ),
                metadata={"synthesized": synthesized, "not_done": len(plan.lines) - len(outcome.ids(STATUS_REUSED)) - synthesized},
            )

        rules = LineRules(
            silence_floor_dbfs=config.silence_floor_dbfs,
            target_lufs=voice.loudness_target_lufs,
            true_peak_ceiling_dbtp=voice.true_peak_ceiling_dbtp,
            tolerance_lu=config.loudness_tolerance_lu,
        )
        review = review_lines(dialogue.lines, entries, outcome, rules)
        stale = {i: entries[i] for i in review.missing if i in entries}
        _record_catalog(catalog, slug, plan, voice_dir, review, stale)
        return dg.MaterializeResult(
            metadata=_metadata(dialogue, plan, outcome, review, removed, untracked, manifest_path),
            data_version=dg.DataVersion(review.data_version()[:16]),
            check_results=_check_results(dialogue, dialogue_found, review, rules),
        )

    return voice_lines


voice_lines = build_voice_lines()
"""The asset as the embedded profile builds it (eSpeak runs in the step's process)."""
