"""The commit reserve: a preallocated file per storage folder.

Metadata is committed in batches after the syscalls that made it returned 0.
If someone else fills the storage folder's disk meanwhile, the COMMIT would
fail and sqlite would roll the batch back: files and directories the writer
was told exist would vanish. Each storage folder therefore keeps a small
preallocated reserve file, released just before a commit that finds the disk
(nearly) full, and put back when a store is opened with room to spare.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import diskio

RESERVE_FILE = ".smpfs-reserve"


def reserve_size(folder: Path, v=None) -> int:
    v = v or os.statvfs(folder)
    return min(16 << 20, max(1 << 20, v.f_blocks * v.f_frsize // 20))


def ensure_reserve(folder: Path) -> None:
    """Create the folder's commit reserve if it is missing and there is room."""
    path = Path(folder) / RESERVE_FILE
    if path.exists():
        return
    v = os.statvfs(folder)
    size = reserve_size(folder, v)
    if v.f_bavail * v.f_frsize < 4 * size:
        return
    tmp = Path(folder) / (RESERVE_FILE + ".tmp")
    try:
        io = diskio.io
        fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            io.fallocate(fd, 0, size)
        finally:
            io.close(fd)
        io.rename(tmp, path)
    except OSError:
        try:
            diskio.io.unlink(tmp)
        except OSError:
            pass


def release_reserve(folder: Path) -> bool:
    try:
        diskio.io.unlink(Path(folder) / RESERVE_FILE)
        return True
    except FileNotFoundError:
        return False


def ensure_commit_room(folder: Path) -> None:
    """Before a commit: on a (nearly) full disk, give the reserve back to sqlite."""
    v = os.statvfs(folder)
    if v.f_bavail * v.f_frsize < reserve_size(folder, v) // 2:
        release_reserve(folder)
