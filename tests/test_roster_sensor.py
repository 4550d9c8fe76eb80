from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from hydra_assets.domain import fingerprints
from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.partitions import QUEENS
from resources.storage import HydraStorage
from tests.helpers import hydra_definitions


@pytest.fixture
def workspace(tmp_path):
    roster_dir, root = tmp_path / "roster", tmp_path / "storage"
    write_demo_data(roster_dir, root / "reference_images")
    storage = HydraStorage(root=str(root), roster_dir=str(roster_dir))
    sensor = hydra_definitions(tmp_path).resolve_sensor_def("roster_sensor")
    with dg.instance_for_test() as instance:
        yield roster_dir, root, storage, sensor, instance


def tick(sensor, instance, storage, cursor=None) -> dg.SensorResult:
    """One evaluation, with its partition requests applied as the daemon would."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage})
    result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def removed_in(result: dg.SensorResult) -> list[str]:
    [event] = result.asset_events
    return event.metadata["removed"].value


def test_first_tick_adds_partitions_and_requests_runs(workspace):
    _, _, storage, sensor, instance = workspace
    result = tick(sensor, instance, storage)
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == QUEENS
    assert sorted(add.partition_keys) == ["ada-marlowe", "nova-sterling"]
    assert sorted(r.partition_key for r in result.run_requests) == ["ada-marlowe", "nova-sterling"]
    assert {r.job_name for r in result.run_requests} <= {None, "queen_reference_job"}


def test_unchanged_tick_requests_nothing_and_hashes_nothing(workspace, monkeypatch):
    _, _, storage, sensor, instance = workspace
    first = tick(sensor, instance, storage)
    hashed: list[Path] = []
    real_hash = fingerprints.sha256_file
    monkeypatch.setattr(fingerprints, "sha256_file", lambda p: hashed.append(p) or real_hash(p))
    second = tick(sensor, instance, storage, first.cursor)
    assert second.run_requests == []
    assert not second.dynamic_partitions_requests
    assert hashed == []


def test_changed_reference_requests_one_run_and_touch_alone_none(workspace, monkeypatch):
    _, root, storage, sensor, instance = workspace
    cursor = tick(sensor, instance, storage).cursor
    reference = root / "reference_images" / "ada-marlowe" / "portraits" / "front.png"

    stat = reference.stat()
    os.utime(reference, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    hashed: list[Path] = []
    real_hash = fingerprints.sha256_file
    monkeypatch.setattr(fingerprints, "sha256_file", lambda p: hashed.append(p) or real_hash(p))
    touched = tick(sensor, instance, storage, cursor)
    assert touched.run_requests == []
    assert hashed == [reference]

    reference.write_bytes(reference.read_bytes() + b"\0")
    changed = tick(sensor, instance, storage, touched.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["ada-marlowe"]


def test_new_reference_file_requests_a_run(workspace):
    _, root, storage, sensor, instance = workspace
    cursor = tick(sensor, instance, storage).cursor
    folder = root / "reference_images" / "nova-sterling" / "expressions"
    (folder / "copy.png").write_bytes((folder / "bright.png").read_bytes())
    assert [r.partition_key for r in tick(sensor, instance, storage, cursor).run_requests] == ["nova-sterling"]


def test_removed_roster_file_is_reported_not_deleted(workspace):
    roster_dir, _, storage, sensor, instance = workspace
    cursor = tick(sensor, instance, storage).cursor
    (roster_dir / "ada-marlowe.yaml").unlink()
    result = tick(sensor, instance, storage, cursor)
    assert removed_in(result) == ["ada-marlowe"]
    assert all(isinstance(r, dg.AddDynamicPartitionsRequest) for r in result.dynamic_partitions_requests or [])
    assert "ada-marlowe" in instance.get_dynamic_partitions(QUEENS)
    assert "ada-marlowe" not in json.loads(result.cursor)["queens"]


def test_invalid_roster_file_gets_no_run_until_fixed(workspace):
    roster_dir, _, storage, sensor, instance = workspace
    cursor = tick(sensor, instance, storage).cursor
    path = roster_dir / "nova-sterling.yaml"
    good = path.read_text()
    path.write_text(good.replace("tier: core", "tier: royal"))
    broken = tick(sensor, instance, storage, cursor)
    assert broken.run_requests == []
    [event] = broken.asset_events
    [invalid] = event.metadata["invalid"].value
    assert invalid["file"] == str(path) and "tier" in invalid["error"]

    path.write_text(good)
    fixed = tick(sensor, instance, storage, broken.cursor)
    assert [r.partition_key for r in fixed.run_requests] == ["nova-sterling"]


def voice_requests(result: dg.SensorResult) -> list[str]:
    return [r.partition_key for r in result.run_requests if r.job_name == "queen_voice_job"]


def test_dialogue_change_requests_a_voice_run_once_the_profile_exists(workspace):
    from hydra_assets.domain.demo_dialogue import write_demo_dialogue

    roster_dir, _, storage, sensor, instance = workspace
    write_demo_dialogue(roster_dir)
    first = tick(sensor, instance, storage)
    assert voice_requests(first) == []  # no profile yet: voice_lines would have nothing to read

    instance.report_runless_asset_event(dg.AssetMaterialization("queen_profile", partition="nova-sterling"))
    second = tick(sensor, instance, storage, first.cursor)
    assert voice_requests(second) == ["nova-sterling"] and second.run_requests[0].job_name == "queen_voice_job"
    assert tick(sensor, instance, storage, second.cursor).run_requests == []

    dialogue = roster_dir / "nova-sterling.dialogue.yaml"
    dialogue.write_text(dialogue.read_text().replace("Good morning.", "Good evening."))
    edited = tick(sensor, instance, storage, second.cursor)
    assert voice_requests(edited) == ["nova-sterling"]
    assert [r.job_name for r in edited.run_requests] == ["queen_voice_job"]  # references untouched
    assert edited.run_requests[0].run_key != second.run_requests[0].run_key


def test_cursor_size_does_not_grow_with_reference_files(workspace):
    _, root, storage, sensor, instance = workspace
    small = tick(sensor, instance, storage).cursor
    folder = root / "reference_images" / "nova-sterling" / "portraits"
    source = next(folder.iterdir()).read_bytes()
    for index in range(300):
        (folder / f"extra-{index:03d}.png").write_bytes(source + index.to_bytes(2, "big"))
    large = tick(sensor, instance, storage, small).cursor
    assert abs(len(large) - len(small)) < 16  # only digests and a generation counter
    assert len(json.loads(large)["queens"]["nova-sterling"]) <= 6


def test_lost_file_stats_cost_a_rehash_not_a_run(workspace, monkeypatch):
    _, root, storage, sensor, instance = workspace
    cursor = tick(sensor, instance, storage).cursor
    state = storage.layout.sensor_state("roster_sensor")
    (state / "ada-marlowe.json").write_text("{not json")
    reference = root / "reference_images" / "ada-marlowe" / "portraits" / "front.png"
    stat = reference.stat()
    os.utime(reference, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    hashed: list[Path] = []
    real_hash = fingerprints.sha256_file
    monkeypatch.setattr(fingerprints, "sha256_file", lambda p: hashed.append(p) or real_hash(p))
    result = tick(sensor, instance, storage, cursor)
    assert result.run_requests == []
    assert reference in hashed and len(hashed) > 1  # the whole queen re-hashed, nothing requested
    assert json.loads((state / "ada-marlowe.json").read_text())["files"]


def test_a_version_1_cursor_upgrades_without_hashing_or_runs(workspace, monkeypatch):
    roster_dir, root, storage, sensor, instance = workspace
    tick(sensor, instance, storage)
    v1 = {"v": 1, "queens": {}}
    for slug in ("ada-marlowe", "nova-sterling"):
        roster = {f"{slug}.yaml": roster_dir / f"{slug}.yaml"}
        refs = fingerprints.folder_files(root / "reference_images" / slug)
        roster_stats, _ = fingerprints.fingerprint_files(roster, None)
        ref_stats, _ = fingerprints.fingerprint_files(refs, None)
        digest = fingerprints.content_digest({**{f"roster/{k}": v for k, v in roster_stats.items()}, **ref_stats})
        v1["queens"][slug] = {"roster": roster_stats, "refs": ref_stats, "digest": digest, "gen": 1}
    hashed: list[Path] = []
    real_hash = fingerprints.sha256_file
    monkeypatch.setattr(fingerprints, "sha256_file", lambda p: hashed.append(p) or real_hash(p))
    result = tick(sensor, instance, storage, json.dumps(v1))
    assert result.run_requests == [] and hashed == []
    assert json.loads(result.cursor)["v"] == 2
