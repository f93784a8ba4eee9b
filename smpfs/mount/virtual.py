"""The directories above the stores, made up from the catalog: the mount
root (one hidden share per storage folder) and the shares (one directory per
live state store)."""
from __future__ import annotations

import errno
import os

import pyfuse3

from ..lifecycle import access as access_mod
from ..lifecycle.status import GONE
from ..store.layout import ROOT as STORE_ROOT
from .catalog import Catalog, StoreRec
from .handles import Handles
from .inodes import SHARE_BASE, store_entry, stub_entry, virtual_entry
from .stores import OpenStores


class VirtualDirs:
    def __init__(self, cat: Catalog, stores: OpenStores, handles: Handles):
        self.cat = cat
        self.stores = stores
        self.handles = handles

    def store_root_entry(self, rec: StoreRec, uid: int) -> pyfuse3.EntryAttributes:
        """The store directory as the share shows it to ``uid``.

        The kernel's dentry cache is shared by all uids, so a name looked up in a
        store by its computer would let anyone else walk to it without asking us.
        Hence the store directory is never cached (entry timeout 0: every path
        walk through it asks us again) and is a different inode for each side:
        the uid entitled to the store gets the real directory; everyone else a
        *stub* (local inode 0) with no way in, whose attributes are made up from
        the catalog, so listing a share opens no store and unwraps no key."""
        if access_mod.level(rec.as_row(), uid) is not None:
            e = store_entry(self.cat, rec.rowid, self.stores.use(rec.rowid).getattr(STORE_ROOT))
            e.entry_timeout = 0
            return e
        return stub_entry(rec)

    def lookup(self, parent: int, name: bytes, uid: int) -> pyfuse3.EntryAttributes:
        if name == b"." or (parent == pyfuse3.ROOT_INODE and name == b".."):
            return virtual_entry(parent)
        if parent == pyfuse3.ROOT_INODE:
            share = self.cat.share_by_name(name)
            if share is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return virtual_entry(SHARE_BASE + share.folder_id)
        if name == b"..":
            return virtual_entry(pyfuse3.ROOT_INODE)
        folder_id = parent - SHARE_BASE
        try:
            sid = name.decode("ascii")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        rec = self.cat.live_store(folder_id, sid)
        if rec is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.store_root_entry(rec, uid)

    def readdir(self, inode: int, uid: int, start_id: int, token) -> None:
        if inode == pyfuse3.ROOT_INODE:
            items = [(s.folder_id, s.name, virtual_entry(SHARE_BASE + s.folder_id))
                     for s in sorted(self.cat.shares.values(), key=lambda s: s.folder_id)]
        else:
            items = [(r.rowid, r.store_id.encode(), None)
                     for r in sorted(self.cat.live_stores_in(inode - SHARE_BASE), key=lambda r: r.rowid)]
        for cursor, name, entry in items:
            if cursor <= start_id:
                continue
            if entry is None:
                try:
                    entry = self.store_root_entry(self.cat.stores[cursor], uid)
                except (OSError, pyfuse3.FUSEError, KeyError):
                    continue
            if not pyfuse3.readdir_reply(token, name, entry, cursor):
                return
            self.handles.counted(entry)

    def store_of(self, uid: int) -> StoreRec | None:
        """The store ``uid`` may change, else one it may read, else None."""
        best = None
        for rec in self.cat.stores.values():
            lvl = access_mod.level(rec.as_row(), uid) if rec.status not in GONE else None
            if lvl == "rw":
                return rec
            if lvl is not None and best is None:
                best = rec
        return best

    def statfs(self, uid: int) -> pyfuse3.StatvfsData:
        """statfs for ``uid``. pyfuse3 does not pass the inode, so the answer is
        per caller: a computer entitled to a store is told about that store's
        storage folder (its free space less the folder's minimum free space),
        everyone else (root included) about the whole SMP."""
        shares = list(self.cat.shares.values())
        mine = self.store_of(uid)
        if mine is not None and mine.folder_id in self.cat.shares:
            shares = [self.cat.shares[mine.folder_id]]
        s = pyfuse3.StatvfsData()
        seen, total, free, avail, files, ffree = set(), 0, 0, 0, 0, 0
        for share in shares:
            try:
                v = os.statvfs(share.path)
                dev = os.stat(share.path).st_dev
            except OSError:
                continue
            if dev in seen:
                continue
            seen.add(dev)
            total += v.f_blocks * v.f_frsize
            free += v.f_bfree * v.f_frsize
            avail += max(0, v.f_bavail * v.f_frsize - share.min_free())
            files += v.f_files
            ffree += v.f_ffree
        bs = 4096
        s.f_bsize = s.f_frsize = bs
        s.f_blocks, s.f_bfree, s.f_bavail = total // bs, free // bs, avail // bs
        s.f_files, s.f_ffree, s.f_favail = files, ffree, ffree
        s.f_namemax = 255
        return s
