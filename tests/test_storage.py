from __future__ import annotations

from hydra_assets.domain.storage import atomic_create_bytes, atomic_write_bytes


def test_create_never_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "loras" / "versions" / "v1.safetensors"
    assert atomic_create_bytes(path, b"first") is True
    assert atomic_create_bytes(path, b"second") is False
    assert path.read_bytes() == b"first"
    atomic_write_bytes(path, b"replaced")
    assert path.read_bytes() == b"replaced"
    assert [p.name for p in path.parent.iterdir()] == ["v1.safetensors"]
