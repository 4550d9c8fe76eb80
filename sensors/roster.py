"""roster_sensor: the roster folder drives the queens partitions, the reference runs and the voice runs.

It owns the dynamic ``queens`` partitions (assets never add them), requests a reference run
only for queens whose roster file or reference folder changed in content, requests a voice
run when a queen's dialogue file changed (once her profile exists), and reports removed
roster files instead of deleting partitions: deleting a partition would hide the queen's
history in the UI.
"""


import json
from pathlib import Path

import dagster as dg

from hydra_assets.domain.dialogue import dialogue_path
from hydra_assets.domain.fingerprints import (
    FileStatsStore,
    content_digest,
    fingerprint_files,
    fingerprint_scan,
    scan_files,
    scan_folder,
    stat_digest,
)
from hydra_assets.domain.roster import RosterError, is_valid_slug, load_queen, roster_files, slug_for_file
from hydra_assets.partitions import QUEENS, queens_partitions
from hydra_assets.queen_profile import queen_profile
from jobs import queen_reference_job, queen_voice_job
from resources.storage import HydraStorage

CURSOR_VERSION = 2
"""2: per queen only digests (v1 kept every file's stats and grew with the reference folders)."""
ROSTER_INDEX = dg.AssetKey("roster_index")

roster_index = dg.AssetSpec(
    ROSTER_INDEX,
    group_name="roster",
    kinds={"yaml"},
    description="What the roster sensor saw: queens in the roster, files removed from it, files it could not use.",
)


def _load_cursor(raw: str | None) -> dict:
    if not raw:
        return {}
    cursor = json.loads(raw)
    queens = cursor.get("queens", {})
    if cursor.get("v") == CURSOR_VERSION:
        return queens
    if cursor.get("v") == 1:
        # v1 kept the per-file stats in the cursor: hand them over once, so upgrading neither
        # re-hashes every reference nor re-runs every queen.
        return {
            slug: {
                **{k: v for k, v in entry.items() if k not in ("roster", "refs")},
                "v1_files": {**{f"roster/{k}": v for k, v in entry.get("roster", {}).items()}, **entry.get("refs", {})},
            }
            for slug, entry in queens.items()
        }
    return {}


def _dialogue_change(
    slug: str, roster_dir: Path, before: dict, entry: dict, profiled: set[str]
) -> tuple[dg.RunRequest | None, int]:
    """A voice run when the queen's dialogue changed since the last one; records it in ``entry``.

    voice_lines reads the queen's profile, so a change waits (stays pending in the cursor)
    until queen_profile has been materialized for her, typically by the reference run.
    """
    path = dialogue_path(roster_dir, slug)
    stats, hashed = fingerprint_files({path.name: path} if path else {}, before.get("dialogue"))
    voiced, voice_gen = before.get("voiced"), before.get("voice_gen", 0)
    entry.update(dialogue=stats, voiced=voiced, voice_gen=voice_gen)
    if not stats:
        return None, hashed
    digest = content_digest(stats)
    if digest == voiced or slug not in profiled:
        return None, hashed
    entry.update(voiced=digest, voice_gen=voice_gen + 1)
    request = dg.RunRequest(
        run_key=f"voice:{slug}:{voice_gen + 1}:{digest}", partition_key=slug, job_name=queen_voice_job.name
    )
    return request, hashed


def build_roster_sensor(default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name="roster_sensor",
        jobs=[queen_reference_job, queen_voice_job],
        minimum_interval_seconds=30,
        default_status=default_status,
        description="Adds a queens partition per roster file, materializes references when they change and "
        "voice lines when the dialogue changes.",
    )
    def roster_sensor(context: dg.SensorEvaluationContext, storage: HydraStorage) -> dg.SensorResult:
        previous = _load_cursor(context.cursor)
        reference_root = storage.layout.root / "reference_images"
        file_stats = FileStatsStore(storage.layout.sensor_state("roster_sensor"))
        current: dict[str, dict] = {}
        run_requests: list[dg.RunRequest] = []
        invalid: list[dict[str, str]] = []
        hashed = 0
        profiled = context.instance.get_materialized_partitions(queen_profile.key)

        for path in roster_files(Path(storage.roster_dir)):
            slug = slug_for_file(path)
            if not is_valid_slug(slug):
                invalid.append({"file": str(path), "error": f"file name {slug!r} is not a valid slug"})
                continue
            before = previous.get(slug, {})
            scan = {**scan_files({f"roster/{path.name}": path}), **scan_folder(reference_root / slug)}
            stats_digest = stat_digest(scan)
            digest = before.get("digest")
            if stats_digest != before.get("stat") or digest is None:
                known_stats = before.get("v1_files") or file_stats.load(slug)
                stats, n_hashed = fingerprint_scan(scan, known_stats)
                file_stats.save(slug, stats)
                hashed += n_hashed
                digest = content_digest(stats)
            generation = before.get("gen", 0)
            current[slug] = {"stat": stats_digest, "digest": digest, "gen": generation}
            voice_request, n_dialogue = _dialogue_change(slug, Path(storage.roster_dir), before, current[slug], profiled)
            hashed += n_dialogue
            if voice_request:
                run_requests.append(voice_request)
            if before.get("digest") == digest:
                continue
            try:
                load_queen(path)
            except RosterError as error:
                invalid.append({"file": str(path), "error": str(error)})
                context.log.warning(f"roster file not usable, no run requested: {error}")
                continue
            # The generation makes the key unique per change, so going back to an earlier
            # content (A → B → A) still gets its run instead of being deduplicated.
            current[slug]["gen"] = generation + 1
            run_requests.append(
                dg.RunRequest(
                    run_key=f"{slug}:{generation + 1}:{digest}", partition_key=slug, job_name=queen_reference_job.name
                )
            )

        known = set(context.instance.get_dynamic_partitions(QUEENS))
        new_partitions = sorted(set(current) - known)
        removed = sorted(set(previous) - set(current))
        for slug in removed:
            context.log.warning(
                f"roster file for {slug!r} was removed; its partition and outputs are kept (delete them in the UI)"
            )
        for slug in sorted(p.name for p in reference_root.glob("*") if p.is_dir() and p.name not in current):
            context.log.info(f"reference folder {reference_root / slug} has no roster file; ignored")

        asset_events = []
        if new_partitions or removed or invalid or not context.cursor:
            asset_events.append(
                dg.AssetMaterialization(
                    asset_key=ROSTER_INDEX,
                    metadata={
                        "queens": len(current),
                        "added": dg.MetadataValue.json(new_partitions),
                        "removed": dg.MetadataValue.json(removed),
                        "invalid": dg.MetadataValue.json(invalid),
                    },
                )
            )
        context.log.info(
            f"{len(current)} queens, {len(new_partitions)} new, {len(run_requests)} runs requested, "
            f"{len(removed)} removed, {hashed} files hashed"
        )
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[queens_partitions.build_add_request(new_partitions)] if new_partitions else [],
            asset_events=asset_events,
            cursor=json.dumps({"v": CURSOR_VERSION, "queens": current}, separators=(",", ":")),
        )

    return roster_sensor
