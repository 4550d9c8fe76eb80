"""chapter_dialogue: every line of the chapter spoken in its speaker's voice.

A queen speaks with her voice DNA as queen_profile validated it; the narrator and the player
with the voices configured on the ``chapter_scripts`` resource. Lines go through the same
``synthesize_lines`` as voice_lines (hydra_assets/domain/voice_synthesis.py): keyed by backend +
voice setup + request (text included) + mastering (trim, loudness target, true-peak ceiling),
so an unchanged line is reused from this chapter's own store, a line any asset already made
(a queen's voice_lines, another chapter) is copied through the shared index, and only new or
edited text is synthesised, then loudness-normalised like every voice line. Files are written
atomically and the manifest after every line, so a failure loses nothing already made; any
failed line fails the asset, which keeps the last complete chapter bundle in place.
"""


import hashlib
import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from hydra_assets.chapters import paths
from hydra_assets.chapters.backends import (
    DialogueVariator,
    ReuseIndex,
    VoiceBackend,
    VoiceError,
    VoiceLinesConfig,
    plan_keys,
    synthesize_lines,
    vary_line,
    voice_mastering,
)
from hydra_assets.chapters.script import load_script
from hydra_assets.domain.chapters import VOICES
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import atomic_write_json, read_json
from hydra_assets.gpu import gpu_asset_kwargs
from hydra_assets.metadata import markdown_table
from hydra_assets.partitions import chapters_partitions
from resources.chapters import ChapterScripts
from resources.storage import HydraStorage

ASSET = "chapter_dialogue"
KEY_FILE_CHARS = 24
"""Hex characters of the line key in a stored file's name: the store is content-addressed."""


class ChapterDialogueConfig(VoiceLinesConfig):
    """voice_lines' settings: the same post-processing keeps equal lines' keys equal, so they share audio."""


def _voice_of(speaker: str, layout, chapter_scripts: ChapterScripts):
    if speaker in VOICES:
        return chapter_scripts.voice_for(speaker)
    document = read_json(layout.profile_path(speaker))
    if document is None:
        raise dg.Failure(f"{layout.profile_path(speaker)} is missing: materialize queen_profile for {speaker} first")
    return Queen.model_validate(document["queen"]).voice_dna


@dg.asset(
    partitions_def=chapters_partitions,
    group_name="chapters",
    deps=["chapter_script"],
    kinds={"soundfile", "wav"},
    description="Every chapter line voiced (16-bit PCM mono WAV per line), keyed by text + voice settings; "
    "unchanged lines and lines equal to a queen's voice_lines are reused.",
    **gpu_asset_kwargs("voice-synthesis"),
)
def chapter_dialogue(
    context: dg.AssetExecutionContext,
    config: ChapterDialogueConfig,
    storage: HydraStorage,
    chapter_scripts: ChapterScripts,
    voice: VoiceBackend,
    dialogue_variator: DialogueVariator,
):
    slug = context.partition_key
    layout = storage.layout
    document = load_script(layout, slug)
    chapter = document["chapter"]
    language = chapter["front"]["language"]
    folder = paths.dialogue_dir(layout, slug)
    manifest_path = paths.dialogue_manifest(layout, slug)
    try:
        manifest = read_json(manifest_path) or {}
    except ValueError as error:
        raise dg.Failure(f"{manifest_path} is not valid JSON ({error}): delete it to voice every line again") from error
    store: dict[str, dict] = manifest.setdefault("store", {})
    mastering = voice_mastering(config, voice)
    index = ReuseIndex(layout.voice_index_dir(), layout.root)

    by_speaker: dict[str, list[tuple[dict, DialogueLine, str]]] = defaultdict(list)
    for scene in chapter["scenes"]:
        for line in scene["lines"]:
            text, source = vary_line(dialogue_variator, line, scene, paths.work_dir(layout, slug) / "llm_cache", context.log)
            dialogue_line = DialogueLine(id=line["id"], text=text, level=line["level"], emotion=line["emotion"])
            by_speaker[line["speaker"]].append((line, dialogue_line, source))

    lines: dict[str, dict[str, Any]] = {}
    status: dict[str, str] = {}
    failures: dict[str, str] = {}
    synth_seconds = 0.0

    def save() -> None:
        manifest.update(chapter=slug, script_sha256=chapter["sha256"], lines=lines, updated_at=datetime.now(UTC).isoformat())
        atomic_write_json(manifest_path, manifest)

    for speaker, items in by_speaker.items():
        try:
            plan = voice.plan(speaker, _voice_of(speaker, layout, chapter_scripts), language, [d for _, d, _ in items])
        except VoiceError as error:
            for line, _, _ in items:
                failures[line["id"]] = f"{speaker}: {error}"
            continue
        keys = plan_keys(plan, mastering)
        first_of: dict[str, str] = {}  # key → the first line with it: the same words in the same voice, made once
        for line_plan in plan.lines:
            first_of.setdefault(keys[line_plan.line.id], line_plan.line.id)
        makers = set(first_of.values())
        targets = {i: folder / f"{keys[i][:KEY_FILE_CHARS]}.wav" for i in makers}
        existing = {i: store[keys[i]] for i in makers if keys[i] in store}

        def stored(outcome) -> None:
            store[outcome.key] = outcome.record
            save()

        outcome = synthesize_lines(
            voice, plan.only(makers), targets, mastering=mastering, index=index, existing=existing,
            resynthesize=config.resynthesize, max_consecutive_failures=config.max_consecutive_failures,
            on_line=lambda o: stored(o) if o.record else None, warn=lambda m: context.log.warning(f"{slug} ({speaker}): {m}"),
        )
        synth_seconds += outcome.synth_seconds
        meta = {line["id"]: (spoken.text, source) for line, spoken, source in items}
        for line_plan in plan.lines:
            line_id, key = line_plan.line.id, keys[line_plan.line.id]
            made = outcome.lines[first_of[key]]
            if made.record is None:
                failures[line_id] = f"{speaker}: {made.error}"
                continue
            text, source = meta[line_id]
            lines[line_id] = {**made.record, "key": key, "speaker": speaker, "text": text, "text_source": source,
                              "backend": plan.backend, "voice": plan.setup, "params": line_plan.params}
            if line_id != first_of[key] or made.status != "new":
                status[line_id] = "shared" if made.reused_from and line_id == first_of[key] else "reused"
            else:
                status[line_id] = "new"
    save()

    order = [line["id"] for scene in chapter["scenes"] for line in scene["lines"]]
    new = [i for i in order if status.get(i) == "new"]
    if failures:
        raise dg.Failure(
            description=f"{slug}: {len(failures)} of {len(order)} lines could not be voiced (first: "
            f"{next(iter(failures))}: {next(iter(failures.values()))}); {len(new)} new lines were stored and will be "
            "reused; the previous chapter bundle stays in place",
            metadata={"failed": dg.MetadataValue.json(failures), "synthesized": dg.MetadataValue.json(new)},
        )
    rows = [{"line": i, "speaker": lines[i]["speaker"], "seconds": f"{lines[i]['duration']:.2f}", "status": status[i]} for i in order]
    version = hashlib.sha256(json.dumps([(i, lines[i]["sha256"]) for i in order]).encode()).hexdigest()[:16]
    return dg.MaterializeResult(
        metadata={
            "lines": len(order),
            "new": len(new),
            "reused": sum(1 for s in status.values() if s == "reused"),
            "shared_with_voice_lines": sum(1 for s in status.values() if s == "shared"),
            "loudness_lufs": dg.MetadataValue.json({i: lines[i].get("loudness_lufs") for i in order}),
            "loudness_target_lufs": mastering.target_lufs,
            "synthesized": dg.MetadataValue.json(new),
            "total_audio_seconds": round(sum(lines[i]["duration"] for i in order), 2),
            "synth_seconds": round(synth_seconds, 3),
            "backend": voice.backend_name(),
            "line_table": markdown_table(rows, ["line", "speaker", "seconds", "status"]),
            "manifest": dg.MetadataValue.path(str(manifest_path)),
        },
        data_version=dg.DataVersion(version),
    )
