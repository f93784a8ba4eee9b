"""The state stores the mount has open: opened on first use, made durable
on fsync and by the daemon's timer, closed when idle or when their store
leaves the catalog."""
from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

import pyfuse3
import trio

from ..store.diskio import unlink_files
from ..store.statestore import StateStore
from .catalog import GONE, Catalog, StoreRec
from .handles import Handles
from .inodes import split
from .writeback import Writeback

log = logging.getLogger("smpfs.mount.operations")

NO_BLOCKS = -1              # durable(): make the commits durable, no block files to fsync


class OpenStores:
    def __init__(self, cat: Catalog, open_store: Callable[[StoreRec], StateStore],
                 wb: Writeback, handles: Handles):
        self.cat = cat
        self.open_store = open_store                 # opens a store of the catalog (keys, paths: the daemon's)
        self.wb = wb
        self.handles = handles
        self.open: dict[int, StateStore] = {}        # rowid -> open store
        self.last_used: dict[int, float] = {}
        self._durable_locks: dict[int, trio.Lock] = {}
        # fsync's own threads: shared with nothing a control client can fill
        self.durable_limiter = trio.CapacityLimiter(4)

    def rec(self, rowid: int) -> StoreRec:
        rec = self.cat.stores.get(rowid)
        if rec is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if rec.status in GONE:
            raise pyfuse3.FUSEError(errno.ESTALE)    # what an inode of a deleted store now is, to open handles too
        return rec

    def use(self, rowid: int) -> StateStore:
        """Store ``rowid``, opened if it is not."""
        st = self.open.get(rowid)
        if st is None:
            st = self.open[rowid] = self.open_store(self.rec(rowid))
            self.wb.attach(st)
        self.last_used[rowid] = time.monotonic()
        return st

    def free_if_unreferenced(self, ino: int) -> None:
        """Free an unlinked inode once the kernel and every handle let go of it."""
        rowid, local = split(ino)
        if rowid == 0 or self.handles.held(ino):
            return
        st = self.open.get(rowid)
        if st is not None and st.db is not None:
            try:
                st.free_if_unlinked(local)
            except OSError as e:
                log.warning("could not free inode %d: %s", ino, e)

    async def durable(self, st: StateStore, ino: int | None = None) -> None:
        """fsync() of one inode (or, with None, a durable point of the whole
        store; with NO_BLOCKS, of its commits only) without blocking the loop:
        blocks are written and their files, the WAL (and then the unlinking of
        superseded blocks) are flushed in a worker thread."""
        lock = self._durable_locks.setdefault(id(st), trio.Lock())
        async with lock:                         # one durable point of a store at a time
            await self._durable(st, ino)

    async def _durable(self, st: StateStore, ino: int | None) -> None:
        if ino is None:
            st.flush_all()
        elif ino != NO_BLOCKS:
            st.flush_inode(ino)
        await self.wb.drain(st, None if ino == NO_BLOCKS else ino)
        if ino is not None and ino != NO_BLOCKS:
            st.take_error(ino)
        work, done = st.prepare_durable(ino)
        if not work.idle:                    # already durable: no thread hop for nothing
            await trio.to_thread.run_sync(work, limiter=self.durable_limiter)
        drop = done()
        if drop:
            await trio.to_thread.run_sync(unlink_files, drop, limiter=self.durable_limiter)

    async def drain_all(self) -> None:
        for st in list(self.open.values()):
            st.flush_all()
            await self.wb.drain(st)

    def stop_writeback(self) -> None:
        """From now on blocks are sealed inline (the daemon is shutting down)."""
        self.wb.stop()
        for st in self.open.values():
            st.submit = None

    def close_idle(self, max_idle: float) -> None:
        """Close stores nobody used for ``max_idle`` seconds and nobody holds
        open: their keys leave memory, their databases are checkpointed."""
        busy = self.handles.busy_stores()
        now = time.monotonic()
        for rowid, st in list(self.open.items()):
            if rowid in busy or st.inflight() or now - self.last_used.get(rowid, now) < max_idle:
                continue
            lock = self._durable_locks.get(id(st))
            if lock is not None and lock.locked():     # a durable point is running in a worker
                continue
            try:
                self.close(rowid)
            except Exception:
                log.exception("closing idle store %d failed", rowid)

    def close(self, rowid: int, *, abandon: bool = False) -> None:
        st = self.open.pop(rowid, None)
        self.last_used.pop(rowid, None)
        if st is not None:
            self._durable_locks.pop(id(st), None)
            st.submit = None
            if abandon:
                st.abandon()
            else:
                st.close()
