"""Family 8 (issue 13): links and foreign files in input folders are refused with a reason,
never read nor hashed into a manifest; the rule is the same for the reference stage, the roster
and the roster sensor's fingerprints (hydra_assets/domain/input_folders.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from hydra_assets.domain import fingerprints
from hydra_assets.domain.images import STATUS_ACCEPTED, STATUS_REJECTED, process_reference_folder
from hydra_assets.domain.input_folders import walk_folder
from hydra_assets.domain.roster import load_roster
from hydra_assets.domain.storage import sha256_file
from tests.test_reference_images import encode, photo
from tests.test_roster import VALID

# name in portraits/ → (how to make it, words the reason must contain)
ENTRIES = {
    "outside.jpg": ("link to a photo outside the folder", "outside"),
    "dangling.jpg": ("link to nothing", "does not exist"),
    "inside.jpg": ("link to own.jpg beside it", "even inside the folder"),
    "outside-dir": ("link to a folder of photos outside", "outside"),
    "pipe.jpg": ("FIFO", "not a regular file (FIFO)"),
    "up.jpg": ("relative link ../../outside/secret.jpg", "outside"),
}


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    source = tmp_path / "reference_images" / "nova-sterling"
    portraits = source / "portraits"
    portraits.mkdir(parents=True)
    (portraits / "own.jpg").write_bytes(encode(photo(1), "JPEG"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(encode(photo(2), "JPEG"))
    (outside / "more.jpg").write_bytes(encode(photo(3), "JPEG"))
    os.symlink(outside / "secret.jpg", portraits / "outside.jpg")
    os.symlink(tmp_path / "gone.jpg", portraits / "dangling.jpg")
    os.symlink("own.jpg", portraits / "inside.jpg")
    os.symlink(outside, portraits / "outside-dir")
    os.mkfifo(portraits / "pipe.jpg")
    os.symlink("../../../outside/secret.jpg", portraits / "up.jpg")
    return source, outside


def test_reference_stage_lists_every_link_as_rejected_and_never_hashes_its_target(tmp_path, folders):
    source, outside = folders
    manifest = process_reference_folder(source, tmp_path / "normalized")
    by_source = {entry.source: entry for entry in manifest.entries}
    assert by_source["portraits/own.jpg"].status == STATUS_ACCEPTED and len(manifest.accepted) == 1
    for name, (_, words) in ENTRIES.items():
        entry = by_source[f"portraits/{name}"]
        assert entry.status == STATUS_REJECTED and words in entry.reason, (name, entry.reason)
        assert entry.sha256 is None and entry.size_bytes is None and entry.normalized is None
    written = (tmp_path / "normalized" / "manifest.json").read_text()
    for secret in outside.iterdir():
        assert sha256_file(secret) not in written
    alone = tmp_path / "alone" / "portraits"
    alone.mkdir(parents=True)
    (alone / "own.jpg").write_bytes((source / "portraits" / "own.jpg").read_bytes())
    assert manifest.reference_set_hash == process_reference_folder(alone.parent, tmp_path / "n2").reference_set_hash
    assert json.loads(written)["rejected_count"] == len(ENTRIES)


def test_sensor_fingerprints_see_links_change_but_never_read_their_targets(folders):
    source, outside = folders
    scan = fingerprints.scan_folder(source)
    assert set(scan) == {"portraits/own.jpg", *(f"portraits/{name}" for name in ENTRIES)}
    stats, _ = fingerprints.fingerprint_scan(scan, None)  # a FIFO would block here if it were opened
    digest = fingerprints.content_digest(stats)
    (outside / "secret.jpg").write_bytes(b"changed outside")  # not an input: the digest must not move
    assert fingerprints.content_digest(fingerprints.fingerprint_scan(fingerprints.scan_folder(source), None)[0]) == digest
    assert sha256_file(outside / "more.jpg")[:16] not in json.dumps(stats)
    os.unlink(source / "portraits" / "dangling.jpg")  # a link removed is a change the sensor sees
    assert fingerprints.content_digest(fingerprints.fingerprint_scan(fingerprints.scan_folder(source), None)[0]) != digest


def test_walk_refuses_links_and_special_files_with_reasons(folders):
    source, _ = folders
    walk = walk_folder(source)
    assert list(walk.files) == ["portraits/own.jpg"]
    assert {name.removeprefix("portraits/") for name in walk.refused} == set(ENTRIES)


def test_a_linked_roster_file_is_refused_and_the_others_load(tmp_path):
    roster_dir = tmp_path / "roster"
    roster_dir.mkdir()
    (roster_dir / "nova-sterling.yaml").write_text(yaml.safe_dump(VALID))
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(yaml.safe_dump({**VALID, "slug": "linked-queen"}))
    os.symlink(elsewhere, roster_dir / "linked-queen.yaml")
    os.symlink(tmp_path / "missing.yaml", roster_dir / "dangling-queen.yaml")
    roster = load_roster(roster_dir)
    assert list(roster.queens) == ["nova-sterling"]
    reasons = {error.path.name: error.rule for error in roster.errors}
    assert "outside" in reasons["linked-queen.yaml"] and "does not exist" in reasons["dangling-queen.yaml"]
