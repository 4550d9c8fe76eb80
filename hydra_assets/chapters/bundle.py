"""chapter_bundle: the folder the game reads, chapters/{chapter}/, replaced only when complete.

The bundle is built in a hidden folder beside the live one (script.md, images/, audio/,
metadata.json), every copied file checked against its recorded sha256, and then swapped in
with two renames; the old version is removed only after the new one is in place. A bundle
that cannot be completed (a line without audio) raises before the swap, so the previous
complete bundle stays. A swap interrupted between its renames is repaired by the next run.
"""


import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import soundfile as sf

from hydra_assets.chapters import paths
from hydra_assets.chapters.images import SELECTION_FILE
from hydra_assets.chapters.script import load_script
from hydra_assets.domain.storage import atomic_write_json, read_json, sha256_file
from hydra_assets.metadata import markdown_table
from hydra_assets.partitions import chapters_partitions
from resources.alerts import WebhookNotifier, webhook_body
from resources.storage import HydraStorage

ASSET = "chapter_bundle"
METADATA_FILE = "metadata.json"
BUILDING, RETIRING = ".building-", ".retiring-"


class BundleError(RuntimeError):
    """The bundle cannot be completed; the previous one is left in place."""


def integrated_loudness(path: Path) -> float | None:
    """EBU R128 integrated loudness (LUFS) of a WAV, None when the clip is too short to gate."""
    import pyloudnorm

    data, rate = sf.read(path, dtype="float64")
    try:
        value = pyloudnorm.Meter(rate).integrated_loudness(data)
    except ValueError:
        return None
    return round(float(value), 2) if np.isfinite(value) else None


def _copy_checked(source: Path, target: Path, sha256: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    if sha256_file(target) != sha256:
        raise BundleError(f"{source} changed since it was recorded (sha256 differs); re-materialize its asset")


def repair_interrupted_swap(live: Path) -> None:
    """A crash between the two renames leaves no live folder and a retiring one: put it back."""
    parent = live.parent
    if not parent.is_dir():
        return
    retiring = sorted(parent.glob(f"{RETIRING}{live.name}-*"))
    if not live.exists() and retiring:
        os.rename(retiring[-1], live)
        retiring = retiring[:-1]
    for stale in [*retiring, *parent.glob(f"{BUILDING}{live.name}-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def swap_in(staged: Path, live: Path) -> None:
    old = live.parent / f"{RETIRING}{live.name}-{uuid.uuid4().hex[:8]}"
    if live.exists():
        os.rename(live, old)
    os.rename(staged, live)
    shutil.rmtree(old, ignore_errors=True)
    fd = os.open(live.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_bundle(layout, chapter_slug: str, staged: Path) -> dict[str, Any]:
    """Copy every part into ``staged`` and return metadata.json's document; raises BundleError."""
    script = load_script(layout, chapter_slug)
    chapter = script["chapter"]
    dialogue = read_json(paths.dialogue_manifest(layout, chapter_slug)) or {}
    selection = read_json(paths.images_dir(layout, chapter_slug) / SELECTION_FILE) or {}
    for name, document in (("chapter_dialogue", dialogue), ("scene_images", selection)):
        if document.get("script_sha256") != chapter["sha256"]:
            raise BundleError(f"{name} was not made from the current chapter_script: materialize {name} first")
    voiced, chosen = dialogue.get("lines", {}), selection.get("chosen", {})
    shutil.copyfile(paths.script_copy(layout, chapter_slug), staged / "script.md")
    missing, scenes, lines, voices, loras = [], [], [], {}, {}
    for scene in chapter["scenes"]:
        image = chosen.get(scene["id"])
        record: dict[str, Any] = {k: scene[k] for k in ("number", "id", "title", "setting", "queens", "directions")}
        record["lines"] = [line["number"] for line in scene["lines"]]
        record["candidates"] = len((selection.get("candidates") or {}).get(scene["id"], []))
        if image is None:
            missing.append(f"scene {scene['id']}: no image passed the quality gate")
            record["image"] = None
        else:
            name = f"images/scene_{scene['number']:02d}_{scene['id']}.png"
            _copy_checked(paths.images_dir(layout, chapter_slug) / image["file"], staged / name, image["sha256"])
            record["image"] = {"file": name, **{k: image[k] for k in ("sha256", "width", "height", "scores", "lead_queen", "lora", "image_id")}}
            if image.get("lora"):
                loras[image["lead_queen"]] = image["lora"]
        scenes.append(record)
        for line in scene["lines"]:
            entry = voiced.get(line["id"])
            if entry is None:
                raise BundleError(f"line {line['id']} ({line['speaker']}) has no audio: materialize chapter_dialogue")
            name = f"audio/dialogue_{line['number']:03d}.wav"
            _copy_checked(paths.dialogue_dir(layout, chapter_slug) / entry["file"], staged / name, entry["sha256"])
            info = sf.info(staged / name)
            voices[line["speaker"]] = {"backend": entry["backend"], "voice": entry["voice"]}
            lines.append({
                **{k: line[k] for k in ("number", "id", "scene", "speaker", "emotion", "level", "ask")},
                "text": entry.get("text", line["text"]), "script_text": line["text"],
                "file": name, "sha256": entry["sha256"], "duration": round(info.frames / info.samplerate, 4),
                "sample_rate": info.samplerate, "loudness_lufs": integrated_loudness(staged / name),
                "text_source": entry.get("text_source"), "voice_key": entry["key"], "backend": entry["backend"],
            })
    return {
        "chapter": chapter_slug,
        "title": chapter["front"]["title"],
        "number": chapter["front"]["number"],
        "cast": chapter["front"]["cast"],
        "language": chapter["front"]["language"],
        "script_sha256": chapter["sha256"],
        "cast_lineage": script.get("cast_lineage", {}),
        "built_at": datetime.now(UTC).isoformat(),
        "scenes": scenes,
        "lines": lines,
        "voices": voices,
        "loras": loras,
        "files": {},
        "totals": {"scenes": len(scenes), "lines": len(lines), "images": sum(1 for s in scenes if s["image"]),
                   "audio_seconds": round(sum(line["duration"] for line in lines), 3)},
        "missing": missing,
        "script_errors": script.get("errors", []),
    }


def announce(webhook: WebhookNotifier, document: dict[str, Any], folder: Path) -> bool:
    totals = document["totals"]
    title = f"Chapter {document['number']} assets ready"
    lines = [
        f"{document['title']} ({document['chapter']}): {totals['scenes']} scenes, {totals['images']} images, "
        f"{totals['lines']} lines, {totals['audio_seconds']:.1f} s of audio",
        f"folder: {folder}",
        *(f"missing: {m}" for m in document["missing"]),
        *([f"script: {len(document['script_errors'])} line(s) left out"] if document["script_errors"] else []),
    ]
    return webhook.notify(webhook_body(title, lines, "chapter_ready", {"chapter": document["chapter"], **totals,
                                                                     "missing": document["missing"]}))


@dg.asset(
    partitions_def=chapters_partitions,
    group_name="chapters",
    deps=["chapter_script", "chapter_dialogue", "scene_images"],
    kinds={"json", "wav", "png"},
    description="chapters/{chapter}/ as the game reads it: script.md, images/scene_NN_<scene>.png, "
    "audio/dialogue_NNN.wav and metadata.json (every scene, line, file, duration, speaker, sha256, voice and "
    "LoRA versions); replaced as a whole, only when complete; announced on the webhook.",
)
def chapter_bundle(context: dg.AssetExecutionContext, storage: HydraStorage, webhook: WebhookNotifier):
    slug = context.partition_key
    layout = storage.layout
    live = paths.bundle_dir(layout, slug)
    live.parent.mkdir(parents=True, exist_ok=True)
    repair_interrupted_swap(live)
    staged = live.parent / f"{BUILDING}{slug}-{uuid.uuid4().hex[:8]}"
    staged.mkdir()
    try:
        document = build_bundle(layout, slug, staged)
        for path in sorted(p for p in staged.rglob("*") if p.is_file()):
            document["files"][path.relative_to(staged).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        atomic_write_json(staged / METADATA_FILE, document)
        swap_in(staged, live)
    except BundleError as error:
        shutil.rmtree(staged, ignore_errors=True)
        raise dg.Failure(description=f"{slug}: {error}; the previous bundle at {live} is unchanged") from error
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    announced = announce(webhook, document, live)
    totals = document["totals"]
    loudness = [line["loudness_lufs"] for line in document["lines"] if line["loudness_lufs"] is not None]
    rows = [{"scene": s["id"], "image": (s["image"] or {}).get("file", "MISSING"), "lines": len(s["lines"])} for s in document["scenes"]]
    version = hashlib.sha256(json.dumps(sorted((k, v["sha256"]) for k, v in document["files"].items())).encode()).hexdigest()[:16]
    return dg.MaterializeResult(
        metadata={
            **totals,
            "missing": dg.MetadataValue.json(document["missing"]),
            "mean_loudness_lufs": round(float(np.mean(loudness)), 2) if loudness else None,
            "folder": dg.MetadataValue.path(str(live)),
            "scene_table": markdown_table(rows, ["scene", "image", "lines"]),
            "announced": announced,
        },
        data_version=dg.DataVersion(version),
    )
