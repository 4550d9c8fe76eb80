"""Intermediate files the pipeline wrote and a person or a crash may have damaged.

Each reader checks the shape its callers index into, so a truncated, garbage or hand-edited file
ends in :class:`DamagedFileError` naming the file, what is wrong and which asset rebuilds it, never
in a KeyError, AttributeError, zip, pickle or Arrow message several frames later. Where the sources
exist the asset named in the fix rebuilds the file from them: generated_images re-adopts every image
from its PNG parameter chunk, reference_images re-checks the photos, image_scores re-scores.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hydra_assets.domain.storage import read_json

ABSENT = object()
"""``read_json(path, default=ABSENT)``: tells a missing file from one that holds ``null``."""
REFERENCE_STATUSES = ("accepted", "rejected")
ENTRY_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "image_id": (str,), "asset_type": (str,), "file": (str,), "sha256": (str,), "params_hash": (str,),
    "params": (dict,), "details": (dict,), "seed": (int,), "index": (int,), "size_bytes": (int,),
    "width": (int,), "height": (int,), "generated_at": (str,), "error": (str,),
}
"""generated manifest entry fields and the types their readers (generation, image_scores, the catalog) need."""


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


class DamagedFileError(ValueError):
    """An intermediate file that cannot be used; names the file, the problem and the fix."""

    def __init__(self, path: Path | str, problem: str, fix: str):
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; {fix}")


def reference_fix(slug: str) -> str:
    return f"re-materialize reference_images for {slug} (it rebuilds this manifest from reference_images/{slug})"


def identity_fix(slug: str) -> str:
    return f"re-materialize reference_identity for {slug} (it recomputes the identity from the references)"


def generated_fix(slug: str, night: str) -> str:
    return (
        f"re-materialize generated_images for {slug} on {night} (it rebuilds the manifest from the images' "
        "PNG parameter chunks and keeps every image)"
    )


def _is_relative_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not Path(value).is_absolute() and ".." not in Path(value).parts


def reference_manifest_problem(document: Any) -> str | None:
    """What in a reference_images manifest its readers cannot use, or None."""
    if not isinstance(document, dict):
        return f"must be a JSON object, got {type(document).__name__}"
    if not isinstance(document.get("reference_set_hash"), str):
        return "has no 'reference_set_hash' text"
    entries = document.get("entries")
    if not isinstance(entries, list):
        return "has no 'entries' list"
    for position, entry in enumerate(entries):
        where = f"entries[{position}]"
        if not isinstance(entry, dict):
            return f"{where} must be an object, got {type(entry).__name__}"
        if not isinstance(entry.get("source"), str):
            return f"{where} has no 'source' text"
        if entry.get("status") not in REFERENCE_STATUSES:
            return f"{where}.status must be one of {', '.join(REFERENCE_STATUSES)}, got {entry.get('status')!r}"
        if entry["status"] == "accepted" and not (_is_relative_name(entry.get("normalized")) and isinstance(entry.get("sha256"), str)):
            return f"{where} is accepted but has no usable 'normalized' file name or 'sha256'"
    if not isinstance(document.get("accepted_count", 0), int):
        return "accepted_count must be a whole number"
    return None


def _checked_json(path: Path, fix: str, problem_of: Callable[[Any], str | None]) -> Any:
    """The JSON document at ``path`` (None when absent), or a DamagedFileError naming ``fix``
    when it cannot be read or ``problem_of`` finds something its readers cannot use."""
    try:
        document = read_json(path, default=ABSENT)
    except (OSError, ValueError) as exc:
        raise DamagedFileError(path, f"cannot be read ({exc})", fix) from exc
    if document is ABSENT:
        return None
    problem = problem_of(document)
    if problem:
        raise DamagedFileError(path, problem, fix)
    return document


def read_reference_manifest(path: Path, slug: str) -> dict[str, Any] | None:
    """reference_images' manifest, or None when it does not exist yet."""
    return _checked_json(path, reference_fix(slug), reference_manifest_problem)


def generated_manifest_problem(document: Any) -> str | None:
    """What in a generated_images manifest's structure its readers cannot use, or None.

    The structure and the type of every field that is present: an entry that lacks a field or
    names a file outside the folder is left out on its own by image_scores and remade by
    generated_images, so one such entry never sinks the rest.
    """
    if not isinstance(document, dict):
        return f"must be a JSON object, got {type(document).__name__}"
    for key in ("images", "failed", "superseded"):
        if key == "images" or key in document:
            value = document.get(key)
            if not isinstance(value, list):
                return f"'{key}' must be a list, got {type(value).__name__}"
            for position, entry in enumerate(value):
                if not isinstance(entry, dict):
                    return f"{key}[{position}] must be an object, got {type(entry).__name__}"
                for name, types in ENTRY_FIELD_TYPES.items():
                    if name in entry and entry[name] is not None and not _has_type(entry[name], types):
                        expected = " or ".join(t.__name__ for t in types)
                        return f"{key}[{position}].{name} must be {expected}, got {type(entry[name]).__name__}"
    return None


def read_identity_vector(path: Path, slug: str) -> np.ndarray:
    """The queen's mean face vector from identity.npz: finite, one-dimensional, not zero."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "mean" not in archive:
                raise DamagedFileError(path, f"has no 'mean' vector (holds {sorted(archive.files)})", identity_fix(slug))
            mean = np.asarray(archive["mean"])
    except DamagedFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DamagedFileError(path, f"is not a readable .npz archive ({type(exc).__name__}: {exc})", identity_fix(slug)) from exc
    if mean.ndim != 1 or mean.size == 0 or not np.issubdtype(mean.dtype, np.number):
        raise DamagedFileError(path, f"'mean' must be a non-empty vector of numbers, got {mean.dtype} {mean.shape}", identity_fix(slug))
    mean = mean.astype(np.float32)
    if not np.all(np.isfinite(mean)) or not np.any(mean):
        raise DamagedFileError(path, "'mean' has non-finite or all-zero values", identity_fix(slug))
    return mean


def identity_document(path: Path, slug: str) -> dict[str, Any] | None:
    """reference_identity's identity.json (a mapping), or None when it does not exist yet."""
    return _checked_json(
        path, identity_fix(slug),
        lambda document: None if isinstance(document, Mapping) else f"must be a JSON object, got {type(document).__name__}",
    )


def score_frame_problem(frame: Any, required: tuple[str, ...]) -> str | None:
    """What in a score table its readers cannot use, or None (the table is then re-scored)."""
    missing = [column for column in required if column not in frame.columns]
    if missing:
        return f"lacks column(s) {', '.join(missing)}"
    if frame["image_id"].isna().any():
        return "has rows without an image_id"
    if "approved" in required and not frame["approved"].map(lambda v: isinstance(v, bool | np.bool_)).all():
        return "has 'approved' values that are not true/false"
    return None
