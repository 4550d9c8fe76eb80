"""Publishing files without ever overwriting one: hard link where possible, atomic copy otherwise."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hydra_assets.domain.storage import sha256_file

HASH_NAME_HEX = 16
"""Hex digits of the content hash in the fallback name ``{stem}-{sha256[:16]}{suffix}``."""


def _candidates(folder: Path, name: str, sha256: str) -> tuple[Path, Path]:
    stem, suffix = Path(name).stem, Path(name).suffix
    return folder / name, folder / f"{stem}-{sha256[:HASH_NAME_HEX]}{suffix}"


def publish_file(source: Path, folder: Path, name: str, sha256: str) -> tuple[Path, str]:
    """Place ``source`` (whose content hashes to ``sha256``) in ``folder`` without ever overwriting.

    Tries ``name``, then ``{stem}-{sha256[:16]}{suffix}`` when ``name`` holds other content.
    Returns the path and what happened: ``exists`` (same content already there), ``linked``
    (hard link) or ``copied`` (another file system: copied to a temp name, then linked or renamed).
    """
    for target in _candidates(folder, name, sha256):
        if target.exists():
            if sha256_file(target) == sha256:
                return target, "exists"
            continue
        action = _place(source, target)
        if action is not None:
            return target, action
        if sha256_file(target) == sha256:  # someone placed the same file meanwhile
            return target, "exists"
    raise FileExistsError(f"{folder}: both {name} and its hash name hold other content; {source} not published")


def _place(source: Path, target: Path) -> str | None:
    """Hard-link, or copy atomically; None when ``target`` appeared in the meantime."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # atomic, and refuses to replace an existing file
        return "linked"
    except FileExistsError:
        return None
    except OSError:
        pass  # another file system, or no hard links here: copy instead
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            return None
        except OSError:
            if target.exists():
                return None
            os.replace(tmp, target)
        return "copied"
    finally:
        tmp.unlink(missing_ok=True)


def withdraw_file(folder: Path, name: str, sha256: str) -> list[Path]:
    """Remove this image's own copies (same content) from ``folder``; any other file stays."""
    removed = []
    for target in _candidates(folder, name, sha256):
        if target.is_file() and sha256_file(target) == sha256:
            target.unlink()
            removed.append(target)
    return removed


def count_files(folder: Path) -> int:
    """Published files in ``folder`` (hidden temp files aside); 0 when it does not exist."""
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
