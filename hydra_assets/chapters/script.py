"""chapter_script: the chapter's markdown script, parsed and validated against the roster.

Its cast's queen_profile partitions live in another dynamic dimension, which no partition
mapping spans; the lineage is recorded instead: each cast queen's profile data version and
roster sha256 go into the metadata and into this asset's data version, so a roster change
shows the chapter as stale.
"""


import hashlib
import json

import dagster as dg

from hydra_assets.chapters import paths
from hydra_assets.domain.chapters import ChapterFileError, parse_chapter
from hydra_assets.domain.storage import StorageLayout, atomic_write_bytes, atomic_write_json, read_json
from hydra_assets.metadata import markdown_table
from hydra_assets.partitions import chapters_partitions
from hydra_assets.queen_profile import queen_profile
from resources.chapters import ChapterScripts
from resources.storage import HydraStorage

ASSET = "chapter_script"
CHECK = "script_valid"


def profiled_queens(layout: StorageLayout) -> set[str]:
    folder = layout.root / "assets" / "profiles"
    return {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()


def cast_lineage(instance: dg.DagsterInstance, layout: StorageLayout, cast: list[str]) -> dict[str, dict]:
    """Per cast queen: her profile's latest data version and the roster file's sha256 it was built from."""
    lineage = {}
    for slug in cast:
        profile = read_json(layout.profile_path(slug)) or {}
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=queen_profile.key, asset_partitions=[slug]), limit=1
        ).records
        version = None
        if records and records[0].asset_materialization is not None:
            version = records[0].asset_materialization.tags.get("dagster/data_version")
        lineage[slug] = {"profile_data_version": version, "roster_sha256": profile.get("roster_sha256")}
    return lineage


@dg.asset(
    partitions_def=chapters_partitions,
    group_name="chapters",
    kinds={"markdown", "json"},
    check_specs=[dg.AssetCheckSpec(CHECK, asset=ASSET, description="Every line of the script passed validation.")],
    description="The chapter's script parsed into scenes, lines and stage directions; bad lines are listed "
    "(file, line, rule) and left out, the rest kept.",
)
def chapter_script(context: dg.AssetExecutionContext, storage: HydraStorage, chapter_scripts: ChapterScripts):
    chapter_slug = context.partition_key
    layout = storage.layout
    path = chapter_scripts.script_path(chapter_slug)
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() else None
        if text is None:
            raise ChapterFileError(path, None, "no such script (the chapter's file was removed or renamed)")
        parsed = parse_chapter(path, text, known_queens=profiled_queens(layout))
    except (ChapterFileError, OSError, UnicodeDecodeError) as error:
        raise dg.Failure(description=str(error), metadata={"file": str(path)}) from error
    chapter = parsed.chapter
    for error in parsed.errors:
        context.log.warning(str(error))
    lineage = cast_lineage(context.instance, layout, chapter.front.cast)
    document = {
        "chapter": chapter.model_dump(mode="json"),
        "errors": [{"line": e.line, "rule": e.rule} for e in parsed.errors],
        "cast_lineage": lineage,
    }
    atomic_write_bytes(paths.script_copy(layout, chapter_slug), text.encode("utf-8"))
    atomic_write_json(paths.script_json(layout, chapter_slug), document)
    version = hashlib.sha256(json.dumps([chapter.sha256, lineage], sort_keys=True).encode()).hexdigest()[:16]
    rows = [{"line": e.line, "rule": e.rule[:200]} for e in parsed.errors]
    return dg.MaterializeResult(
        metadata={
            "title": chapter.front.title,
            "number": chapter.front.number,
            "cast": dg.MetadataValue.json(chapter.front.cast),
            "scenes": len(chapter.scenes),
            "lines": len(chapter.lines),
            "errors": len(parsed.errors),
            "error_table": markdown_table(rows, ["line", "rule"]),
            "cast_lineage": dg.MetadataValue.json(lineage),
            "script": dg.MetadataValue.path(str(path)),
            "script_sha256": chapter.sha256,
        },
        data_version=dg.DataVersion(version),
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK,
                passed=not parsed.errors,
                severity=dg.AssetCheckSeverity.WARN,
                description="; ".join(str(e) for e in parsed.errors[:5]) or None,
                metadata={"errors": len(parsed.errors)},
            )
        ],
    )


def load_script(layout: StorageLayout, chapter: str) -> dict:
    document = read_json(paths.script_json(layout, chapter))
    if document is None:
        raise dg.Failure(f"{paths.script_json(layout, chapter)} is missing: materialize chapter_script for {chapter} first")
    return document
