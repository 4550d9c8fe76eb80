"""Where a chapter's work files and its published bundle live under the storage root."""

from __future__ import annotations

from pathlib import Path

from hydra_assets.domain.storage import StorageLayout


def work_dir(layout: StorageLayout, chapter: str) -> Path:
    """Per-chapter working files (parsed script, voiced lines, scene candidates); never read by the game."""
    return layout.root / "assets" / "chapters" / chapter


def script_json(layout: StorageLayout, chapter: str) -> Path:
    return work_dir(layout, chapter) / "script.json"


def script_copy(layout: StorageLayout, chapter: str) -> Path:
    """The exact text chapter_script parsed (the bundle ships this, not the file as it is now)."""
    return work_dir(layout, chapter) / "script.md"


def dialogue_dir(layout: StorageLayout, chapter: str) -> Path:
    return work_dir(layout, chapter) / "dialogue"


def dialogue_manifest(layout: StorageLayout, chapter: str) -> Path:
    return dialogue_dir(layout, chapter) / "manifest.json"


def images_dir(layout: StorageLayout, chapter: str) -> Path:
    return work_dir(layout, chapter) / "images"


def images_manifest(layout: StorageLayout, chapter: str) -> Path:
    return images_dir(layout, chapter) / "manifest.json"


def bundle_dir(layout: StorageLayout, chapter: str) -> Path:
    """What the game reads: chapters/{chapter}/ (script.md, images/, audio/, metadata.json)."""
    return layout.root / "chapters" / chapter
