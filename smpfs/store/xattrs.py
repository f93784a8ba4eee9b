"""Extended attributes of a store's inodes: names sealed like file names, values sealed."""
from __future__ import annotations

import errno
import time

from .layout import err
from .parts import StoreParts

_XATTR_VALUE = b"xv"


class XattrsMixin(StoreParts):
    """Part of :class:`~smpfs.store.statestore.StateStore`: extended attributes."""

    def setxattr(self, ino: int, name: bytes, value: bytes, *, create=False, replace=False) -> None:
        self.check_writable()
        self.check_room(len(name) + len(value))
        sealed = self._xname(ino, name)
        exists = self.db.execute("SELECT 1 FROM xattrs WHERE ino=? AND name=?", (ino, sealed)).fetchone()
        if create and exists:
            raise err(errno.EEXIST)
        if replace and not exists:
            raise err(errno.ENODATA)
        if not exists:      # every name must fit in one listxattr reply (XATTR_LIST_MAX, 64 KiB)
            used = self.db.execute("SELECT coalesce(sum(length(name) - 15), 0) FROM xattrs WHERE ino=?",
                                   (ino,)).fetchone()[0]     # sealed names carry a 16-byte SIV
            if used + len(name) + 1 > 65536:
                raise err(errno.ENOSPC, "no room for more extended attribute names on this file")
        self.begin_change()
        self.db.execute("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)",
                        (ino, sealed, self.keys.seal_value(ino, _XATTR_VALUE + name, value)))
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (time.time_ns(), ino))

    def _xname(self, ino: int, name: bytes) -> bytes:
        # xattr names are sealed like file names, under a pseudo-parent that no
        # directory can have (the inode number, negated)
        return self.keys.seal_name(-ino & 0xFFFFFFFFFFFFFFFF, name)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        row = self.db.execute("SELECT value FROM xattrs WHERE ino=? AND name=?",
                              (ino, self._xname(ino, name))).fetchone()
        if row is None:
            raise err(errno.ENODATA)
        return self.keys.open_value(ino, _XATTR_VALUE + name, row[0])

    def listxattr(self, ino: int) -> list[bytes]:
        return [self.keys.open_name(-ino & 0xFFFFFFFFFFFFFFFF, r[0])
                for r in self.db.execute("SELECT name FROM xattrs WHERE ino=?", (ino,))]

    def removexattr(self, ino: int, name: bytes) -> None:
        self.check_writable()
        self.begin_change()
        cur = self.db.execute("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, self._xname(ino, name)))
        if cur.rowcount == 0:
            raise err(errno.ENODATA)
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (time.time_ns(), ino))
