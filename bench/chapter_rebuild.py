"""Wall time of building the demo chapter's bundle, and of rebuilding it after a one-line edit.

    .venv/bin/python bench/chapter_rebuild.py [--edits 3]

Sets up the demo queens in a temp folder (references, identity, profile, voice lines: what
the chapter reads), then runs chapter_job for the demo chapter from scratch, and once per
edit changes one line's text and runs it again. Prints each run's wall time, the lines it
synthesised, and the ratio of the first rebuild to the first build.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import dagster as dg

from hydra_assets.definitions import build_definitions, local_resources
from hydra_assets.domain.demo_chapter import DEMO_CHAPTER, DEMO_SCRIPT, write_demo_chapter
from hydra_assets.domain.demo_data import DEMO_QUEENS, write_demo_data
from hydra_assets.domain.demo_dialogue import write_demo_dialogue
from hydra_assets.settings import SETTINGS

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
EDITED = "About forty minutes, if the wind stays with us."


def synthesized(result) -> list[str]:
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey("chapter_dialogue"):
            return event.materialization.metadata["synthesized"].value
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        root = Path(tmp)
        settings = replace(SETTINGS, roster_dir=str(root / "roster"), storage_root=str(root / "storage"),
                           catalog_url=f"sqlite:///{root / 'catalog.db'}")
        write_demo_data(root / "roster", root / "storage" / "reference_images")
        write_demo_dialogue(root / "roster")
        script = write_demo_chapter(root / "chapters")
        defs = build_definitions(local_resources(settings))
        slugs = [q.slug for q in DEMO_QUEENS]
        instance.add_dynamic_partitions("queens", slugs)
        instance.add_dynamic_partitions("chapters", [DEMO_CHAPTER])
        for slug in slugs:
            for job in ("queen_reference_job", "queen_voice_job"):
                defs.resolve_job_def(job).execute_in_process(partition_key=slug, instance=instance, run_config=QUIET)
        job = defs.resolve_job_def("chapter_job")
        timings = []
        for run in range(args.edits + 1):
            if run:
                script.write_text(DEMO_SCRIPT.replace(EDITED, EDITED.replace("forty", f"forty-{run}")))
            started = time.perf_counter()
            result = job.execute_in_process(partition_key=DEMO_CHAPTER, instance=instance, run_config=QUIET)
            timings.append(time.perf_counter() - started)
            assert result.success
            label = "build" if run == 0 else f"rebuild after one-line edit {run}"
            print(f"{label:32s} {timings[-1]:6.2f} s  synthesised {len(synthesized(result))} line(s)")
        if len(timings) > 1:
            print(f"first rebuild / build: {timings[1] / timings[0]:.2f}")


if __name__ == "__main__":
    main()
