"""A demo night, as the embedded deployment runs it, leaves each image's and each run's events in the catalog."""

import json
from collections import Counter

import dagster as dg
import pytest

from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.domain.storage import StorageLayout
from hydra_assets.partitions import QUEENS, queen_night_key
from resources.events import EventPublisher
from tests.helpers import hydra_definitions

SLUG = "nova-sterling"
NIGHT = "2026-11-20"


@pytest.mark.slow
def test_a_demo_night_leaves_the_event_sequence_of_every_image_and_run(tmp_path, capsys):
    write_demo_data(tmp_path / "roster", tmp_path / "storage" / "reference_images")
    defs = hydra_definitions(tmp_path)
    runs = {}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        for job_name, key in (
            ("queen_reference_job", SLUG),
            ("queen_lora_job", SLUG),
            ("overnight_job", queen_night_key(SLUG, NIGHT)),
            ("quality_report_job", NIGHT),
        ):
            result = defs.resolve_job_def(job_name).execute_in_process(partition_key=key, instance=instance)
            assert result.success, job_name
            runs[job_name] = result.run_id

    publisher = EventPublisher(catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}")
    events = publisher.read()
    assert {e.correlation_id for e in events} <= set(runs.values())
    assert not publisher.read(correlation_id=runs["queen_reference_job"])

    lora = [e.type.value for e in publisher.read(correlation_id=runs["queen_lora_job"])]
    assert lora[0] == "training.lora.started" and lora[-1] == "training.lora.completed"
    assert set(lora[1:-1]) == {"training.lora.progress"}

    night = publisher.read(correlation_id=runs["overnight_job"])
    assert night[0].type.value == "pipeline.overnight.started" and night[-1].type.value == "pipeline.overnight.completed"
    manifest = json.loads((StorageLayout(tmp_path / "storage").generated_dir(NIGHT, SLUG) / "manifest.json").read_text())
    per_image: dict[str, list[str]] = {}
    paths: dict[str, set[str]] = {}
    for event in night[1:-1]:
        per_image.setdefault(event.payload.image_id, []).append(event.type.value.removeprefix("generation.image."))
        paths.setdefault(event.payload.image_id, set()).add(event.payload.path)
    assert all(len(p) == 1 for p in paths.values()), "created and decided name the same file"
    assert {e.payload.queen_id for e in night[1:-1]} == {publisher.queen_id(SLUG)} != {None}
    assert set(per_image) == {entry["image_id"] for entry in manifest["images"]}
    assert all(kinds in (["created", "approved"], ["created", "rejected"]) for kinds in per_image.values()), per_image
    approved = sum(kinds[-1] == "approved" for kinds in per_image.values())
    assert night[-1].payload.stats.total_generated == len(per_image) and night[-1].payload.stats.total_approved == approved
    assert {e.source for e in night} == {"generated_images", "approved_images"}

    report = publisher.read(correlation_id=runs["quality_report_job"])
    assert [e.type.value for e in report] == ["pipeline.report.generated"]
    assert report[0].payload.stats.total_approved == approved

    counts = Counter(e.type.value for e in events)
    with capsys.disabled():
        print(f"\nevents of one demo night ({SLUG}, {NIGHT}): {dict(sorted(counts.items()))}")
    publisher.dispose()
