"""The rest of a decrypted chunk, pushed into the kernel's page cache.

A small read (a 4 KiB random read is one page) makes the store decrypt a
whole 64 KiB chunk. Instead of throwing the other fifteen pages away, they
are handed to the kernel (``notify_store``) so that later reads of them are
page-cache hits that never reach the daemon: the kernel's page cache is the
decrypted-chunk cache, with the kernel's memory management for a budget.

Pushing stale data would be silent corruption, so a push happens only while
the file cannot change under it, and never after its store changed state:

* it is offered only while no writable handle of the inode is open;
* every change of content (an open for writing, a truncate) first bumps the
  inode's generation and waits until no push of that inode is running; a
  push whose generation moved is dropped;
* a store's change of state (release, deletion) bumps the store's
  generation, and the daemon drops the store's cached pages only once no
  push of it is running (:meth:`PageCachePush.quiesce`, from its
  invalidation thread), so a push either lands before that or never.

``notify_store`` is a blocking call that may wait for a READ in flight
(../shared/fuse-notes.md §2): pushes run in one worker thread of their own,
queued (bounded: when it is full, offers are dropped, they are only a cache).
"""
from __future__ import annotations

import collections
import logging
import threading

import pyfuse3
import trio

log = logging.getLogger("smpfs.mount.pagecache")

MAX_QUEUED = 32              # offers waiting (at most ~2 MiB of plaintext)


class PageCachePush:
    def __init__(self, store=None):
        #: the kernel call; None until :meth:`enable` (there is no FUSE session before)
        self._store = store
        self._cond = threading.Condition()
        # generations only of inodes with a push queued or running (bounded by the queue)
        self._ino_gen: dict[int, int] = {}
        self._pending: dict[int, int] = {}              # ino -> pushes queued or running
        self._store_gen: dict[int, int] = collections.defaultdict(int)
        self._busy_ino: dict[int, int] = {}
        self._frozen: dict[int, int] = {}               # ino -> changes going on (writable handles, truncates)
        self._busy_store: dict[int, int] = {}
        self._queue: collections.deque = collections.deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.pushed = 0                                 # pages' worth of bytes handed over, for counters
        self.dropped = 0

    def enable(self) -> None:
        """The FUSE session exists: pushes may start."""
        if self._store is None:
            self._store = pyfuse3.notify_store

    # -- the loop's side ---------------------------------------------------------------

    def offer(self, ino: int, rowid: int, pieces: list[tuple[int, bytes]]) -> None:
        """Push ``(offset, data)`` pieces of ``ino`` (store ``rowid``), unless
        the inode or its store changes first."""
        with self._cond:
            if ino in self._frozen or self._store is None:
                return                                     # it may be changing: nothing is pushed
            if self._stopping or len(self._queue) >= MAX_QUEUED:
                self.dropped += 1
                return
            self._queue.append((ino, rowid, self._ino_gen.get(ino, 0), self._store_gen[rowid], pieces))
            self._pending[ino] = self._pending.get(ino, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="smpfs-pagecache", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def offer_rest(self, ino: int, rowid: int, chunks, off: int, size: int) -> None:
        """A read of [off, off+size) decrypted whole ``chunks`` ``(file offset,
        plaintext)``: offer what the kernel did not ask for (the pages it
        asked for are locked until the reply)."""
        pieces = []
        for start, plain in chunks:
            end = start + len(plain)
            if start < off:
                pieces.append((start, plain[:min(off, end) - start]))
            if end > off + size:
                lo = max(off + size, start)
                pieces.append((lo, plain[lo - start:]))
        if pieces:
            self.offer(ino, rowid, pieces)

    async def changing(self, ino: int) -> None:
        """``ino``'s content may change from now until :meth:`changed` (a
        writable handle is open, a truncate runs): nothing of it is pushed
        meanwhile. Drops its queued pushes and waits for a running one to
        finish (it pushes what was true before)."""
        with self._cond:
            self._frozen[ino] = self._frozen.get(ino, 0) + 1
            if ino not in self._pending:
                return                                     # nothing queued or running
            self._ino_gen[ino] = self._ino_gen.get(ino, 0) + 1
            busy = self._busy_ino.get(ino)
        while busy:
            await trio.sleep(0.0005)
            with self._cond:
                busy = self._busy_ino.get(ino)

    def changed(self, ino: int) -> None:
        """The change :meth:`changing` announced is over."""
        with self._cond:
            _decrement(self._frozen, ino)

    def store_changed(self, rowid: int) -> None:
        """Store ``rowid`` changed state: no push of it that has not started yet will."""
        with self._cond:
            self._store_gen[rowid] += 1

    def quiesce(self, rowid: int, timeout: float = 30.0) -> None:
        """(A worker thread) Wait until no push of store ``rowid`` is running."""
        with self._cond:
            self._cond.wait_for(lambda: not self._busy_store.get(rowid), timeout=timeout)

    def stop(self) -> None:
        """No more pushes; wait for the one running (before the FUSE session closes)."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._pending.clear()
            self._cond.notify_all()
            t = self._thread
        if t is not None:
            t.join(timeout=10)

    # -- the worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                ino, rowid, gen, sgen, pieces = self._queue.popleft()
                if gen != self._ino_gen.get(ino, 0) or sgen != self._store_gen[rowid]:
                    self._done(ino)
                    continue                               # changed since: what we hold is stale
                self._busy_ino[ino] = self._busy_ino.get(ino, 0) + 1
                self._busy_store[rowid] = self._busy_store.get(rowid, 0) + 1
            try:
                for off, data in pieces:
                    self._store(ino, off, data)
                    self.pushed += len(data)
            except OSError:
                pass                   # ENOENT: the kernel no longer has the inode; nothing to do
            except Exception:
                log.exception("pushing pages to the kernel failed")
            finally:
                with self._cond:
                    for d, k in ((self._busy_ino, ino), (self._busy_store, rowid)):
                        _decrement(d, k)
                    self._done(ino)
                    self._cond.notify_all()

    def _done(self, ino: int) -> None:
        """(Holding the lock) one push of ``ino`` is over."""
        if not _decrement(self._pending, ino):
            self._ino_gen.pop(ino, None)


def _decrement(d: dict[int, int], k: int) -> int:
    left = d.get(k, 1) - 1
    if left > 0:
        d[k] = left
    else:
        d.pop(k, None)
    return left
