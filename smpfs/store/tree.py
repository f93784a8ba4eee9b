"""A store's directory tree: attributes, names, links, renames, freeing inodes."""
from __future__ import annotations

import errno
import stat
import time

from .layout import NAME_MAX, ROOT, STORED_COL, Attr, check_name, err, killed_mode
from .parts import StoreParts

_LINK_TARGET = b"lt"


class TreeMixin(StoreParts):
    """Part of :class:`~smpfs.store.statestore.StateStore`: inodes and directory entries."""

    def _attr(self, row, stored: bool = False) -> Attr:
        """An :class:`Attr` from a row of ``self.icols`` (then, with ``stored``,
        the stored content bytes), its MAC checked."""
        self.check_inode_row(row)
        ino, mode, uid, gid, nlink, size, rdev, atime, mtime, ctime = row[:10]
        a = Attr(ino, mode, uid, gid, nlink, size, atime, mtime, ctime, rdev)
        if stored:
            a.stored = row[-1]
            a = self.with_pending(a)
        return a

    def getattr(self, ino: int, *, stored: bool = False) -> Attr:
        """An inode's attributes; with ``stored``, also how much content is
        stored (a sum over its block map: what st_blocks shows)."""
        cols = f"{self.icols}, {STORED_COL}" if stored else self.icols
        row = self.db.execute(f"SELECT {cols} FROM inodes i WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise err(errno.ENOENT)
        return self._attr(row, stored)

    def setattr(self, ino: int, *, mode=None, uid=None, gid=None, size=None,
                atime_ns=None, mtime_ns=None, ctime_ns=None) -> Attr:
        self.check_writable()
        a = self.getattr(ino)
        if size is not None and size != a.size:
            if stat.S_ISDIR(a.mode):
                raise err(errno.EISDIR)
            self.truncate(ino, size)
        sets, args = [], []
        now = time.time_ns()
        if mode is not None:
            sets.append("mode=?")
            args.append(stat.S_IFMT(a.mode) | stat.S_IMODE(mode))
        if uid is not None:
            sets.append("uid=?")
            args.append(uid)
        if gid is not None:
            sets.append("gid=?")
            args.append(gid)
        if (uid is not None or gid is not None) and stat.S_ISREG(a.mode) and mode is None:
            # chown clears setuid (and setgid with group-execute), as on any POSIX filesystem
            sets.append("mode=?")
            args.append(killed_mode(a.mode))
        if atime_ns is not None:
            sets.append("atime_ns=?")
            args.append(atime_ns)
        if mtime_ns is not None:
            sets.append("mtime_ns=?")
            args.append(mtime_ns)
        sets.append("ctime_ns=?")
        args.append(ctime_ns if ctime_ns is not None else now)
        self.begin_change()
        self.db.execute(f"UPDATE inodes SET {', '.join(sets)} WHERE ino=?", (*args, ino))
        return self.getattr(ino, stored=True)

    def _touch(self, ino: int, now: int | None = None) -> None:
        now = now or time.time_ns()
        self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE ino=?", (now, now, ino))

    # -- directory entries -------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int:
        if name == b".":
            return parent
        if name == b"..":
            row = self.db.execute("SELECT parent FROM dentries WHERE ino=? LIMIT 1", (parent,)).fetchone()
            return row[0] if row else ROOT
        if len(name) > NAME_MAX:
            raise err(errno.ENAMETOOLONG)
        sealed = self.keys.seal_name(parent, name)
        row = self.db.execute(f"SELECT ino, id, {self.mac_col} FROM dentries WHERE parent=? AND name=?",
                              (parent, sealed)).fetchone()
        if row is None:
            raise err(errno.ENOENT)
        self.check_dentry(parent, sealed, *row)
        return row[0]

    def lookup_attr(self, parent: int, name: bytes) -> Attr:
        """``getattr(lookup(parent, name))`` in one query (the hot path of every open)."""
        if name in (b".", b"..") or len(name) > NAME_MAX:
            return self.getattr(self.lookup(parent, name))
        sealed = self.keys.seal_name(parent, name)
        row = self.db.execute(
            f"SELECT d.ino, d.id, d.{self.mac_col}, {self.icols_i}, {STORED_COL}"
            " FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent=? AND d.name=?",
            (parent, sealed)).fetchone()
        if row is None:
            raise err(errno.ENOENT)
        self.check_dentry(parent, sealed, *row[:3])
        return self._attr(row[3:], stored=True)

    def readdir(self, parent: int, after: int = 0, limit: int = 1000):
        """Entries of ``parent`` after cursor ``after``: (cursor, name, Attr)."""
        rows = self.db.execute(
            f"SELECT d.id, d.name, d.{self.mac_col}, {self.icols_i}, {STORED_COL}"
            " FROM dentries d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent=? AND d.id>? ORDER BY d.id LIMIT ?", (parent, after, limit)).fetchall()
        out = []
        for r in rows:
            self.check_dentry(parent, r[1], r[3], r[0], r[2])
            out.append((r[0], self.keys.open_name(parent, r[1]), self._attr(r[3:], stored=True)))
        return out

    def is_empty_dir(self, ino: int) -> bool:
        return self.db.execute("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (ino,)).fetchone() is None

    def _dir_attr(self, parent: int) -> Attr:
        a = self.getattr(parent)
        if not stat.S_ISDIR(a.mode):
            raise err(errno.ENOTDIR)
        if a.nlink == 0:
            raise err(errno.ENOENT, "directory was removed")
        return a

    def mknode(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0, target: bytes | None = None) -> Attr:
        """Create a file, directory, symlink, fifo or device node."""
        self.check_writable()
        check_name(name)
        self.check_room(len(name) + len(target or b""))
        pa = self._dir_attr(parent)
        sealed = self.keys.seal_name(parent, name)
        if self.db.execute("SELECT 1 FROM dentries WHERE parent=? AND name=?", (parent, sealed)).fetchone():
            raise err(errno.EEXIST)
        if pa.mode & stat.S_ISGID:
            gid = pa.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        is_dir = stat.S_ISDIR(mode)
        now = time.time_ns()
        self.begin_change()
        cur = self.db.execute(
            "INSERT INTO inodes (mode, uid, gid, nlink, size, atime_ns, mtime_ns, ctime_ns, rdev)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mode, uid, gid, 2 if is_dir else 1, len(target) if target is not None else 0,
             now, now, now, rdev))
        ino = cur.lastrowid
        if ino is None:
            raise err(errno.EIO, "the new inode has no number")
        if target is not None:
            self.db.execute("UPDATE inodes SET target=? WHERE ino=?",
                            (self.keys.seal_value(ino, _LINK_TARGET, target), ino))
        self.db.execute("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", (parent, sealed, ino))
        if is_dir:
            self.db.execute("UPDATE inodes SET nlink=nlink+1 WHERE ino=?", (parent,))
        self._touch(parent, now)
        return self.getattr(ino, stored=True)

    def readlink(self, ino: int) -> bytes:
        row = self.db.execute(f"SELECT {self.icols} FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise err(errno.ENOENT)
        a, target = self._attr(row), row[11]
        if not stat.S_ISLNK(a.mode) or target is None:
            raise err(errno.EINVAL)
        return self.keys.open_value(ino, _LINK_TARGET, target)

    def link(self, ino: int, parent: int, name: bytes) -> Attr:
        self.check_writable()
        check_name(name)
        self.check_room(len(name))
        self._dir_attr(parent)
        a = self.getattr(ino)
        if stat.S_ISDIR(a.mode):
            raise err(errno.EPERM, "hard links to directories")
        if a.nlink == 0:
            raise err(errno.ENOENT)
        sealed = self.keys.seal_name(parent, name)
        if self.db.execute("SELECT 1 FROM dentries WHERE parent=? AND name=?", (parent, sealed)).fetchone():
            raise err(errno.EEXIST)
        now = time.time_ns()
        self.begin_change()
        self.db.execute("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", (parent, sealed, ino))
        self.db.execute("UPDATE inodes SET nlink=nlink+1, ctime_ns=? WHERE ino=?", (now, ino))
        self._touch(parent, now)
        return self.getattr(ino, stored=True)

    def unlink(self, parent: int, name: bytes, *, want_dir: bool = False) -> Attr:
        """Remove a name (``want_dir``: rmdir). Returns the inode's new attributes;
        the caller frees it (``free_if_unused``) once nothing refers to it."""
        self.check_writable()
        ino = self.lookup(parent, name)
        a = self.getattr(ino)
        if want_dir:
            if not stat.S_ISDIR(a.mode):
                raise err(errno.ENOTDIR)
            if not self.is_empty_dir(ino):
                raise err(errno.ENOTEMPTY)
        elif stat.S_ISDIR(a.mode):
            raise err(errno.EISDIR)
        now = time.time_ns()
        self.begin_change()
        self.db.execute("DELETE FROM dentries WHERE parent=? AND name=?",
                        (parent, self.keys.seal_name(parent, name)))
        if want_dir:
            self.db.execute("UPDATE inodes SET nlink=0, ctime_ns=? WHERE ino=?", (now, ino))
            self.db.execute("UPDATE inodes SET nlink=nlink-1 WHERE ino=?", (parent,))
        else:
            self.db.execute("UPDATE inodes SET nlink=nlink-1, ctime_ns=? WHERE ino=?", (now, ino))
        self._touch(parent, now)
        return self.getattr(ino, stored=True)

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, *,
               noreplace: bool = False, exchange: bool = False) -> Attr | None:
        """Rename; returns the attributes of an inode whose name was replaced
        (the caller frees it when unused), else None."""
        self.check_writable()
        check_name(n2)
        self.check_room(len(n2))
        src = self.lookup(p1, n1)
        sa = self.getattr(src)
        self._dir_attr(p2)
        s1, s2 = self.keys.seal_name(p1, n1), self.keys.seal_name(p2, n2)
        row = self.db.execute("SELECT ino FROM dentries WHERE parent=? AND name=?", (p2, s2)).fetchone()
        dst = row[0] if row else None
        now = time.time_ns()
        if exchange:
            if dst is None:
                raise err(errno.ENOENT)
            da = self.getattr(dst)
            self.begin_change()
            self.db.execute("UPDATE dentries SET ino=? WHERE parent=? AND name=?", (dst, p1, s1))
            self.db.execute("UPDATE dentries SET ino=? WHERE parent=? AND name=?", (src, p2, s2))
            if p1 != p2 and stat.S_ISDIR(sa.mode) != stat.S_ISDIR(da.mode):
                delta = 1 if stat.S_ISDIR(sa.mode) else -1
                self.db.execute("UPDATE inodes SET nlink=nlink+? WHERE ino=?", (delta, p2))
                self.db.execute("UPDATE inodes SET nlink=nlink-? WHERE ino=?", (delta, p1))
            for i in (src, dst):
                self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (now, i))
            self._touch(p1, now)
            self._touch(p2, now)
            return None
        if dst == src:
            return None                     # same inode (hard links): POSIX says do nothing
        replaced = None
        if dst is not None:
            if noreplace:
                raise err(errno.EEXIST)
            da = self.getattr(dst)
            if stat.S_ISDIR(sa.mode) and not stat.S_ISDIR(da.mode):
                raise err(errno.ENOTDIR)
            if not stat.S_ISDIR(sa.mode) and stat.S_ISDIR(da.mode):
                raise err(errno.EISDIR)
            if stat.S_ISDIR(da.mode) and not self.is_empty_dir(dst):
                raise err(errno.ENOTEMPTY)
        if stat.S_ISDIR(sa.mode) and self._is_ancestor(src, p2):
            raise err(errno.EINVAL, "cannot move a directory into itself")
        self.begin_change()
        if dst is not None:
            self.db.execute("DELETE FROM dentries WHERE parent=? AND name=?", (p2, s2))
            if stat.S_ISDIR(da.mode):
                self.db.execute("UPDATE inodes SET nlink=0, ctime_ns=? WHERE ino=?", (now, dst))
                self.db.execute("UPDATE inodes SET nlink=nlink-1 WHERE ino=?", (p2,))
            else:
                self.db.execute("UPDATE inodes SET nlink=nlink-1, ctime_ns=? WHERE ino=?", (now, dst))
            replaced = self.getattr(dst)
        self.db.execute("UPDATE dentries SET parent=?, name=? WHERE parent=? AND name=?", (p2, s2, p1, s1))
        if stat.S_ISDIR(sa.mode) and p1 != p2:
            self.db.execute("UPDATE inodes SET nlink=nlink-1 WHERE ino=?", (p1,))
            self.db.execute("UPDATE inodes SET nlink=nlink+1 WHERE ino=?", (p2,))
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (now, src))
        self._touch(p1, now)
        if p2 != p1:
            self._touch(p2, now)
        return replaced

    def _is_ancestor(self, anc: int, ino: int) -> bool:
        while ino != ROOT:
            if ino == anc:
                return True
            row = self.db.execute("SELECT parent FROM dentries WHERE ino=? LIMIT 1", (ino,)).fetchone()
            if row is None:
                return False
            ino = row[0]
        return anc == ROOT

    def free_if_unlinked(self, ino: int) -> bool:
        """Delete an inode with no names left (call when nothing holds it open)."""
        row = self.db.execute("SELECT nlink FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None or row[0] > 0 or ino == ROOT:
            return False
        self.begin_change()
        self.forget_blocks(ino)
        self.db.execute("DELETE FROM xattrs WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        return True
