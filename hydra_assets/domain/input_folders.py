"""Walking a folder people fill by hand (reference photos, chapter scripts), without following links.

The rule, the same everywhere: only regular files are inputs. A symbolic link is refused whatever
it points at - outside the folder it could pull any file of the machine into a manifest, inside it
is a second name for a file already there, and dangling it is nothing - and so are FIFOs, sockets
and devices (reading a FIFO blocks forever). Refused entries come back with a reason a person can
act on, so the stage lists them as rejected instead of skipping them silently. Nothing refused is
ever opened, read or hashed.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

LINK_OUTSIDE = "is a symbolic link to {target}, outside {root}: links are never read; copy the file into the folder"
LINK_DANGLING = "is a symbolic link to {target}, which does not exist: remove it or copy the file into the folder"
LINK_INSIDE = "is a symbolic link to {target}: links are never read, even inside the folder; copy the file instead"
NOT_REGULAR = "is not a regular file ({kind}): only plain files are read"


@dataclass
class FolderWalk:
    """Regular files by relative path (``a/b.jpg``) with their lstat, and refused entries with reasons."""

    files: dict[str, tuple[Path, os.stat_result]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def link_reason(path: Path, root: Path) -> str:
    """Why the link ``path`` below ``root`` is refused: dangling, outside or inside (checked in that order)."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    resolved = Path(os.path.realpath(path))
    real_root = Path(os.path.realpath(root))
    if not resolved.exists():
        return LINK_DANGLING.format(target=target)
    if not resolved.is_relative_to(real_root):
        return LINK_OUTSIDE.format(target=target, root=root)
    return LINK_INSIDE.format(target=target)


def walk_folder(root: Path, *, skip_hidden: bool = True) -> FolderWalk:
    """Every entry below ``root`` in one iterative walk; links and special files land in ``refused``."""
    root = Path(root)
    walk = FolderWalk()
    pending: list[tuple[str, str]] = [(str(root), "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            relpath = f"{prefix}{entry.name}"
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):
                walk.refused[relpath] = link_reason(Path(entry.path), root)
            elif stat.S_ISDIR(info.st_mode):
                pending.append((entry.path, f"{relpath}/"))
            elif stat.S_ISREG(info.st_mode):
                walk.files[relpath] = (Path(entry.path), info)
            else:
                walk.refused[relpath] = NOT_REGULAR.format(kind=_kind(info.st_mode))
    return walk


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is still a regular file (not swapped for a link or FIFO since the walk)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{path} is no longer a regular file")
        return handle.read()
