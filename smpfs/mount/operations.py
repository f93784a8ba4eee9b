"""The FUSE layer: kernel requests in, calls on state stores out.

It owns only what is FUSE's business: the inode-number namespace, kernel
lookup counts, file handles, and turning ``OSError`` into ``FUSEError``.
Who may do what is decided by :func:`smpfs.lifecycle.access.level` on every request
(``default_permissions`` is off: the kernel's dentry and attribute caches
are shared by all uids, so a check made for one caller must never be
reused for another; see ../shared/fuse-notes.md §4).

Inode numbers in the mount::

    1                      the mount root: one hidden share per storage folder
    16 + folder id         SMPSTORED_XXXXXXXX$  (a share: one dir per state store)
    store rowid << 40 | n  inode n of that store (n = 1 is the store directory)
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from ..crypto.chunk import BLOCK_SIZE
from ..lifecycle import access as access_mod
from ..store.diskio import unlink_files
from ..store.layout import ROOT as STORE_ROOT
from ..store.layout import Attr
from ..store.statestore import StateStore
from .writeback import Writeback

NO_BLOCKS = -1              # durable(): make the commits durable, no block files to fsync

log = logging.getLogger("smpfs.mount.operations")

SHIFT = 40
STUB = 0                      # local inode of a store directory as others see it (no way in)
LOCAL_MASK = (1 << SHIFT) - 1
SHARE_BASE = 16
TIMEOUT = 60.0                # entry/attr cache seconds (invalidated on lifecycle changes)
GONE = ("deleting", "deleted")


@dataclass
class StoreRec:
    """What the FUSE layer knows of a store from smp.db."""
    rowid: int
    store_id: str
    folder_id: int
    status: str
    source_uid: int
    dest_uid: int
    created_ns: int = 0

    def as_row(self) -> dict:
        return {"status": self.status, "source_uid": self.source_uid, "dest_uid": self.dest_uid}


@dataclass
class ShareRec:
    folder_id: int
    share: str
    path: str
    min_free: Callable[[], int]

    @property
    def name(self) -> bytes:
        return f"SMPSTORED_{self.share}$".encode()


@dataclass
class Handle:
    ino: int          # global
    uid: int
    gid: int
    writable: bool
    suid: bool = False    # setuid/setgid bits to clear on the next write

def split(ino: int) -> tuple[int, int]:
    return ino >> SHIFT, ino & LOCAL_MASK


def join(rowid: int, local: int) -> int:
    return (rowid << SHIFT) | local


def _fail(code: int):
    return pyfuse3.FUSEError(code)


class Catalog:
    """The daemon's view of smp.db: shares and stores. The daemon refreshes it."""

    def __init__(self):
        self.shares: dict[int, ShareRec] = {}        # folder id -> share
        self.stores: dict[int, StoreRec] = {}        # rowid -> store
        self.open_store: Callable[[StoreRec], StateStore] | None = None
        self._by_id: dict[str, int] = {}
        self._by_id_of = None

    def share_by_name(self, name: bytes) -> ShareRec | None:
        for s in self.shares.values():
            if s.name == name:
                return s
        return None

    def live_stores_in(self, folder_id: int):
        return [s for s in self.stores.values() if s.folder_id == folder_id and s.status not in GONE]

    def live_store(self, folder_id: int, store_id: str) -> StoreRec | None:
        """The store named ``store_id`` in a share: one dict lookup, however many stores."""
        rowid = self.by_id.get(store_id)
        rec = self.stores.get(rowid) if rowid is not None else None
        if rec is None or rec.folder_id != folder_id or rec.status in GONE:
            return None
        return rec

    @property
    def by_id(self) -> dict[str, int]:
        if self._by_id_of is not self.stores:          # rebuilt when the daemon swaps the dict
            self._by_id = {r.store_id: r.rowid for r in self.stores.values()}
            self._by_id_of = self.stores
        return self._by_id


THREAD_READ = 64 << 10


def _groups(pid: int) -> set[int]:
    """The supplementary groups of the calling process (FUSE sends only its fsgid)."""
    try:
        return set(pyfuse3.get_sup_groups(pid))
    except (OSError, ValueError):
        return set()         # reads decrypting this much or more go to a worker thread


#: Requests served, by kind (logged at unmount: what a workload costs in round trips).
OP_COUNTS: collections.Counter = collections.Counter()


def _guarded(fn):
    """A handler that raises anything but FUSEError would end pyfuse3.main()
    and take the whole mount down: turn such bugs into EIO for that request."""
    import functools

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        OP_COUNTS[name] += 1
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO)
        except Exception as e:
            log.exception("%s failed", fn.__name__)
            if fn.__name__ == "forget":
                return None
            raise pyfuse3.FUSEError(errno.ENOSPC if "disk is full" in str(e) else errno.EIO)   # sqlite: SQLITE_FULL
    return wrapper


class SmpOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    # Measured off and on (00:32, README "Performance"): with it, the kernel sends
    # 1 MiB writes at any offset, throttled by FUSE's per-device dirty limit, and
    # sequential writes were no faster; without it write(2) itself gets EROFS
    # once a store is released, and ENOSPC when the folder is full.
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, catalog: Catalog):
        super().__init__()
        self.cat = catalog
        self.stores: dict[int, StateStore] = {}      # rowid -> open store
        self.lookups: dict[int, int] = {}            # global ino -> kernel lookup count
        self.opens: dict[int, int] = {}              # global ino -> open file handles
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, tuple[int, int]] = {}   # fh -> (global ino, uid)
        self._next_fh = 1
        self.wb = Writeback()
        self.last_used: dict[int, float] = {}
        self._durable_locks: dict[int, trio.Lock] = {}
        self.read_limiter = trio.CapacityLimiter(4)     # disk reads overlap; decryption releases the GIL

    # -- helpers ------------------------------------------------------------------

    def _rec(self, rowid: int) -> StoreRec:
        rec = self.cat.stores.get(rowid)
        if rec is None:
            raise _fail(errno.ENOENT)
        if rec.status in GONE:
            raise _fail(errno.ESTALE)    # what an inode of a deleted store now is, to open handles too
        return rec

    def _store(self, rowid: int) -> StateStore:
        st = self.stores.get(rowid)
        if st is None:
            rec = self._rec(rowid)
            st = self.stores[rowid] = self.cat.open_store(rec)
            self.wb.attach(st)
        self.last_used[rowid] = time.monotonic()
        return st

    def _level(self, rowid: int, uid: int) -> str | None:
        return access_mod.level(self._rec(rowid).as_row(), uid)

    def _need(self, rowid: int, uid: int, write: bool = False) -> StateStore:
        """The store, if ``uid`` may read it (or change it, with ``write``)."""
        lvl = self._level(rowid, uid)
        if lvl is None:
            raise _fail(errno.EACCES)
        if write and lvl != "rw":
            raise _fail(errno.EROFS)
        return self._store(rowid)

    def _entry(self, rowid: int, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = join(rowid, a.ino)
        e.generation = 0
        # Names inside a store are cached: every path walk into a store passes
        # its directory, which is never cached and is a stub for other uids
        # (see _store_root_entry), so a cached name can't be reached by them.
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = BLOCK_SIZE
        e.st_blocks = (a.size + 511) // 512
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        if a.ino == STORE_ROOT:
            # the store directory shows the uid entitled to it now
            rec = self.cat.stores[rowid]
            owner = rec.source_uid if rec.status == "capturing" else rec.dest_uid
            e.st_uid = e.st_gid = owner
            e.st_mode = stat.S_IFDIR | 0o700
        return e

    def _store_root_entry(self, rec: StoreRec, uid: int) -> pyfuse3.EntryAttributes:
        """The store directory as the share shows it to ``uid``.

        The kernel's dentry cache is shared by all uids, so a name looked up in a
        store by its computer would let anyone else walk to it without asking us.
        Hence the store directory is never cached (entry timeout 0: every path
        walk through it asks us again) and is a different inode for each side:
        the uid entitled to the store gets the real directory; everyone else a
        *stub* (local inode 0) with no way in, whose attributes are made up from
        the catalog, so listing a share opens no store and unwraps no key."""
        if access_mod.level(rec.as_row(), uid) is not None:
            e = self._entry(rec.rowid, self._store(rec.rowid).getattr(STORE_ROOT))
            e.entry_timeout = 0
            return e
        return self._stub_entry(rec)

    def _stub_entry(self, rec: StoreRec) -> pyfuse3.EntryAttributes:
        e = self._virtual_entry(join(rec.rowid, STUB))
        e.entry_timeout = e.attr_timeout = 0
        owner = rec.source_uid if rec.status == "capturing" else rec.dest_uid
        e.st_uid = e.st_gid = owner
        e.st_mode = stat.S_IFDIR | 0o700
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = rec.created_ns
        return e

    def _virtual_entry(self, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = stat.S_IFDIR | 0o755
        e.st_nlink = 2
        e.st_blksize = 4096
        return e

    def _oserr(self, e: OSError):
        if isinstance(e, pyfuse3.FUSEError):
            return e
        if e.errno == errno.EIO:
            log.error("I/O error: %s", e.strerror)
        return _fail(e.errno or errno.EIO)

    def _counted(self, entry: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        self.lookups[entry.st_ino] = self.lookups.get(entry.st_ino, 0) + 1
        return entry

    def _maybe_free(self, ino: int) -> None:
        """Free an unlinked inode once the kernel and every handle let go of it."""
        rowid, local = split(ino)
        if rowid == 0 or self.lookups.get(ino) or self.opens.get(ino):
            return
        st = self.stores.get(rowid)
        if st is not None and st.db is not None:
            try:
                st.free_if_unlinked(local)
            except OSError as e:
                log.warning("could not free inode %d: %s", ino, e)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- lookups and attributes --------------------------------------------------

    async def lookup(self, parent, name, ctx):
        rowid, local = split(parent)
        if rowid == 0:
            return self._counted(self._lookup_virtual(parent, name, ctx.uid))
        if local == STUB and name not in (b".", b".."):
            raise _fail(errno.EACCES)
        st = self._need(rowid, ctx.uid)
        try:
            if name == b".." and st.lookup(local, name) == STORE_ROOT and local == STORE_ROOT:
                share = self.cat.shares[self.cat.stores[rowid].folder_id]
                return self._counted(self._virtual_entry(SHARE_BASE + share.folder_id))
            return self._counted(self._entry(rowid, st.lookup_attr(local, name)))
        except OSError as e:
            raise self._oserr(e)

    def _lookup_virtual(self, parent: int, name: bytes, uid: int) -> pyfuse3.EntryAttributes:
        if name == b"." or (parent == pyfuse3.ROOT_INODE and name == b".."):
            return self._virtual_entry(parent)
        if parent == pyfuse3.ROOT_INODE:
            share = self.cat.share_by_name(name)
            if share is None:
                raise _fail(errno.ENOENT)
            return self._virtual_entry(SHARE_BASE + share.folder_id)
        if name == b"..":
            return self._virtual_entry(pyfuse3.ROOT_INODE)
        folder_id = parent - SHARE_BASE
        try:
            sid = name.decode("ascii")
        except UnicodeDecodeError:
            raise _fail(errno.ENOENT)
        rec = self.cat.live_store(folder_id, sid)
        if rec is None:
            raise _fail(errno.ENOENT)
        return self._store_root_entry(rec, uid)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                self._maybe_free(ino)

    async def getattr(self, inode, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            return self._virtual_entry(inode)
        try:
            # attributes are visible to those who can see the store; the store
            # directory itself is visible to anyone who can list the share
            if local == STUB:
                return self._stub_entry(self._rec(rowid))
            return self._entry(rowid, self._need(rowid, ctx.uid).getattr(local))
        except OSError as e:
            raise self._oserr(e)

    async def setattr(self, inode, attr, fields, fh, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            raise _fail(errno.EPERM)
        uid = self.handles[fh].uid if fh is not None and fh in self.handles else ctx.uid
        st = self._need(rowid, uid, write=True)
        if local == STORE_ROOT and (fields.update_mode or fields.update_uid or fields.update_gid):
            raise _fail(errno.EPERM)            # the SMP owns the store directory's owner and mode
        kw = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid and attr.st_uid != st.getattr(local).uid:
            if ctx.uid != 0 and attr.st_uid != ctx.uid:
                raise _fail(errno.EPERM)
            kw["uid"] = attr.st_uid
        if fields.update_gid and attr.st_gid != st.getattr(local).gid:
            # POSIX: an owner may give a file only to a group it belongs to
            if attr.st_gid != ctx.gid and attr.st_gid not in _groups(ctx.pid):
                raise _fail(errno.EPERM)
            kw["gid"] = attr.st_gid
        if fields.update_size:
            kw["size"] = attr.st_size
            st.flush_inode(local)
            await self.wb.drain(st, local)
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        try:
            a = st.setattr(local, **kw)
        except OSError as e:
            raise self._oserr(e)
        if "mode" in kw:
            for h in self.handles.values():
                if h.ino == inode:
                    h.suid = bool(a.mode & (stat.S_ISUID | stat.S_ISGID))
        return self._entry(rowid, a)

    async def access(self, inode, mode, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            return not (mode & os.W_OK)
        if local == STUB:
            return False
        try:
            lvl = self._level(rowid, ctx.uid)
        except pyfuse3.FUSEError:
            return False
        if lvl is None:
            return False
        return lvl == "rw" or not (mode & os.W_OK)

    async def readlink(self, inode, ctx):
        rowid, local = split(inode)
        try:
            return self._need(rowid, ctx.uid).readlink(local)
        except OSError as e:
            raise self._oserr(e)

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        seen, total, free, avail, files, ffree = set(), 0, 0, 0, 0, 0
        for share in self.cat.shares.values():
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

    # -- directories ----------------------------------------------------------------

    async def opendir(self, inode, ctx):
        rowid, local = split(inode)
        if rowid:
            if local == STUB:
                raise _fail(errno.EACCES)
            self._need(rowid, ctx.uid)
        fh = self._new_fh()
        self.dir_handles[fh] = (inode, ctx.uid)
        return fh

    async def readdir(self, fh, start_id, token):
        inode, uid = self.dir_handles[fh]
        rowid, local = split(inode)
        if rowid == 0:
            return self._readdir_virtual(inode, uid, start_id, token)
        try:
            st = self._need(rowid, uid)
            after = start_id
            while True:
                batch = st.readdir(local, after)
                if not batch:
                    return
                for cursor, name, a in batch:
                    entry = self._entry(rowid, a)
                    if not pyfuse3.readdir_reply(token, name, entry, cursor):
                        return
                    self._counted(entry)
                    after = cursor
        except OSError as e:
            raise self._oserr(e)

    def _readdir_virtual(self, inode, uid, start_id, token):
        if inode == pyfuse3.ROOT_INODE:
            items = [(s.folder_id, s.name, self._virtual_entry(SHARE_BASE + s.folder_id))
                     for s in sorted(self.cat.shares.values(), key=lambda s: s.folder_id)]
        else:
            items = [(r.rowid, r.store_id.encode(), None)
                     for r in sorted(self.cat.live_stores_in(inode - SHARE_BASE), key=lambda r: r.rowid)]
        for cursor, name, entry in items:
            if cursor <= start_id:
                continue
            if entry is None:
                try:
                    entry = self._store_root_entry(self.cat.stores[cursor], uid)
                except (OSError, pyfuse3.FUSEError, KeyError):
                    continue
            if not pyfuse3.readdir_reply(token, name, entry, cursor):
                return
            self._counted(entry)

    async def releasedir(self, fh):
        self.dir_handles.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        inode, _uid = self.dir_handles.get(fh, (0, 0))
        rowid, _ = split(inode)
        if rowid and rowid in self.stores:
            # entries live in store.db: a durable commit is what makes them stay
            await self.durable(self.stores[rowid], NO_BLOCKS)

    async def mkdir(self, parent, name, mode, ctx):
        return await self._mknode(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)

    async def mknod(self, parent, name, mode, rdev, ctx):
        return await self._mknode(parent, name, mode, ctx, rdev=rdev)

    async def symlink(self, parent, name, target, ctx):
        return await self._mknode(parent, name, stat.S_IFLNK | 0o777, ctx, target=target)

    async def _mknode(self, parent, name, mode, ctx, rdev=0, target=None):
        rowid, local = split(parent)
        if rowid == 0:
            raise _fail(errno.EACCES)
        st = self._need(rowid, ctx.uid, write=True)
        try:
            a = st.mknode(local, name, mode, ctx.uid, ctx.gid, rdev=rdev, target=target)
        except OSError as e:
            raise self._oserr(e)
        return self._counted(self._entry(rowid, a))

    async def unlink(self, parent, name, ctx):
        await self._remove(parent, name, ctx, want_dir=False)

    async def rmdir(self, parent, name, ctx):
        await self._remove(parent, name, ctx, want_dir=True)

    async def _remove(self, parent, name, ctx, want_dir):
        rowid, local = split(parent)
        if rowid == 0:
            raise _fail(errno.EACCES)
        st = self._need(rowid, ctx.uid, write=True)
        try:
            a = st.unlink(local, name, want_dir=want_dir)
        except OSError as e:
            raise self._oserr(e)
        if a.nlink == 0:
            self._maybe_free(join(rowid, a.ino))

    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        r1, l1 = split(parent_old)
        r2, l2 = split(parent_new)
        if r1 == 0 or r2 == 0:
            raise _fail(errno.EACCES)
        if r1 != r2:
            raise _fail(errno.EXDEV)
        st = self._need(r1, ctx.uid, write=True)
        try:
            replaced = st.rename(l1, name_old, l2, name_new,
                                 noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                                 exchange=bool(flags & pyfuse3.RENAME_EXCHANGE))
        except OSError as e:
            raise self._oserr(e)
        if replaced is not None and replaced.nlink == 0:
            self._maybe_free(join(r1, replaced.ino))

    async def link(self, inode, new_parent, new_name, ctx):
        r1, l1 = split(inode)
        r2, l2 = split(new_parent)
        if r1 == 0 or r2 == 0:
            raise _fail(errno.EACCES if r2 == 0 else errno.EPERM)
        if r1 != r2:
            raise _fail(errno.EXDEV)
        st = self._need(r1, ctx.uid, write=True)
        try:
            return self._counted(self._entry(r1, st.link(l1, l2, new_name)))
        except OSError as e:
            raise self._oserr(e)

    # -- files ------------------------------------------------------------------------

    def _open_handle(self, inode: int, ctx, writable: bool, mode: int = 0) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        self.handles[fh] = Handle(inode, ctx.uid, ctx.gid, writable,
                                  bool(mode & (stat.S_ISUID | stat.S_ISGID)))
        self.opens[inode] = self.opens.get(inode, 0) + 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def open(self, inode, flags, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            raise _fail(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        st = self._need(rowid, ctx.uid, write=writable)
        try:
            a = st.getattr(local)
            if stat.S_ISDIR(a.mode) and writable:
                raise _fail(errno.EISDIR)
            if flags & os.O_TRUNC:          # POSIX: marks mtime even if the file is empty
                st.flush_inode(local)
                await self.wb.drain(st, local)
                st.truncate(local, 0)
        except OSError as e:
            raise self._oserr(e)
        return self._open_handle(inode, ctx, writable, a.mode)

    async def create(self, parent, name, mode, flags, ctx):
        rowid, local = split(parent)
        if rowid == 0:
            raise _fail(errno.EACCES)
        st = self._need(rowid, ctx.uid, write=True)
        try:
            a = st.mknode(local, name, stat.S_IFREG | stat.S_IMODE(mode), ctx.uid, ctx.gid)
        except OSError as e:
            raise self._oserr(e)
        entry = self._counted(self._entry(rowid, a))
        return self._open_handle(entry.st_ino, ctx, True), entry

    def _handle_store(self, fh: int, write: bool) -> tuple[Handle, StateStore, int]:
        h = self.handles.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        rowid, local = split(h.ino)
        rec = self.cat.stores.get(rowid)
        if rec is None or rec.status in GONE:
            raise _fail(errno.EIO)           # the store was deleted under this handle
        if write:
            if not h.writable or access_mod.level(rec.as_row(), h.uid) != "rw":
                raise _fail(errno.EROFS)
        elif access_mod.level(rec.as_row(), h.uid) is None:
            raise _fail(errno.EACCES)
        return h, self._store(rowid), local

    async def read(self, fh, off, size):
        h, st, local = self._handle_store(fh, write=False)
        try:
            parts = st.read_plan(local, off, size)
        except OSError as e:
            raise self._oserr(e)
        try:
            big = sum(p.n for p in parts if not isinstance(p, (bytes, bytearray))) >= THREAD_READ
            if big:
                return await trio.to_thread.run_sync(st.fetch, parts, limiter=self.read_limiter)
            return st.fetch(parts)
        except OSError as e:
            raise self._oserr(e)
        finally:
            st.unpin(parts)

    async def write(self, fh, off, buf):
        h, st, local = self._handle_store(fh, write=True)
        try:
            st.check_error(local)                # an earlier write-back failed: say so now
            n = st.write(local, off, buf)
            if h.suid:
                st.clear_suid(local)
                for other in self.handles.values():
                    if other.ino == h.ino:
                        other.suid = False
        except OSError as e:
            raise self._oserr(e)
        await self.wb.wait_room()
        return n

    async def flush(self, fh):
        h = self.handles.get(fh)
        if h is None or not h.writable:
            return
        rowid, local = split(h.ino)
        st = self.stores.get(rowid)
        if st is None or st.db is None:
            return
        try:
            st.flush_inode(local)
            await self.wb.drain(st, local)
            st.take_error(local)
            st.commit()
        except OSError as e:
            raise self._oserr(e)

    async def fsync(self, fh, datasync):
        h = self.handles.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        rowid, local = split(h.ino)
        st = self.stores.get(rowid)
        if st is None or st.db is None:
            raise _fail(errno.EIO)
        await self.durable(st, local)

    async def release(self, fh):
        h = self.handles.pop(fh, None)
        if h is None:
            return
        left = self.opens.get(h.ino, 1) - 1
        if left:
            self.opens[h.ino] = left
        else:
            self.opens.pop(h.ino, None)
        rowid, local = split(h.ino)
        st = self.stores.get(rowid)
        if st is None or st.db is None:
            return
        try:
            if h.writable:
                st.flush_inode(local)
                await self.wb.drain(st, local)
                st.commit()
        except OSError as e:
            log.error("writing back inode %d on close failed: %s", h.ino, e)
        self._maybe_free(h.ino)

    # -- extended attributes -----------------------------------------------------------

    async def setxattr(self, inode, name, value, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            raise _fail(errno.EPERM)
        if name.startswith((b"system.", b"security.")):
            raise _fail(errno.EOPNOTSUPP)
        st = self._need(rowid, ctx.uid, write=True)
        try:
            st.setxattr(local, name, value)
        except OSError as e:
            raise self._oserr(e)

    async def getxattr(self, inode, name, ctx):
        rowid, local = split(inode)
        if rowid == 0 or name.startswith((b"system.", b"security.")):
            raise _fail(pyfuse3.ENOATTR)
        st = self._need(rowid, ctx.uid)
        try:
            return st.getxattr(local, name)
        except OSError as e:
            raise self._oserr(e)

    async def listxattr(self, inode, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            return []
        try:
            return self._need(rowid, ctx.uid).listxattr(local)
        except OSError as e:
            raise self._oserr(e)

    async def removexattr(self, inode, name, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            raise _fail(errno.EPERM)
        st = self._need(rowid, ctx.uid, write=True)
        try:
            st.removexattr(local, name)
        except OSError as e:
            raise self._oserr(e)

    # -- lifecycle hooks for the daemon ---------------------------------------------------

    def open_inodes(self, rowid: int) -> list[int]:
        return [ino for ino in set(self.opens) | set(self.lookups) if split(ino)[0] == rowid]

    async def durable(self, st: StateStore, ino: int | None = None) -> None:
        """fsync() of one inode (or, with None, a durable point of the whole
        store) without blocking the loop: blocks are written and their files,
        the WAL (and then the unlinking of superseded blocks) are flushed in a
        worker thread."""
        lock = self._durable_locks.setdefault(id(st), trio.Lock())
        async with lock:                         # one durable point of a store at a time
            await self._durable(st, ino)

    async def _durable(self, st: StateStore, ino: int | None) -> None:
        try:
            if ino is None:
                st.flush_all()
            elif ino != NO_BLOCKS:
                st.flush_inode(ino)
            await self.wb.drain(st, None if ino == NO_BLOCKS else ino)
            if ino is not None and ino != NO_BLOCKS:
                st.take_error(ino)
            work, done = st.prepare_durable(ino)
            if not work.idle:                    # already durable: no thread hop for nothing
                await trio.to_thread.run_sync(work)
            drop = done()
            if drop:
                await trio.to_thread.run_sync(unlink_files, drop)
        except OSError as e:
            raise self._oserr(e)

    async def drain_all(self) -> None:
        for st in list(self.stores.values()):
            st.flush_all()
            await self.wb.drain(st)

    def close_idle(self, max_idle: float) -> None:
        """Close stores nobody used for ``max_idle`` seconds and nobody holds
        open: their keys leave memory, their databases are checkpointed."""
        busy = {ino >> SHIFT for ino in self.opens}
        now = time.monotonic()
        for rowid, st in list(self.stores.items()):
            if rowid in busy or st.inflight() or now - self.last_used.get(rowid, now) < max_idle:
                continue
            try:
                self.close_store(rowid)
            except Exception:
                log.exception("closing idle store %d failed", rowid)

    def close_store(self, rowid: int, *, abandon: bool = False) -> None:
        st = self.stores.pop(rowid, None)
        self.last_used.pop(rowid, None)
        if st is not None:
            self._durable_locks.pop(id(st), None)
            st.submit = None
            if abandon:
                st.abandon()
            else:
                st.close()


for _name, _fn in list(vars(SmpOperations).items()):
    if not _name.startswith("_") and hasattr(pyfuse3.Operations, _name) and \
            callable(_fn) and getattr(_fn, "__code__", None) and _fn.__code__.co_flags & 0x80:
        setattr(SmpOperations, _name, _guarded(_fn))
