"""What the kernel holds of the mount: lookup counts and open handles.

An inode's data may be freed only once nothing here refers to it
(../shared/fuse-notes.md §1): no lookup count, no open file handle.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass

import pyfuse3

from .inodes import SHIFT


@dataclass
class Handle:
    """An open file."""
    ino: int          # global
    uid: int
    gid: int
    writable: bool
    suid: bool = False    # setuid/setgid bits to clear on the next write
    direct: bool = False  # opened with O_DIRECT: reads bypass the page cache


class Handles:
    def __init__(self):
        self.lookups: dict[int, int] = {}            # global ino -> kernel lookup count
        self.opens: dict[int, int] = {}              # global ino -> open file handles
        self.files: dict[int, Handle] = {}           # fh -> open file
        self.dirs: dict[int, tuple[int, int]] = {}   # fh -> (global ino, uid)
        self._next_fh = 1

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- lookup counts ----------------------------------------------------------

    def counted(self, entry: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        """``entry``, given to the kernel: one more lookup of its inode."""
        self.lookups[entry.st_ino] = self.lookups.get(entry.st_ino, 0) + 1
        return entry

    def forget(self, ino: int, n: int) -> bool:
        """The kernel dropped ``n`` lookups of ``ino``; True if none are left."""
        left = self.lookups.get(ino, 0) - n
        if left > 0:
            self.lookups[ino] = left
            return False
        self.lookups.pop(ino, None)
        return True

    def held(self, ino: int) -> bool:
        return bool(self.lookups.get(ino) or self.opens.get(ino))

    def inodes_of(self, rowid: int) -> list[int]:
        """Every inode of store ``rowid`` the kernel knows of."""
        return [ino for ino in set(self.opens) | set(self.lookups) if ino >> SHIFT == rowid]

    def busy_stores(self) -> set[int]:
        """Stores with an open file."""
        return {ino >> SHIFT for ino in self.opens}

    # -- handles -------------------------------------------------------------------

    def open_file(self, inode: int, uid: int, gid: int, writable: bool, mode: int = 0,
                  direct: bool = False) -> int:
        fh = self._new_fh()
        self.files[fh] = Handle(inode, uid, gid, writable, bool(mode & (stat.S_ISUID | stat.S_ISGID)),
                                direct)
        self.opens[inode] = self.opens.get(inode, 0) + 1
        return fh

    def close_file(self, fh: int) -> Handle | None:
        h = self.files.pop(fh, None)
        if h is None:
            return None
        left = self.opens.get(h.ino, 1) - 1
        if left:
            self.opens[h.ino] = left
        else:
            self.opens.pop(h.ino, None)
        return h

    def of_inode(self, ino: int) -> list[Handle]:
        return [h for h in self.files.values() if h.ino == ino]

    def open_dir(self, inode: int, uid: int) -> int:
        fh = self._new_fh()
        self.dirs[fh] = (inode, uid)
        return fh
