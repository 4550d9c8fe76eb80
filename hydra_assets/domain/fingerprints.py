"""Content fingerprints of roster files and reference folders for the roster sensor's cursor.

A file is hashed only when its size or mtime differ from what the cursor remembers, so a
tick over an unchanged roster reads no file contents; a file whose stat changed but whose
content did not (a plain ``touch``) keeps its hash and requests nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hydra_assets.domain.storage import sha256_file

HASH_PREFIX = 16
"""Hex characters of sha256 kept per file: enough to tell versions apart, small in the cursor."""

# relpath → [size, mtime_ns, sha256 prefix]
FileStats = dict[str, list]


def fingerprint_files(paths: dict[str, Path], previous: FileStats | None) -> tuple[FileStats, int]:
    """Stat every file, hash only the changed ones; returns the new stats and how many were hashed."""
    previous = previous or {}
    current: FileStats = {}
    hashed = 0
    for relpath, path in sorted(paths.items()):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        before = previous.get(relpath)
        if before and before[0] == stat.st_size and before[1] == stat.st_mtime_ns:
            current[relpath] = before
            continue
        current[relpath] = [stat.st_size, stat.st_mtime_ns, sha256_file(path)[:HASH_PREFIX]]
        hashed += 1
    return current, hashed


def folder_files(folder: Path) -> dict[str, Path]:
    """Every non-hidden file below ``folder`` by relative path."""
    if not folder.is_dir():
        return {}
    return {
        str(p.relative_to(folder)): p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def content_digest(stats: FileStats) -> str:
    """A digest of names and content hashes only, so stat-only changes leave it unchanged."""
    content = sorted((relpath, entry[2]) for relpath, entry in stats.items())
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:HASH_PREFIX]
