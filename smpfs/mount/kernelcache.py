"""Dropping what the kernel caches of a store when who may see it changes.

The kernel keeps attributes, directory entries and (keep_cache) file pages
of a store; when the store changes state (release, restore, deletion) they
must go, so that the next stat() or read() of anything in it asks the FUSE
layer, and the access table, again. pyfuse3's invalidate calls must not run
inside a request handler (the kernel may wait for that very handler), so
they run in a worker thread; :meth:`KernelCache.settled` waits for every one
started so far, which the daemon does before a lifecycle command answers: a
source that reads on right after its release is refused, never served from
the cache.
"""
from __future__ import annotations

import pyfuse3
import trio

from .pagecache import PageCachePush


class KernelCache:
    def __init__(self, pagecache: PageCachePush):
        self.pagecache = pagecache
        self.nursery: trio.Nursery | None = None      # set once the daemon's loop runs
        self._pending: set[trio.Event] = set()

    def invalidate(self, inodes, attr_only: bool = False, entry=None, rowid: int | None = None) -> None:
        """Drop the kernel's cache of ``inodes`` (and of the directory entry
        ``entry`` = (parent inode, name)); with ``rowid``, once no page of that
        store is being pushed. Returns at once; see :meth:`settled`."""
        if self.nursery is None:
            return
        inodes = list(inodes)

        def work() -> None:
            if rowid is not None:
                self.pagecache.quiesce(rowid)
            for ino in inodes:
                try:
                    pyfuse3.invalidate_inode(ino, attr_only=attr_only)
                except OSError:
                    pass
            if entry is not None:
                try:
                    pyfuse3.invalidate_entry(entry[0], entry[1])
                except OSError:
                    pass

        done = trio.Event()
        self._pending.add(done)

        async def run() -> None:
            try:
                await trio.to_thread.run_sync(work)
            finally:
                self._pending.discard(done)
                done.set()
        self.nursery.start_soon(run)

    async def settled(self) -> None:
        """Wait until every invalidation started so far is done."""
        for done in list(self._pending):
            await done.wait()
