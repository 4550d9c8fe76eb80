"""The storage layout (SPEC) and the write discipline every stage shares.

Every file lands atomically (temp name in the same folder, fsync, rename) so a crash
never leaves a half-written file under a real name, and is recorded with its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in the standard library's own buffered loop."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextmanager
def _synced_temp_file(path: Path, data: bytes) -> Iterator[str]:
    """``data`` fsynced in a temp file beside ``path``; the temp file is gone afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        yield tmp_name
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename; returns ``path``."""
    path = Path(path)
    with _synced_temp_file(path, data) as tmp_name:
        os.replace(tmp_name, path)
    return path


def atomic_create_bytes(path: Path, data: bytes) -> bool:
    """Like :func:`atomic_write_bytes`, but only if ``path`` does not exist yet (a hard link never
    replaces a file); returns whether it was written."""
    path = Path(path)
    with _synced_temp_file(path, data) as tmp_name:
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return False
    return True


def atomic_write_json(path: Path, document: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class StorageLayout:
    """Paths under the storage root (NFS on the cluster), exactly as SPEC lays them out.

    Derived outputs that SPEC does not place (normalized references, identity vectors,
    profiles) live under ``assets/`` beside the published assets, one folder per queen.
    """

    root: Path

    def reference_sources(self, slug: str) -> Path:
        return self.root / "reference_images" / slug

    def normalized_references(self, slug: str) -> Path:
        return self.root / "assets" / "references" / slug

    def reference_manifest(self, slug: str) -> Path:
        return self.normalized_references(slug) / "manifest.json"

    def identity_dir(self, slug: str) -> Path:
        return self.root / "assets" / "identity" / slug

    def profile_path(self, slug: str) -> Path:
        return self.root / "assets" / "profiles" / f"{slug}.json"

    def lora_path(self, slug: str) -> Path:
        """The queen's current LoRA (what ComfyUI's LoraLoader and generation load)."""
        return self.root / "assets" / "loras" / f"{slug}_lora.safetensors"

    def lora_info_path(self, slug: str) -> Path:
        """JSON beside the current LoRA: version, sha256, base model, reference-set hash, settings."""
        return self.root / "assets" / "loras" / f"{slug}_lora.json"

    def lora_versions_dir(self, slug: str) -> Path:
        """Every trained version, kept: ``{slug}_lora_v{N}.safetensors``."""
        return self.root / "assets" / "loras" / "versions" / slug

    def generated_dir(self, night: str, slug: str) -> Path:
        """One queen × night partition's generated images and its ``manifest.json``."""
        return self.overnight(night) / "generated" / slug

    def scores_path(self, night: str, slug: str) -> Path:
        return self.overnight(night) / "scores" / f"{slug}.parquet"

    def overrides_path(self, night: str, slug: str) -> Path:
        """Manual approve/reject decisions for one queen × night (YAML, edited by people)."""
        return self.overnight(night) / "overrides" / f"{slug}.yaml"

    def report_path(self, night: str) -> Path:
        return self.overnight(night) / "report.md"

    def contact_sheets_dir(self, night: str) -> Path:
        """``{slug}-{approved|rejected}-{type}.png`` for every queen of the night (approved_images)."""
        return self.overnight(night) / "contact_sheets"

    def rejection_reasons_path(self, night: str, slug: str) -> Path:
        """Why each image in ``rejected/{slug}/`` was rejected (approved_images)."""
        return self.overnight(night) / "rejected" / slug / "reasons.json"

    def approved_images(self, slug: str, asset_type_folder: str) -> Path:
        return self.root / "assets" / "images" / "queens" / slug / asset_type_folder

    def voice_dir(self, slug: str) -> Path:
        return self.root / "assets" / "voice" / slug

    def voice_manifest(self, slug: str) -> Path:
        return self.voice_dir(slug) / "manifest.json"

    def voice_index_dir(self) -> Path:
        """Voice audio by content key, shared by every asset that voices lines ("_" is no slug)."""
        return self.root / "assets" / "voice" / "_index"

    def overnight(self, night: str) -> Path:
        return self.root / "overnight" / night

    def sensor_state(self, sensor: str) -> Path:
        """State a sensor keeps per key (file stats), so its cursor stays small; a cache, safe to delete."""
        return self.root / ".hydra" / "sensors" / sensor

    def quality_tests(self, night: str) -> Path:
        return self.root / "quality_tests" / night
