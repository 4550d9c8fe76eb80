"""`hydra`: demo data and the headless demo run.

`hydra demo` runs the same asset jobs the UI and sensors run, on the instance in
DAGSTER_HOME, so what it produced is visible in `dagster dev` afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hydra_assets import embeddings_cli
from hydra_assets.settings import SETTINGS

DEMO_STAGE_JOBS = ("queen_reference_job", "queen_lora_job", "overnight_job", "queen_voice_job")
"""The per-queen jobs `hydra demo` runs, in order: references → LoRA → tonight's images → voice."""
REPORT_JOB = "quality_report_job"
CHAPTER_JOB = "chapter_job"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _write_demo_data(roster_dir: Path, storage_root: Path, *, force: bool, chapters_dir: Path | None = None) -> int:
    from hydra_assets.domain.demo_chapter import write_demo_chapter
    from hydra_assets.domain.demo_data import DEMO_QUEENS, write_demo_data
    from hydra_assets.domain.demo_dialogue import write_demo_dialogue

    written = write_demo_data(roster_dir, storage_root / "reference_images", only_if_empty=not force)
    if written:
        print(f"wrote {len(written)} demo files: roster in {roster_dir}, references in {storage_root / 'reference_images'}")
    else:
        print(f"roster folder {roster_dir} is not empty; demo data not written (use --force to add it)")
    present = [d.slug for d in DEMO_QUEENS if (roster_dir / f"{d.slug}.yaml").is_file()]
    for path in write_demo_dialogue(roster_dir, slugs=present):
        print(f"wrote demo dialogue {path}")
    if chapter := write_demo_chapter(chapters_dir or Path(SETTINGS.chapters_dir)):
        print(f"wrote demo chapter {chapter}")
    return 0


def _metadata(result, asset: str) -> dict[str, object]:
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key.to_user_string() == asset:
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    return {}


def _summary_rows(result) -> dict[str, object]:
    """The headline numbers of one queen's stage, from its materialization metadata."""
    row: dict[str, object] = {}
    if meta := _metadata(result, "reference_images"):
        row["refs"] = f"{meta.get('accepted')}/{meta.get('accepted', 0) + meta.get('rejected', 0)}"
    if meta := _metadata(result, "reference_identity"):
        row["faces"] = meta.get("faces")
    if meta := _metadata(result, "queen_lora"):
        loss = meta.get("final_loss")
        row["lora"] = f"v{meta.get('version')}" + (" (reused)" if meta.get("reused") else "")
        row["loss"] = f"{loss:.3f}" if isinstance(loss, float) else "-"
    if meta := _metadata(result, "approved_images"):
        row["images"] = meta.get("generated")
        row["approved"] = meta.get("approved")
        rate = meta.get("approval_rate")
        row["rate"] = f"{rate:.0%}" if isinstance(rate, float) else "-"
    if meta := _metadata(result, "voice_lines"):
        row["lines"] = meta.get("line_count")
        row["audio s"] = meta.get("total_audio_seconds")
    failed_checks = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    if failed_checks:
        row["checks failed"] = ", ".join(sorted(set(failed_checks)))
    return row


def _print_table(rows: list[dict[str, object]]) -> None:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def _tonight() -> str:
    """Tonight's batch date in the studio's timezone (the nights partition includes it)."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(SETTINGS.timezone)).strftime("%Y-%m-%d")


def _chapter_row(slug: str, result) -> dict[str, object]:
    """The headline numbers of one chapter's bundle, from its materialization metadata."""
    row: dict[str, object] = {"chapter": slug}
    meta = _metadata(result, "chapter_bundle")
    if meta:
        loudness = meta.get("mean_loudness_lufs")
        row.update(scenes=meta.get("scenes"), images=meta.get("images"), lines=meta.get("lines"),
                   **{"audio s": meta.get("audio_seconds"), "LUFS": loudness if loudness is not None else "-"},
                   missing=len(meta.get("missing") or []) or "-", folder=meta.get("folder"))
    if dialogue := _metadata(result, "chapter_dialogue"):
        row["voiced"] = f"{dialogue.get('new')} new, {dialogue.get('reused', 0) + dialogue.get('shared_with_voice_lines', 0)} reused"
    row["status"] = "ok" if result.success else "FAILED"
    return row


def _run_chapters(instance, execute) -> tuple[list[dict[str, object]], int]:
    """Every script in the chapters folder through chapter_job (what chapters_sensor requests)."""
    from hydra_assets.domain.chapters import chapter_slug, script_files
    from hydra_assets.domain.roster import is_valid_slug
    from hydra_assets.partitions import CHAPTERS

    slugs = [s for s in (chapter_slug(p) for p in script_files(Path(SETTINGS.chapters_dir))) if is_valid_slug(s)]
    instance.add_dynamic_partitions(CHAPTERS, slugs)
    rows = []
    for slug in slugs:
        started = time.perf_counter()
        row = _chapter_row(slug, execute(CHAPTER_JOB, slug))
        row["s"] = f"{time.perf_counter() - started:.1f}"
        rows.append(row)
    return rows, sum(1 for r in rows if r["status"] != "ok")


def _run_demo(roster_dir: Path, storage_root: Path) -> int:
    import dagster as dg

    from hydra_assets.definitions import defs
    from hydra_assets.domain.roster import load_roster
    from hydra_assets.domain.storage import StorageLayout
    from hydra_assets.partitions import QUEENS, queen_night_key

    _write_demo_data(roster_dir, storage_root, force=False)
    roster = load_roster(roster_dir)
    for error in roster.errors:
        print(f"skipped: {error}", file=sys.stderr)
    if not roster.queens:
        print(f"no usable queens in {roster_dir}", file=sys.stderr)
        return 1
    night = _tonight()
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(QUEENS, list(roster.queens))
    rows, failed = [], 0
    started = time.perf_counter()

    def execute(job_name: str, partition_key: str):
        return defs.resolve_job_def(job_name).execute_in_process(
            partition_key=partition_key, instance=instance, raise_on_error=False, run_config=QUIET_LOGS
        )

    for slug in roster.queens:
        row: dict[str, object] = {"queen": slug}
        for job_name in DEMO_STAGE_JOBS:
            key = queen_night_key(slug, night) if job_name == "overnight_job" else slug
            result = execute(job_name, key)
            stage = _summary_rows(result)
            if earlier := row.get("checks failed"):
                stage["checks failed"] = ", ".join(filter(None, [earlier, stage.get("checks failed")]))
            row.update(stage)
            if not result.success:
                failed += 1
                row["status"] = f"FAILED in {job_name}"
                break
        else:
            row["status"] = "ok"
        rows.append(row)
    report = execute(REPORT_JOB, night)
    chapter_rows, chapters_failed = _run_chapters(instance, execute)
    failed += chapters_failed
    print()
    _print_table(rows)
    if chapter_rows:
        print()
        _print_table(chapter_rows)
    report_file = StorageLayout(storage_root).report_path(night)
    if report.success:
        print(f"\nquality report for {night}: {report_file}")
    else:
        failed += 1
        print(f"\nquality report for {night} FAILED", file=sys.stderr)
    print(f"{len(rows)} queens, {failed} failed, {time.perf_counter() - started:.1f}s; instance: {instance.root_directory}")
    return 1 if failed else 0


def _run_review(host: str, port: int) -> int:
    import uvicorn

    from hydra_assets.review.app import create_app
    from hydra_assets.review.config import ReviewConfig

    config = ReviewConfig.from_settings(SETTINGS)
    print(f"hydra review: http://{host}:{port} (storage {config.storage_root}, Dagster {config.dagster_url})", flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")
    return 0


def _request(args: argparse.Namespace) -> int:
    """Validate and queue one generation task; generation_task_sensor picks it up."""
    from hydra_assets.domain.generation_tasks import TaskRequestError, validate_request
    from hydra_assets.domain.roster import RosterError, roster_files, slug_for_file
    from resources.catalog import CatalogResource
    from resources.storage import HydraStorage

    storage = HydraStorage(root=SETTINGS.storage_root, roster_dir=SETTINGS.roster_dir)
    roster = [slug_for_file(p) for p in roster_files(Path(SETTINGS.roster_dir))]
    config = {"asset_type": args.type, "count": args.count, "prompt_addition": args.prompt}
    try:
        request = validate_request(queen=args.queen, roster_slugs=roster, config=config, priority=args.priority, created_by=args.by)
        queen = storage.load_queen(args.queen)
    except (TaskRequestError, RosterError) as error:
        print(f"hydra request refused: {error}", file=sys.stderr)
        return 2
    catalog = CatalogResource(url=SETTINGS.catalog_url)
    try:
        catalog.upsert_queen(queen)  # as queen_profile mirrors her; the task row refers to her catalog id
        task_id = catalog.create_task(request)
    finally:
        catalog.dispose()
    print(task_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hydra", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo_data = commands.add_parser("demo-data", help="write the demo roster, its reference photos and the demo chapter")
    demo_data.add_argument("--roster-dir", type=Path, default=Path(SETTINGS.roster_dir))
    demo_data.add_argument("--storage-root", type=Path, default=Path(SETTINGS.storage_root))
    demo_data.add_argument("--force", action="store_true", help="write even if the roster folder has queens")
    demo_data.add_argument("--chapters-dir", type=Path, default=None, help="where the demo chapter script goes")
    commands.add_parser(
        "demo", help="run every pipeline stage for the roster (HYDRA_* settings) headless and print a summary"
    )
    dev = commands.add_parser("dev", help="the Dagster UI and daemon (dg dev) with the review app beside it")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument("--review-port", type=int, default=SETTINGS.review_port)
    review = commands.add_parser("review", help="serve the morning review of the nights' images (HYDRA_* settings)")
    review.add_argument("--host", default="127.0.0.1")
    review.add_argument("--port", type=int, default=3100)
    request = commands.add_parser("request", help="queue a generation task: images beyond the nightly targets")
    request.add_argument("queen", help="the queen's slug (a roster file)")
    request.add_argument("--type", required=True, help="asset type, e.g. expression")
    request.add_argument("--count", type=int, required=True, help="images, 1-200")
    request.add_argument("--prompt", default="", help="added to each image's prompt")
    request.add_argument("--priority", default="normal", help="critical, high, normal, low or idle")
    request.add_argument("--by", default="cli", help="who asks (created_by)")
    embeddings_cli.add_parsers(commands)
    args = parser.parse_args(argv)
    if args.command in embeddings_cli.COMMANDS:
        return embeddings_cli.run(args)
    if args.command == "request":
        return _request(args)
    if args.command == "review":
        return _run_review(args.host, args.port)
    if args.command == "dev":
        from hydra_assets.dev_server import run_dev

        return run_dev(args.port, args.review_port)
    if args.command == "demo-data":
        return _write_demo_data(args.roster_dir, args.storage_root, force=args.force, chapters_dir=args.chapters_dir)
    return _run_demo(Path(SETTINGS.roster_dir), Path(SETTINGS.storage_root))


if __name__ == "__main__":
    sys.exit(main())
