"""Content fingerprints of roster files and reference folders for the roster sensor.

Two levels, so the sensor's cursor does not grow with the number of files:
- a *stat digest* per queen (names, sizes, mtimes of every file): the cursor keeps only this
  and the content digest, a few dozen bytes per queen; an unchanged folder is recognised from
  one listing, with no file read and no per-file state loaded;
- the per-file stats ``[size, mtime_ns, sha256 prefix]`` live in a state file per queen in the
  storage (:class:`FileStatsStore`), read and rewritten only when that queen's stat digest changed.
  A file is hashed only when its size or mtime differ from what that state remembers, so a file
  whose stat changed but whose content did not (a plain ``touch``) keeps its hash and requests
  nothing. A state file that is missing or unreadable only costs a re-hash of that queen's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from hydra_assets.domain.input_folders import walk_folder
from hydra_assets.domain.safe_documents import load_json
from hydra_assets.domain.storage import atomic_write_json, sha256_file

HASH_PREFIX = 16
"""Hex characters of sha256 kept per file: enough to tell versions apart, small in the cursor."""

# relpath → [size, mtime_ns, sha256 prefix]
FileStats = dict[str, list]


def fingerprint_files(paths: dict[str, Path], previous: FileStats | None) -> tuple[FileStats, int]:
    """Stat every file, hash only the changed ones; returns the new stats and how many were hashed."""
    return fingerprint_scan(scan_files(paths), previous)


Scan = dict[str, tuple[Path, int, int]]
"""relpath → (path, size, mtime_ns) of the files that exist now."""


def scan_files(paths: dict[str, Path]) -> Scan:
    """Stat every file once; files that vanished in between are left out."""
    scan: Scan = {}
    for relpath, path in paths.items():
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        scan[relpath] = (path, stat.st_size, stat.st_mtime_ns)
    return scan


def stat_digest(scan: Scan) -> str:
    """A digest of names, sizes and mtimes: equal digests mean nothing to look at."""
    entries = sorted((relpath, size, mtime) for relpath, (_, size, mtime) in scan.items())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:HASH_PREFIX]


def fingerprint_scan(scan: Scan, previous: FileStats | None) -> tuple[FileStats, int]:
    """Per-file stats of a scan, hashing only files whose size or mtime changed."""
    previous = previous or {}
    current: FileStats = {}
    hashed = 0
    for relpath, (path, size, mtime) in sorted(scan.items()):
        before = previous.get(relpath)
        if before and before[0] == size and before[1] == mtime:
            current[relpath] = before
            continue
        try:
            current[relpath] = [size, mtime, content_hash(path)[:HASH_PREFIX]]
        except FileNotFoundError:
            continue
        hashed += 1
    return current, hashed


@dataclass(frozen=True)
class FileStatsStore:
    """Per-file stats of each queen, kept in the storage instead of the sensor's cursor."""

    folder: Path

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> FileStats:
        try:
            document = load_json(self._path(key))
        except (OSError, ValueError):  # DocumentError is a ValueError: a damaged state file is a cache miss
            return {}
        stats = document.get("files") if isinstance(document, dict) else None
        if not isinstance(stats, dict):
            return {}
        return {k: v for k, v in stats.items() if isinstance(v, list) and len(v) == 3}

    def save(self, key: str, stats: FileStats) -> None:
        atomic_write_json(self._path(key), {"files": stats})


def scan_folder(folder: Path) -> Scan:
    """Every non-hidden entry below ``folder`` with its lstat, in one directory walk.

    Links and special files are included (adding one changes the digest, so the stage that lists
    them as rejected runs) but never opened: :func:`content_hash` hashes a link's target text.
    """
    walk = walk_folder(folder)
    scan: Scan = {relpath: (path, info.st_size, info.st_mtime_ns) for relpath, (path, info) in walk.files.items()}
    for relpath in walk.refused:
        path = Path(folder) / relpath
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        scan[relpath] = (path, info.st_size, info.st_mtime_ns)
    return scan


def content_hash(path: Path) -> str:
    """sha256 of a regular file's bytes; of ``link:<target>`` for a link, never what it points at."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return hashlib.sha256(b"link:" + os.fsencode(os.readlink(path))).hexdigest()
    if not stat.S_ISREG(info.st_mode):
        return hashlib.sha256(f"special:{stat.S_IFMT(info.st_mode)}".encode()).hexdigest()
    return sha256_file(path)


def folder_files(folder: Path) -> dict[str, Path]:
    """Every non-hidden entry below ``folder`` by relative path (links included, see :func:`scan_folder`)."""
    return {relpath: path for relpath, (path, _, _) in scan_folder(folder).items()}


def content_digest(stats: FileStats) -> str:
    """A digest of names and content hashes only, so stat-only changes leave it unchanged."""
    content = sorted((relpath, entry[2]) for relpath, entry in stats.items())
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:HASH_PREFIX]
