from __future__ import annotations

import hashlib

from hydra_assets.domain.storage import atomic_create_bytes, atomic_write_bytes, sha256_bytes, sha256_file


def test_create_never_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "loras" / "versions" / "v1.safetensors"
    assert atomic_create_bytes(path, b"first") is True
    assert atomic_create_bytes(path, b"second") is False
    assert path.read_bytes() == b"first"
    atomic_write_bytes(path, b"replaced")
    assert path.read_bytes() == b"replaced"
    assert [p.name for p in path.parent.iterdir()] == ["v1.safetensors"]


def test_sha256_file_matches_the_bytes_digest_for_empty_small_and_multi_chunk_files(tmp_path):
    for size in (0, 1, 3 << 20):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        path = tmp_path / f"f{size}.bin"
        path.write_bytes(data)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
