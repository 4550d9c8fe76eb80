"""chapters_sensor: the chapters folder drives the chapters partitions and the chapter runs.

The roster sensor's rules: a new script adds a partition (assets never add them); a script
whose content changed gets a run of chapter_job (a touch without a change gets none); a
removed script is reported in ``chapter_index``, its partition and bundle kept. A run waits
(pending in the cursor) while a cast queen known to the roster has no queen_profile yet, and
a script that cannot be used at all (bad name, broken front matter) is reported, not run.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from hydra_assets.domain.chapters import ChapterFileError, chapter_slug, parse_chapter, scan_scripts
from hydra_assets.domain.fingerprints import content_digest, fingerprint_files
from hydra_assets.domain.roster import is_valid_slug
from hydra_assets.partitions import CHAPTERS, QUEENS, chapters_partitions
from hydra_assets.queen_profile import queen_profile
from jobs import chapter_job
from resources.chapters import ChapterScripts

CURSOR_VERSION = 1
CHAPTER_INDEX = dg.AssetKey("chapter_index")

chapter_index = dg.AssetSpec(
    CHAPTER_INDEX,
    group_name="chapters",
    kinds={"markdown"},
    description="What the chapters sensor saw: scripts in the folder, scripts removed from it, scripts it could not use.",
)


def _load_cursor(raw: str | None) -> tuple[dict, set[str]]:
    """Per-chapter state, and the file names already reported as not being slugs."""
    cursor = json.loads(raw) if raw else {}
    if cursor.get("v") != CURSOR_VERSION:
        return {}, set()
    return cursor.get("chapters", {}), set(cursor.get("bad_names", []))


def build_chapters_sensor(default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name="chapters_sensor",
        jobs=[chapter_job],
        minimum_interval_seconds=30,
        default_status=default_status,
        description="Adds a chapters partition per script and builds the chapter's bundle when its script changes.",
    )
    def chapters_sensor(context: dg.SensorEvaluationContext, chapter_scripts: ChapterScripts) -> dg.SensorResult:
        previous, reported_names = _load_cursor(context.cursor)
        bad_names: list[str] = []
        current: dict[str, dict] = {}
        run_requests: list[dg.RunRequest] = []
        invalid: list[dict[str, str]] = []
        waiting: dict[str, list[str]] = {}
        profiled = context.instance.get_materialized_partitions(queen_profile.key)
        queens = set(context.instance.get_dynamic_partitions(QUEENS))

        scripts, refused = scan_scripts(Path(chapter_scripts.chapters_dir))
        for path, reason in sorted(refused.items()):
            bad_names.append(path.name)  # a link or special file: never read, reported once
            if path.name not in reported_names:
                invalid.append({"file": str(path), "error": f"{path} {reason}"})
        for path in scripts:
            slug = chapter_slug(path)
            if not is_valid_slug(slug):
                bad_names.append(path.name)
                if path.name not in reported_names:
                    invalid.append({"file": str(path), "error": f"file name {slug!r} is not a valid slug"})
                continue
            before = previous.get(slug, {})
            stats, _ = fingerprint_files({path.name: path}, before.get("stats"))
            digest = content_digest(stats)
            entry = {"stats": stats, "digest": digest, "requested": before.get("requested"), "gen": before.get("gen", 0)}
            current[slug] = entry
            if digest == entry["requested"] or digest == before.get("unusable"):
                if digest == before.get("unusable"):
                    entry["unusable"] = digest  # reported when first seen; again only once it changes
                continue
            try:
                chapter = parse_chapter(path).chapter
            except ChapterFileError as error:
                entry["unusable"] = digest
                invalid.append({"file": str(path), "error": str(error)})
                context.log.warning(f"chapter script not usable, no run requested: {error}")
                continue
            unprofiled = sorted(q for q in chapter.front.cast if q in queens and q not in profiled)
            if unprofiled:
                waiting[slug] = unprofiled
                continue
            entry.update(requested=digest, gen=entry["gen"] + 1)
            # The generation keeps the key unique per change, so A → B → A still gets its run.
            run_requests.append(
                dg.RunRequest(run_key=f"chapter:{slug}:{entry['gen']}:{digest}", partition_key=slug, job_name=chapter_job.name)
            )

        known = set(context.instance.get_dynamic_partitions(CHAPTERS))
        new_partitions = sorted(set(current) - known)
        removed = sorted(set(previous) - set(current))
        for slug in removed:
            context.log.warning(f"chapter script {slug!r} was removed; its partition and bundle are kept (delete them in the UI)")
        for slug, names in waiting.items():
            context.log.info(f"chapter {slug!r} waits for queen_profile of {', '.join(names)}")

        asset_events = []
        if new_partitions or removed or invalid or not context.cursor:
            asset_events.append(dg.AssetMaterialization(
                asset_key=CHAPTER_INDEX,
                metadata={
                    "chapters": len(current),
                    "added": dg.MetadataValue.json(new_partitions),
                    "removed": dg.MetadataValue.json(removed),
                    "invalid": dg.MetadataValue.json(invalid),
                    "waiting": dg.MetadataValue.json(waiting),
                },
            ))
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[chapters_partitions.build_add_request(new_partitions)] if new_partitions else [],
            asset_events=asset_events,
            cursor=json.dumps({"v": CURSOR_VERSION, "chapters": current, "bad_names": bad_names}, separators=(",", ":")),
        )

    return chapters_sensor
