"""Permission checks inside a store, for the FUSE handlers (rules: perms.py).

Everything a check needs comes from memory on the hot path: the mode, owner
and group of every inode the kernel was given (kept as the attributes pass
through :meth:`Checks.entry`), the caller's fsuid/fsgid from the request,
and its groups and capabilities (read from /proc only when the mode bits
alone refuse, cached briefly). An inode not yet known costs one query.
"""
from __future__ import annotations

import errno
import stat
import time

import pyfuse3

from ..store.layout import ROOT as STORE_ROOT
from ..store.layout import killed_mode
from ..store.statestore import StateStore
from .catalog import Catalog
from .inodes import join, store_entry
from .perms import CAP_CHOWN, CAP_FOWNER, CAP_FSETID, REACH, Cred, Perms, R, W, may_delete, owner_or


def _protected_hardlinks() -> bool:
    try:
        with open("/proc/sys/fs/protected_hardlinks") as f:
            return f.read().strip() == "1"
    except OSError:
        return True


PROTECTED_HARDLINKS = _protected_hardlinks()


def _fail(code: int):
    return pyfuse3.FUSEError(code)


class Checks:
    def __init__(self, cat: Catalog, perms: Perms):
        self.cat = cat
        self.perms = perms

    def entry(self, rowid: int, a) -> pyfuse3.EntryAttributes:
        """The attributes given to the kernel, remembered for permission checks."""
        e = store_entry(self.cat, rowid, a)
        self.perms.remember(e)
        return e

    def entry_under(self, rowid: int, parent: int, st: StateStore, a, uid: int) -> pyfuse3.EntryAttributes:
        """The entry of a name in directory ``parent``: not cached by the kernel
        if ``uid`` alone (no group, no capability) may not search the directory."""
        e = self.entry(rowid, a)
        if not self.perms.cacheable(uid, self.alias(rowid, uid), self.pattr(rowid, parent, st)):
            e.entry_timeout = 0
        return e

    def alias(self, rowid: int, uid: int) -> int:
        """At restore the destination stands in for the source: what the
        source computer owned, the destination owns."""
        rec = self.cat.stores.get(rowid)
        return rec.source_uid if rec is not None and uid != rec.source_uid else -1

    def pattr(self, rowid: int, local: int, st: StateStore) -> tuple[int, int, int]:
        """(mode, uid, gid) of a store inode: remembered, or read once."""
        a = self.perms.attrs.get(join(rowid, local))
        if a is None:
            self.entry(rowid, st.getattr(local, stored=True))
            a = self.perms.attrs[join(rowid, local)]
        return a

    def may(self, ctx, rowid: int, local: int, st: StateStore, want: int,
             code: int = errno.EACCES) -> Cred:
        """The caller's credentials if it may get ``want`` on the inode, else ``code``."""
        c = self.perms.check(ctx, self.alias(rowid, ctx.uid), self.pattr(rowid, local, st), want)
        if c is None:
            raise _fail(code)
        return c

    def may_remove(self, ctx, rowid: int, parent: int, name: bytes, st: StateStore) -> None:
        """Write and search on the directory, and the sticky-bit rule for the name."""
        c = self.may(ctx, rowid, parent, st, REACH)
        pmode, puid, _ = self.pattr(rowid, parent, st)
        if pmode & stat.S_ISVTX:
            child = st.lookup_attr(parent, name)
            if not may_delete(c, pmode, puid, child.uid):
                c = self.perms.full(ctx, c.alias)
                if not may_delete(c, pmode, puid, child.uid):
                    raise _fail(errno.EPERM)

    def may_rename(self, ctx, rowid, st, l1, n1, l2, n2, exchange) -> None:
        """As ext4: removing the old name and adding the new one (sticky bits
        included); a directory moved to another directory needs write on itself."""
        self.may_remove(ctx, rowid, l1, n1, st)
        try:
            self.may_remove(ctx, rowid, l2, n2, st)   # the name replaced (or exchanged), if any
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            self.may(ctx, rowid, l2, st, REACH)
        if l1 != l2:
            for parent, name in ((l1, n1), (l2, n2)) if exchange else ((l1, n1),):
                a = st.lookup_attr(parent, name)
                if stat.S_ISDIR(a.mode):
                    self.may(ctx, rowid, a.ino, st, W)

    @staticmethod
    def setattr_owner(local: int, a, attr, fields, c: Cred) -> dict:
        """chown/chgrp as the kernel allows them (CAP_CHOWN, or the owner giving
        the file to one of its groups); clears setuid/setgid of a file."""
        kw = {}
        if fields.update_uid:
            if local == STORE_ROOT and attr.st_uid != a.uid:
                raise _fail(errno.EPERM)
            if not ((c.owns(a.uid) and attr.st_uid == a.uid) or c.has(CAP_CHOWN)):
                raise _fail(errno.EPERM)
            if attr.st_uid != a.uid:
                kw["uid"] = attr.st_uid
        if fields.update_gid:
            if local == STORE_ROOT and attr.st_gid != a.gid:
                raise _fail(errno.EPERM)
            if not (c.has(CAP_CHOWN) or (c.owns(a.uid) and (attr.st_gid == a.gid or c.in_group(attr.st_gid)))):
                raise _fail(errno.EPERM)
            if attr.st_gid != a.gid:
                kw["gid"] = attr.st_gid
        if (fields.update_uid or fields.update_gid) and killed_mode(a.mode) != a.mode:
            kw["mode"] = killed_mode(a.mode)
        return kw

    def new_mode(self, ctx, rowid: int, parent: int, st: StateStore, mode: int) -> int:
        """Check write and search on the directory; a new non-directory keeps
        setgid only if its creator is in its group (or holds CAP_FSETID)."""
        c = self.may(ctx, rowid, parent, st, REACH)
        if mode & stat.S_ISGID and not stat.S_ISDIR(mode):
            pmode, _, pgid = self.pattr(rowid, parent, st)
            gid = pgid if pmode & stat.S_ISGID else ctx.gid
            c = self.perms.full(ctx, c.alias)
            if not c.in_group(gid) and not c.has(CAP_FSETID):
                mode &= ~stat.S_ISGID
        return mode


    def may_link(self, ctx, rowid: int, local: int, st: StateStore) -> None:
        """fs.protected_hardlinks, which the kernel asks the filesystem to judge:
        a hard link to a file one does not own needs a plain file (no setuid,
        no executable setgid) one may read and write, or CAP_FOWNER."""
        if not PROTECTED_HARDLINKS:
            return
        mode, uid, gid = self.pattr(rowid, local, st)
        c = self.perms.plain(ctx.uid, ctx.gid, self.alias(rowid, ctx.uid))
        if c.owns(uid):
            return
        safe = stat.S_ISREG(mode) and killed_mode(mode) == mode
        if not (safe and self.perms.check(ctx, c.alias, (mode, uid, gid), R | W)) \
                and not self.perms.full(ctx, c.alias).has(CAP_FOWNER):
            raise _fail(errno.EPERM)

    def setattr_rights(self, ctx, rowid: int, local: int, st: StateStore, a, attr, fields, c: Cred) -> dict:
        """What a setattr may change, as the kernel decides it for a local
        filesystem: ownership (setattr_owner), mode (the owner or CAP_FOWNER;
        setgid dropped for a non-member without CAP_FSETID), times (explicit:
        the owner or CAP_FOWNER; "now", as touch sets them: write permission too).
        Times set to the current second, equal to each other, count as "now":
        the kernel sends no flag telling them apart from explicit ones."""
        kw = self.setattr_owner(local, a, attr, fields, c)
        if fields.update_mode:
            if not owner_or(c, a.uid):
                raise _fail(errno.EPERM)
            mode = attr.st_mode
            if mode & stat.S_ISGID and not c.in_group(kw.get("gid", a.gid)) and not c.has(CAP_FSETID):
                mode &= ~stat.S_ISGID                         # as chmod does for a non-member
            kw["mode"] = mode
        if fields.update_atime or fields.update_mtime:
            touch = (fields.update_atime and fields.update_mtime and attr.st_atime_ns == attr.st_mtime_ns
                     and abs(attr.st_mtime_ns - time.time_ns()) < 1_000_000_000)
            if not owner_or(c, a.uid):
                # times set to "now" (touch) need write permission; explicit times, ownership
                if not touch:
                    raise _fail(errno.EPERM)
                self.may(ctx, rowid, local, st, W)
            if fields.update_atime:
                kw["atime_ns"] = attr.st_atime_ns
            if fields.update_mtime:
                kw["mtime_ns"] = attr.st_mtime_ns
        return kw

    def after_dir_change(self, rowid: int, local: int, st: StateStore, uid: int,
                         before: tuple[int, int, int], after: tuple[int, int, int]) -> None:
        """A directory's mode or owner changed: if its uid may no longer search
        it, drop the names under it from the kernel's cache, so the next walk
        through them asks (and is refused). Queued, as it must be: the kernel
        holds the directory's lock until this chmod returns."""
        alias = self.alias(rowid, uid)
        if not stat.S_ISDIR(after[0]) or not self.perms.cacheable(uid, alias, before) \
                or self.perms.cacheable(uid, alias, after):
            return
        parent = join(rowid, local)
        cursor = 0
        while batch := st.readdir(local, cursor):
            for _c, name, _a in batch:
                pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
            cursor = batch[-1][0]

    def after_move(self, rowid: int, parent: int, name: bytes, st: StateStore, uid: int) -> None:
        """A name moved into a directory its uid may not search: the kernel keeps
        the moved dentry cached, so drop it (queued: the rename holds the lock)."""
        if not self.perms.cacheable(uid, self.alias(rowid, uid), self.pattr(rowid, parent, st)):
            pyfuse3.invalidate_entry_async(join(rowid, parent), name, ignore_enoent=True)
