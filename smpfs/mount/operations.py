"""The FUSE layer: kernel requests in, calls on state stores out.

It owns only what is FUSE's business: turning requests into store calls
and store answers into replies. Who may do what is decided by
:func:`smpfs.lifecycle.access.level` on every request (``default_permissions``
is off: the kernel's dentry and attribute caches are shared by all uids, so a
check made for one caller must never be reused for another; see
../shared/fuse-notes.md §4). Around it:

* :mod:`.inodes` the inode-number namespace and the attributes given to the kernel;
* :mod:`.virtual` the root and share directories above the stores;
* :mod:`.handles` kernel lookup counts and file handles;
* :mod:`.stores` the open stores, their durable points and idle closing;
* :mod:`.guard` the one place where exceptions become replies: handlers let
  ``OSError`` rise, and anything else becomes EIO rather than ending the mount.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable

import pyfuse3
import trio

from ..lifecycle import access as access_mod
from ..store.blocks import SpaceAfterDurable
from ..store.layout import ROOT as STORE_ROOT
from ..store.statestore import StateStore
from .catalog import GONE, Catalog, StoreRec
from .checks import Checks
from .guard import handler, no_reply
from .handles import Handle, Handles
from .inodes import SHARE_BASE, STUB, join, split, stub_entry, virtual_entry
from .pagecache import PageCachePush
from .perms import CAP_FSETID, REACH, Perms, R, W, X, access_want
from .stores import NO_BLOCKS, OpenStores
from .virtual import VirtualDirs
from .writeback import Writeback

log = logging.getLogger("smpfs.mount.operations")

THREAD_READ = 64 << 10       # reads decrypting this much or more go to a worker thread
PUSH_READ = 32 << 10         # reads smaller than this push the rest of their chunk to the page cache
FMODE_EXEC = 0x20            # in open()'s flags when the kernel opens a file to execute it


def _fail(code: int):
    return pyfuse3.FUSEError(code)


def _groups(pid: int) -> set[int]:
    """The supplementary groups of the calling process (FUSE sends only its fsgid)."""
    try:
        return set(pyfuse3.get_sup_groups(pid))
    except (OSError, ValueError):
        return set()


class SmpOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    # Measured off and on (00:32, README "Performance"): with it, the kernel sends
    # 1 MiB writes at any offset, throttled by FUSE's per-device dirty limit, and
    # sequential writes were no faster; without it write(2) itself gets EROFS
    # once a store is released, and ENOSPC when the folder is full.
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, catalog: Catalog, open_store: Callable[[StoreRec], StateStore],
                 on_denied: Callable[[int, str | None, int], None] | None = None):
        super().__init__()
        self.cat = catalog
        #: told of every refusal on a store, ``(uid, store_id, errno)``: the audit counts them
        self.on_denied = on_denied
        self.wb = Writeback()
        self.handles = Handles()
        self.stores = OpenStores(catalog, open_store, self.wb, self.handles)
        self.virtual = VirtualDirs(catalog, self.stores, self.handles)
        self.perms = Perms()
        self.chk = Checks(catalog, self.perms)
        self.read_limiter = trio.CapacityLimiter(4)     # disk reads overlap; decryption releases the GIL
        self.pagecache = PageCachePush()

    # -- helpers ------------------------------------------------------------------

    def _level(self, rowid: int, uid: int) -> str | None:
        return access_mod.level(self.stores.rec(rowid).as_row(), uid)

    def _denied(self, rowid: int, uid: int, code: int) -> pyfuse3.FUSEError:
        """The refusal ``code`` of a request by ``uid`` on store ``rowid``, reported to the audit."""
        if self.on_denied is not None:
            rec = self.cat.stores.get(rowid)
            try:
                self.on_denied(uid, rec.store_id if rec else None, code)
            except Exception:                       # the audit never changes the reply
                log.exception("reporting a refusal failed")
        return _fail(code)

    def _need(self, rowid: int, uid: int, write: bool = False) -> StateStore:
        """The store, if ``uid`` may read it (or change it, with ``write``)."""
        lvl = self._level(rowid, uid)
        if lvl is None:
            raise self._denied(rowid, uid, errno.EACCES)
        if write and lvl != "rw":
            raise self._denied(rowid, uid, errno.EROFS)
        return self.stores.use(rowid)

    def _handle_store(self, fh: int, write: bool) -> tuple[Handle, StateStore, int]:
        h = self.handles.files.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        rowid, local = split(h.ino)
        rec = self.cat.stores.get(rowid)
        if rec is None or rec.status in GONE:
            raise _fail(errno.EIO)           # the store was deleted under this handle
        if write:
            if not h.writable or access_mod.level(rec.as_row(), h.uid) != "rw":
                raise self._denied(rowid, h.uid, errno.EROFS)
        elif access_mod.level(rec.as_row(), h.uid) is None:
            raise self._denied(rowid, h.uid, errno.EACCES)
        return h, self.stores.use(rowid), local

    def _open_store_of(self, ino: int) -> tuple[StateStore | None, int]:
        """The store of ``ino`` if it is open (and not closed under us), and the local inode."""
        rowid, local = split(ino)
        st = self.stores.open.get(rowid)
        if st is None or st.db is None:
            return None, local
        return st, local

    # -- lookups and attributes --------------------------------------------------

    @handler
    async def lookup(self, parent, name, ctx):
        rowid, local = split(parent)
        if rowid == 0:
            e = self.virtual.lookup(parent, name, ctx.uid)
            if split(e.st_ino)[1] == STORE_ROOT:
                self.perms.remember(e)                 # a store directory, as its computer sees it
            return self.handles.counted(e)
        if local == STUB and name not in (b".", b".."):
            raise self._denied(rowid, ctx.uid, errno.EACCES)
        st = self._need(rowid, ctx.uid)
        if local != STUB:
            self.chk.may(ctx, rowid, local, st, X)        # search permission on the directory
        if name == b".." and st.lookup(local, name) == STORE_ROOT and local == STORE_ROOT:
            share = self.cat.shares[self.cat.stores[rowid].folder_id]
            return self.handles.counted(virtual_entry(SHARE_BASE + share.folder_id))
        return self.handles.counted(self.chk.entry_under(rowid, local, st, st.lookup_attr(local, name), ctx.uid))

    @no_reply
    async def forget(self, inode_list):
        for ino, n in inode_list:
            if self.handles.forget(ino, n):
                self.perms.drop(ino)
                self.stores.free_if_unreferenced(ino)

    @handler
    async def getattr(self, inode, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            return virtual_entry(inode)
        # attributes are visible to those who can see the store; the store
        # directory itself is visible to anyone who can list the share
        if local == STUB:
            return stub_entry(self.stores.rec(rowid))
        return self.chk.entry(rowid, self._need(rowid, ctx.uid).getattr(local, stored=True))

    @handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        rowid, local = split(inode)
        if rowid == 0 or local == STUB:
            raise _fail(errno.EPERM)
        h = self.handles.files.get(fh) if fh is not None else None
        st = self._need(rowid, h.uid if h is not None else ctx.uid, write=True)
        a = st.getattr(local)
        if local == STORE_ROOT:
            a.uid = a.gid = self.cat.stores[rowid].owner     # the SMP owns the store directory's owner
        c = self.perms.full(ctx, self.chk.alias(rowid, ctx.uid))
        kw = self.chk.setattr_rights(ctx, rowid, local, st, a, attr, fields, c)
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        if fields.update_size:
            if stat.S_ISDIR(a.mode):
                raise _fail(errno.EISDIR)
            if h is None:                                     # truncate(2) by path: write permission
                self.chk.may(ctx, rowid, local, st, W)
            if attr.st_size != a.size:
                await self._truncate(st, inode, attr.st_size, c.has(CAP_FSETID))
        before = self.chk.pattr(rowid, local, st)
        a = st.setattr(local, **kw)
        e = self.chk.entry(rowid, a)
        if kw.keys() & {"mode", "uid", "gid"}:
            self.chk.after_dir_change(rowid, local, st, ctx.uid, before, self.chk.pattr(rowid, local, st))
        if "mode" in kw:
            for other in self.handles.of_inode(inode):
                other.suid = bool(a.mode & (stat.S_ISUID | stat.S_ISGID))
        return e

    @handler
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
        if lvl is None or (mode & os.W_OK and lvl != "rw"):
            return False
        want = access_want(mode)
        if not want:
            return True                                # F_OK: it exists
        st = self.stores.use(rowid)
        return self.perms.check(ctx, self.chk.alias(rowid, ctx.uid), self.chk.pattr(rowid, local, st), want) is not None

    @handler
    async def readlink(self, inode, ctx):
        rowid, local = split(inode)
        return self._need(rowid, ctx.uid).readlink(local)

    @handler
    async def statfs(self, ctx):
        return self.virtual.statfs(ctx.uid)

    # -- directories ----------------------------------------------------------------

    @handler
    async def opendir(self, inode, ctx):
        rowid, local = split(inode)
        if rowid:
            if local == STUB:
                raise self._denied(rowid, ctx.uid, errno.EACCES)
            self.chk.may(ctx, rowid, local, self._need(rowid, ctx.uid), R)
        return self.handles.open_dir(inode, ctx.uid)

    @handler
    async def readdir(self, fh, start_id, token):
        inode, uid = self.handles.dirs[fh]
        rowid, local = split(inode)
        if rowid == 0:
            return self.virtual.readdir(inode, uid, start_id, token)
        st = self._need(rowid, uid)
        # names the uid alone may not search for are not cached (see perms.py)
        cache = self.perms.cacheable(uid, self.chk.alias(rowid, uid), self.chk.pattr(rowid, local, st))
        after = start_id
        while True:
            batch = st.readdir(local, after)
            if not batch:
                return
            for cursor, name, a in batch:
                entry = self.chk.entry(rowid, a)
                if not cache:
                    entry.entry_timeout = 0
                if not pyfuse3.readdir_reply(token, name, entry, cursor):
                    return
                self.handles.counted(entry)
                after = cursor

    @handler
    async def releasedir(self, fh):
        self.handles.dirs.pop(fh, None)

    @handler
    async def fsyncdir(self, fh, datasync):
        inode, _uid = self.handles.dirs.get(fh, (0, 0))
        rowid, _ = split(inode)
        if rowid and rowid in self.stores.open:
            # entries live in store.db: a durable commit is what makes them stay
            await self.stores.durable(self.stores.open[rowid], NO_BLOCKS)

    @handler
    async def mkdir(self, parent, name, mode, ctx):
        return self._mknode(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)

    @handler
    async def mknod(self, parent, name, mode, rdev, ctx):
        return self._mknode(parent, name, mode, ctx, rdev=rdev)

    @handler
    async def symlink(self, parent, name, target, ctx):
        return self._mknode(parent, name, stat.S_IFLNK | 0o777, ctx, target=target)

    def _mknode(self, parent, name, mode, ctx, rdev=0, target=None):
        rowid, local = split(parent)
        if rowid == 0:
            raise _fail(errno.EACCES)
        st = self._need(rowid, ctx.uid, write=True)
        mode = self.chk.new_mode(ctx, rowid, local, st, mode)
        a = st.mknode(local, name, mode, ctx.uid, ctx.gid, rdev=rdev, target=target)
        return self.handles.counted(self.chk.entry_under(rowid, local, st, a, ctx.uid))

    @handler
    async def unlink(self, parent, name, ctx):
        self._remove(parent, name, ctx, want_dir=False)

    @handler
    async def rmdir(self, parent, name, ctx):
        self._remove(parent, name, ctx, want_dir=True)

    def _remove(self, parent, name, ctx, want_dir):
        rowid, local = split(parent)
        if rowid == 0:
            raise _fail(errno.EACCES)
        st = self._need(rowid, ctx.uid, write=True)
        self.chk.may_remove(ctx, rowid, local, name, st)
        a = st.unlink(local, name, want_dir=want_dir)
        if a.nlink == 0:
            self.stores.free_if_unreferenced(join(rowid, a.ino))

    @handler
    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        r1, l1 = split(parent_old)
        r2, l2 = split(parent_new)
        if r1 == 0 or r2 == 0:
            raise _fail(errno.EACCES)
        if r1 != r2:
            raise _fail(errno.EXDEV)
        st = self._need(r1, ctx.uid, write=True)
        self.chk.may_rename(ctx, r1, st, l1, name_old, l2, name_new, bool(flags & pyfuse3.RENAME_EXCHANGE))
        replaced = st.rename(l1, name_old, l2, name_new,
                             noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                             exchange=bool(flags & pyfuse3.RENAME_EXCHANGE))
        if replaced is not None and replaced.nlink == 0:
            self.stores.free_if_unreferenced(join(r1, replaced.ino))
        if l1 != l2:
            self.chk.after_move(r1, l2, name_new, st, ctx.uid)
            if flags & pyfuse3.RENAME_EXCHANGE:
                self.chk.after_move(r1, l1, name_old, st, ctx.uid)

    @handler
    async def link(self, inode, new_parent, new_name, ctx):
        r1, l1 = split(inode)
        r2, l2 = split(new_parent)
        if r1 == 0 or r2 == 0:
            raise _fail(errno.EACCES if r2 == 0 else errno.EPERM)
        if r1 != r2:
            raise _fail(errno.EXDEV)
        st = self._need(r1, ctx.uid, write=True)
        self.chk.may(ctx, r1, l2, st, REACH)
        self.chk.may_link(ctx, r1, l1, st)
        return self.handles.counted(self.chk.entry_under(r1, l2, st, st.link(l1, l2, new_name), ctx.uid))

    # -- files ------------------------------------------------------------------------

    @handler
    async def open(self, inode, flags, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            raise _fail(errno.EISDIR)
        acc = flags & os.O_ACCMODE
        writable = acc != os.O_RDONLY or bool(flags & os.O_TRUNC)
        st = self._need(rowid, ctx.uid, write=writable)
        a = st.getattr(local)
        if stat.S_ISDIR(a.mode) and writable:
            raise _fail(errno.EISDIR)
        if flags & FMODE_EXEC:
            want = X
        else:
            want = (R if acc != os.O_WRONLY else 0) | (W if writable else 0)
        c = self.chk.may(ctx, rowid, local, st, want)
        privs = a.mode & (stat.S_ISUID | stat.S_ISGID)
        keep = bool(writable and privs) and self.perms.full(ctx, c.alias).has(CAP_FSETID)
        if writable:                    # until its release, no page of it is pushed (pagecache.py)
            await self.pagecache.changing(inode)
        if flags & os.O_TRUNC:          # POSIX: marks mtime even if the file is empty
            try:
                await self._truncate(st, inode, 0, keep)
            except BaseException:
                self.pagecache.changed(inode)
                raise
        fh = self.handles.open_file(inode, ctx.uid, ctx.gid, writable, 0 if keep else a.mode,
                                    direct=bool(flags & os.O_DIRECT))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def _truncate(self, st: StateStore, inode: int, size: int, keep_privs: bool) -> None:
        local = split(inode)[1]
        await self.pagecache.changing(inode)
        try:
            st.flush_inode(local)
            await self.wb.drain(st, local)
            st.truncate(local, size, keep_privs=keep_privs)
        finally:
            self.pagecache.changed(inode)
        self.perms.drop(inode)

    @handler
    async def create(self, parent, name, mode, flags, ctx):
        rowid, local = split(parent)
        if rowid == 0:
            raise _fail(errno.EACCES)
        st = self._need(rowid, ctx.uid, write=True)
        mode = self.chk.new_mode(ctx, rowid, local, st, stat.S_IFREG | stat.S_IMODE(mode))
        a = st.mknode(local, name, mode, ctx.uid, ctx.gid)
        entry = self.handles.counted(self.chk.entry_under(rowid, local, st, a, ctx.uid))
        keep = bool(a.mode & (stat.S_ISUID | stat.S_ISGID)) and \
            self.perms.full(ctx, self.chk.alias(rowid, ctx.uid)).has(CAP_FSETID)
        await self.pagecache.changing(entry.st_ino)
        fh = self.handles.open_file(entry.st_ino, ctx.uid, ctx.gid, True, 0 if keep else a.mode,
                                    direct=bool(flags & os.O_DIRECT))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), entry

    @handler
    async def read(self, fh, off, size):
        h, st, local = self._handle_store(fh, write=False)
        parts = st.read_plan(local, off, size)
        try:
            big = sum(p.n for p in parts if not isinstance(p, (bytes, bytearray))) >= THREAD_READ
            if big:
                return await trio.to_thread.run_sync(st.fetch, parts, limiter=self.read_limiter)
            if h.direct or size >= PUSH_READ:
                return st.fetch(parts)
            chunks: list = []
            data = st.fetch(parts, chunks)
        finally:
            st.unpin(parts)
        self.pagecache.offer_rest(h.ino, split(h.ino)[0], chunks, off, size)   # the rest of the chunk
        return data

    @handler
    async def write(self, fh, off, buf):
        h, st, local = self._handle_store(fh, write=True)
        st.check_error(local)                # an earlier write-back failed: say so now
        try:
            n = st.write(local, off, buf)
        except SpaceAfterDurable:
            # superseded block files wait for a durable point: make it (off the loop), try once more
            await self.stores.durable(st)
            if st.db is None:                    # the store went meanwhile
                raise OSError(errno.EIO, "the store was closed") from None
            n = st.write(local, off, buf, retry_space=False)
        if h.suid:                           # set at open unless the opener held CAP_FSETID
            st.clear_suid(local)
            self.perms.drop(h.ino)
            for other in self.handles.of_inode(h.ino):
                other.suid = False
        await self.wb.wait_room()
        return n

    @handler
    async def flush(self, fh):
        h = self.handles.files.get(fh)
        if h is None or not h.writable:
            return
        st, local = self._open_store_of(h.ino)
        if st is None:
            return
        st.flush_inode(local)
        await self.wb.drain(st, local)
        st.take_error(local)
        st.commit()

    @handler
    async def fsync(self, fh, datasync):
        h = self.handles.files.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        st, local = self._open_store_of(h.ino)
        if st is None:
            raise _fail(errno.EIO)
        await self.stores.durable(st, local)

    @handler
    async def release(self, fh):
        h = self.handles.close_file(fh)
        if h is None:
            return
        if h.writable:
            self.pagecache.changed(h.ino)
        st, local = self._open_store_of(h.ino)
        if st is None:
            return
        try:
            if h.writable:
                st.flush_inode(local)
                await self.wb.drain(st, local)
                st.commit()
        except OSError as e:                 # release's reply is discarded: say it in the log
            log.error("writing back inode %d on close failed: %s", h.ino, e)
        self.stores.free_if_unreferenced(h.ino)

    # -- extended attributes -----------------------------------------------------------

    @handler
    async def setxattr(self, inode, name, value, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            raise _fail(errno.EPERM)
        if name.startswith((b"system.", b"security.")):
            raise _fail(errno.EOPNOTSUPP)
        st = self._need(rowid, ctx.uid, write=True)
        self.chk.may(ctx, rowid, local, st, W)
        st.setxattr(local, name, value)

    @handler
    async def getxattr(self, inode, name, ctx):
        rowid, local = split(inode)
        if rowid == 0 or local == STUB or name.startswith((b"system.", b"security.")):
            raise _fail(pyfuse3.ENOATTR)
        st = self._need(rowid, ctx.uid)
        self.chk.may(ctx, rowid, local, st, R)
        return st.getxattr(local, name)

    @handler
    async def listxattr(self, inode, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            return []
        return self._need(rowid, ctx.uid).listxattr(local)

    @handler
    async def removexattr(self, inode, name, ctx):
        rowid, local = split(inode)
        if rowid == 0:
            raise _fail(errno.EPERM)
        st = self._need(rowid, ctx.uid, write=True)
        self.chk.may(ctx, rowid, local, st, W)
        st.removexattr(local, name)
