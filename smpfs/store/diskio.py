"""The store's file I/O, through one small interface (no sqlite, no crypto).

Every call of the store that creates, changes, renames, removes or makes
durable a file goes through ``diskio.io`` (look it up at the call, do not
bind it at import): by default :class:`DiskIO`, the real OS at the cost of one
attribute lookup. A power-cut simulator (tests/unit/test_power_cut.py) swaps
in its own implementation with :func:`set_io`, records what each ``fsync``,
``fdatasync``, ``syncfs`` and directory fsync made durable, and throws the
rest away at a cut point. Reads go to the OS directly: they change nothing.

sqlite's own files (store.db and its WAL) are written by sqlite, not here;
what makes them durable here is the explicit ``fsync`` of the WAL (the store
runs ``synchronous=NORMAL``) or a ``syncfs``.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any


class DiskIO:
    """The real OS."""
    open = staticmethod(os.open)
    write = staticmethod(os.write)
    pwrite = staticmethod(os.pwrite)
    close = staticmethod(os.close)
    fsync = staticmethod(os.fsync)
    fdatasync = staticmethod(os.fdatasync)
    rename = staticmethod(os.rename)
    unlink = staticmethod(os.unlink)
    mkdir = staticmethod(os.mkdir)
    rmdir = staticmethod(os.rmdir)
    fallocate = staticmethod(os.posix_fallocate)

    def syncfs(self, fd: int) -> None:
        """syncfs(2): make every file of the filesystem holding ``fd`` durable."""
        import ctypes
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def fsync_dir(self, path) -> None:
        """Make a directory's entries (creates, renames, unlinks in it) durable."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)

    def rmtree(self, path) -> None:
        """Remove a directory tree (no symlink is followed)."""
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                self.unlink(os.path.join(root, name))
            for name in dirs:
                p = os.path.join(root, name)
                if stat.S_ISLNK(os.lstat(p).st_mode):
                    self.unlink(p)
                else:
                    self.rmdir(p)
        self.rmdir(path)


_libc: Any = None

#: The implementation in use (the real OS unless a test swapped it).
io: DiskIO = DiskIO()


def set_io(new: DiskIO) -> DiskIO:
    """Use ``new`` for the store's file I/O from now on; returns the previous one."""
    global io
    old, io = io, new
    return old


def fsync_dir(path: Path) -> None:
    io.fsync_dir(path)


def syncfs(fd: int) -> None:
    io.syncfs(fd)


def unlink_files(paths) -> None:
    for p in paths:
        try:
            io.unlink(p)
        except FileNotFoundError:
            pass
