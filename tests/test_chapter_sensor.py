"""chapters_sensor: the roster sensor's rules over the chapters folder."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from hydra_assets.domain.demo_chapter import DEMO_SCRIPT, write_demo_chapter
from hydra_assets.partitions import CHAPTERS
from resources.chapters import ChapterScripts
from tests.helpers import hydra_definitions

CAST = ("nova-sterling", "ada-marlowe")


@pytest.fixture
def workspace(tmp_path):
    folder = tmp_path / "chapters"
    folder.mkdir()
    write_demo_chapter(folder)
    scripts = ChapterScripts(chapters_dir=str(folder))
    sensor = hydra_definitions(tmp_path).resolve_sensor_def("chapters_sensor")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("queens", list(CAST))
        for slug in CAST:
            instance.report_runless_asset_event(dg.AssetMaterialization("queen_profile", partition=slug))
        yield folder, scripts, sensor, instance


def tick(sensor, instance, scripts, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"chapter_scripts": scripts})
    result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def index(result: dg.SensorResult) -> dict:
    [event] = result.asset_events
    assert event.asset_key == dg.AssetKey("chapter_index")
    return {k: v.value for k, v in event.metadata.items()}


def test_new_script_adds_a_partition_and_requests_the_chapter_job(workspace):
    _, scripts, sensor, instance = workspace
    result = tick(sensor, instance, scripts)
    [add] = result.dynamic_partitions_requests
    assert (add.partitions_def_name, list(add.partition_keys)) == (CHAPTERS, ["chapter-01"])
    [run] = result.run_requests
    assert (run.partition_key, run.job_name) == ("chapter-01", "chapter_job")
    assert index(result)["added"] == ["chapter-01"]


def test_touch_requests_nothing_and_a_content_change_requests_a_run(workspace):
    folder, scripts, sensor, instance = workspace
    first = tick(sensor, instance, scripts)
    path = folder / "chapter-01.md"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    touched = tick(sensor, instance, scripts, first.cursor)
    assert touched.run_requests == [] and not touched.dynamic_partitions_requests and touched.asset_events == []
    path.write_text(DEMO_SCRIPT.replace("About forty minutes", "About fifty minutes"))
    changed = tick(sensor, instance, scripts, touched.cursor)
    [run] = changed.run_requests
    assert run.partition_key == "chapter-01" and run.run_key != first.run_requests[0].run_key
    # Back to the first text: a new run key, so the run is not deduplicated away.
    path.write_text(DEMO_SCRIPT)
    back = tick(sensor, instance, scripts, changed.cursor)
    [again] = back.run_requests
    assert again.run_key not in {first.run_requests[0].run_key, run.run_key}


def test_removed_script_is_reported_and_its_partition_kept(workspace):
    folder, scripts, sensor, instance = workspace
    first = tick(sensor, instance, scripts)
    (folder / "chapter-01.md").unlink()
    result = tick(sensor, instance, scripts, first.cursor)
    assert index(result)["removed"] == ["chapter-01"] and result.run_requests == []
    assert instance.get_dynamic_partitions(CHAPTERS) == ["chapter-01"]
    assert not any(getattr(r, "partition_keys", None) and "delete" in type(r).__name__.lower()
                   for r in result.dynamic_partitions_requests or [])


def test_unusable_scripts_are_reported_not_run(workspace):
    folder, scripts, sensor, instance = workspace
    (folder / "Bad Name.md").write_text(DEMO_SCRIPT)
    (folder / "broken.md").write_text("---\ntitle: [unclosed\n---\n")
    result = tick(sensor, instance, scripts)
    invalid = {entry["file"].rsplit("/", 1)[-1]: entry["error"] for entry in index(result)["invalid"]}
    assert "not a valid slug" in invalid["Bad Name.md"]
    assert "broken.md:2: front matter is not valid YAML" in invalid["broken.md"]
    assert [r.partition_key for r in result.run_requests] == ["chapter-01"]
    quiet = tick(sensor, instance, scripts, result.cursor)  # reported once, not on every tick
    assert quiet.asset_events == [] and quiet.run_requests == []
    # The broken script still gets its partition (it is a chapter file), and its run once it is fixed.
    (folder / "broken.md").write_text(DEMO_SCRIPT)
    fixed = tick(sensor, instance, scripts, quiet.cursor)
    assert [r.partition_key for r in fixed.run_requests] == ["broken"]


def test_run_waits_for_the_cast_profiles(tmp_path):
    folder = tmp_path / "chapters"
    folder.mkdir()
    write_demo_chapter(folder)
    scripts = ChapterScripts(chapters_dir=str(folder))
    sensor = hydra_definitions(tmp_path).resolve_sensor_def("chapters_sensor")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("queens", list(CAST))
        instance.report_runless_asset_event(dg.AssetMaterialization("queen_profile", partition="nova-sterling"))
        waiting = tick(sensor, instance, scripts)
        assert waiting.run_requests == [] and index(waiting)["waiting"] == {"chapter-01": ["ada-marlowe"]}
        instance.report_runless_asset_event(dg.AssetMaterialization("queen_profile", partition="ada-marlowe"))
        ready = tick(sensor, instance, scripts, waiting.cursor)
        assert [r.partition_key for r in ready.run_requests] == ["chapter-01"]
        assert tick(sensor, instance, scripts, ready.cursor).run_requests == []


def test_a_linked_script_is_refused_and_reported_once_never_read(tmp_path):
    from hydra_assets.domain.chapters import scan_scripts

    outside = tmp_path / "elsewhere.md"
    outside.write_text("---\ntitle: Not ours\nnumber: 9\ncast: []\n---\n")
    folder = tmp_path / "chapters"
    folder.mkdir()
    (folder / "linked.md").symlink_to(outside)
    (folder / "dangling.md").symlink_to(tmp_path / "missing.md")
    scripts, refused = scan_scripts(folder)
    assert scripts == []
    assert set(refused) == {folder / "linked.md", folder / "dangling.md"}
    assert "outside" in refused[folder / "linked.md"] and "does not exist" in refused[folder / "dangling.md"]
