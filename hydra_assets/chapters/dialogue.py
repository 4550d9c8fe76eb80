"""chapter_dialogue: every line of the chapter spoken in its speaker's voice.

A queen speaks with her voice DNA as queen_profile validated it; the narrator and the player
with the voices configured on the ``chapter_scripts`` resource. Each line is keyed exactly as
voice_lines keys a queen's line (backend + voice setup + request, text included, +
post-processing), so an unchanged line is reused from this chapter's own store, a line a
queen also says in her dialogue file is taken from voice_lines, and only new or edited text
is synthesised. Files are written atomically and the manifest after every line, so a failure
loses nothing already made; any failed line fails the asset, which keeps the last complete
chapter bundle in place.
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
    VoiceBackend,
    VoiceError,
    VoiceLinesConfig,
    finish_line,
    line_key,
    post_settings,
    shared_voice_lines,
    vary_line,
)
from hydra_assets.chapters.script import load_script
from hydra_assets.domain import audio
from hydra_assets.domain.chapters import VOICES
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import atomic_write_bytes, atomic_write_json, read_json, sha256_file
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


def _stored(folder, entry: dict | None) -> bool:
    if not entry:
        return False
    path = folder / entry["file"]
    return path.is_file() and audio.stored_wav_problem(path) is None and sha256_file(path) == entry.get("sha256")


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
    post = post_settings(config)

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
        keys = {p.line.id: line_key(plan, p.params, post) for p in plan.lines}
        shared = shared_voice_lines(layout, speaker) if speaker not in VOICES else {}
        meta = {line["id"]: (spoken.text, source) for line, spoken, source in items}

        def record(line_id: str, key: str, state: str, params: dict) -> None:
            text, source = meta[line_id]
            lines[line_id] = {**store[key], "key": key, "speaker": speaker, "text": text, "text_source": source,
                              "backend": plan.backend, "voice": plan.setup, "params": params}
            status[line_id] = state

        todo, repeats = set(), {}
        for line_plan in plan.lines:
            line_id, key = line_plan.line.id, keys[line_plan.line.id]
            if key in {keys[i] for i in todo}:
                repeats[line_id] = key  # the same words in the same voice: made once, used twice
            elif not config.resynthesize and _stored(folder, store.get(key)):
                record(line_id, key, "reused", line_plan.params)
            elif not config.resynthesize and key in shared:
                name = f"{key[:KEY_FILE_CHARS]}.wav"
                data = shared[key].read_bytes()
                atomic_write_bytes(folder / name, data)
                info = audio.read_wav_file(folder / name)
                store[key] = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "duration": round(info.duration, 4),
                              "sample_rate": info.sample_rate, "shared_from": str(shared[key])}
                record(line_id, key, "shared", line_plan.params)
            else:
                todo.add(line_id)
        params_of = {p.line.id: p.params for p in plan.lines}
        try:
            for result in voice.synthesize_batch(plan.only(todo)):
                synth_seconds += result.seconds
                if result.audio is None:
                    failures[result.line_id] = result.error or "no audio"
                    context.log.warning(f"{slug}: line {result.line_id} ({speaker}): {result.error}")
                    continue
                finished = finish_line(result.audio, config)
                key = keys[result.line_id]
                name = f"{key[:KEY_FILE_CHARS]}.wav"
                atomic_write_bytes(folder / name, finished.wav)
                store[key] = {"file": name, "sha256": hashlib.sha256(finished.wav).hexdigest(),
                              "duration": round(finished.duration, 4), "sample_rate": finished.sample_rate,
                              "synthesized_at": datetime.now(UTC).isoformat()}
                record(result.line_id, key, "new", params_of[result.line_id])
                save()
        except VoiceError as error:
            for line_id in todo - set(status):
                failures.setdefault(line_id, f"{speaker}: {error}")
        for line_id, key in repeats.items():
            first = next(i for i in todo if keys[i] == key)
            if first in status:
                record(line_id, key, "reused", params_of[line_id])
            else:
                failures[line_id] = failures.get(first, "not voiced")
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
            "synthesized": dg.MetadataValue.json(new),
            "total_audio_seconds": round(sum(lines[i]["duration"] for i in order), 2),
            "synth_seconds": round(synth_seconds, 3),
            "backend": voice.backend_name(),
            "line_table": markdown_table(rows, ["line", "speaker", "seconds", "status"]),
            "manifest": dg.MetadataValue.path(str(manifest_path)),
        },
        data_version=dg.DataVersion(version),
    )
