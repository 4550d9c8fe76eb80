"""Family 7 (issue 13): a disk that fills up, a quota or a read-only mount: messages name the
path, the old file stays intact, and the generation manifest accounts for every planned image."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hydra_assets.domain.storage import StorageWriteError, atomic_create_bytes, atomic_write_bytes, atomic_write_json
from resources.image_generation import DemoRenderer
from tests.test_generation import (  # noqa: F401 - fixtures
    DEMO_TOTAL,
    NIGHT,
    SLUG,
    _folder,
    _manifest,
    _materialize,
    _metadata,
    demo_root,
    demo_storage_template,
    instance,
)


def fail_fsync_for(monkeypatch, name_part: str, code: int) -> list[str]:
    """``os.fsync`` fails with ``code`` for temp files of ``name_part``, as a full NFS volume does."""
    real_fsync = os.fsync
    failed: list[str] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if name_part in Path(target).name:
            failed.append(target)
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


@pytest.mark.parametrize(
    "code, hint",
    [(errno.ENOSPC, "disk is full"), (errno.EDQUOT, "quota is exceeded"), (errno.EROFS, "read-only"), (errno.EIO, None)],
)
@pytest.mark.parametrize("write", ["bytes", "json", "create"])
def test_a_failed_write_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, code, hint, write):
    path = tmp_path / "scores" / "nova-sterling.json"
    path.parent.mkdir()
    path.write_bytes(b"old")
    target = tmp_path / "scores" / "new.json" if write == "create" else path
    fail_fsync_for(monkeypatch, target.name, code)
    with pytest.raises(StorageWriteError) as caught:
        {"bytes": lambda: atomic_write_bytes(target, b"new"), "json": lambda: atomic_write_json(target, {"a": 1}),
         "create": lambda: atomic_create_bytes(target, b"new")}[write]()
    message = str(caught.value)
    assert str(target) in message and os.strerror(code) in message and caught.value.errno == code
    assert hint is None or hint in message
    assert isinstance(caught.value, OSError)  # existing `except OSError` handlers still apply
    assert path.read_bytes() == b"old" and sorted(p.name for p in path.parent.iterdir()) == ["nova-sterling.json"]


def test_an_image_that_fails_while_being_written_is_listed_and_the_others_are_made(demo_root, instance, monkeypatch):
    victim = f"{SLUG}-{NIGHT}-expression-001"
    failed = fail_fsync_for(monkeypatch, victim, errno.ENOSPC)
    result = _materialize(demo_root, instance, DemoRenderer())
    assert result.success and failed
    manifest = _manifest(demo_root)
    made = {entry["image_id"] for entry in manifest["images"]}
    [failure] = manifest["failed"]
    assert len(made) == DEMO_TOTAL - 1 and victim not in made and failure["image_id"] == victim
    assert "disk is full" in failure["error"] and str(_folder(demo_root)) in failure["error"]
    assert all((_folder(demo_root) / entry["file"]).is_file() for entry in manifest["images"])
    assert not [p for p in _folder(demo_root).iterdir() if victim in p.name]  # no partial file, no temp file

    monkeypatch.undo()  # space freed: the next run makes exactly the failed image
    meta = _metadata(_materialize(demo_root, instance, DemoRenderer()))
    assert (meta["new"], meta["reused"], meta["failed"]) == (1, DEMO_TOTAL - 1, 0)


def test_publishing_by_copy_on_a_full_disk_names_the_target_and_leaves_nothing(tmp_path, monkeypatch):
    from hydra_assets.domain.publishing import publish_file
    from hydra_assets.domain.storage import sha256_file

    source = tmp_path / "generated" / "portrait-000.png"
    source.parent.mkdir()
    source.write_bytes(b"png bytes")
    folder = tmp_path / "approved" / "portraits"

    def no_hard_links(*args, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", no_hard_links)
    fail_fsync_for(monkeypatch, "portrait-000.png", errno.ENOSPC)
    with pytest.raises(StorageWriteError) as caught:
        publish_file(source, folder, "portrait-000.png", sha256_file(source))
    assert str(folder / "portrait-000.png") in str(caught.value) and "disk is full" in str(caught.value)
    assert list(folder.iterdir()) == []
