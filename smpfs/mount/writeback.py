"""Write-back: full blocks are sealed and written in worker threads.

The kernel serialises writes to one file (no writeback cache), so a
sequential writer only overlaps with the sealing of what it wrote when the
block it completed goes to a worker while the loop takes the next request.
The store layer hands each block over through ``StateStore.submit`` and
records it, back on the loop, in ``finish_block``.
"""
from __future__ import annotations

import errno
import logging

import trio

from ..store.statestore import StateStore

log = logging.getLogger("smpfs.mount.writeback")


class Writeback:
    """Seals and writes full blocks in worker threads while the loop takes the
    next request (the kernel serialises writes to one file, so this is where a
    sequential writer's pipelining comes from). At most ``max_inflight`` blocks
    wait; a writer past that waits for room."""

    def __init__(self, threads: int = 2, max_inflight: int = 8):
        self.limiter = trio.CapacityLimiter(threads)
        self.lot = trio.lowlevel.ParkingLot()
        self.max_inflight = max_inflight
        self.count = 0
        self._nursery = None           # while run() runs; None = blocks are sealed inline

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Take blocks to seal until :meth:`stop` or cancellation; start it
        with ``nursery.start(wb.run)``. Stores opened before it runs, or after
        it stopped, seal their blocks inline."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def stop(self) -> None:
        """Attach no more stores (those attached must be detached: ``st.submit = None``)."""
        self._nursery = None

    def attach(self, st: StateStore) -> None:
        if self._nursery is not None:
            st.submit = lambda job: self._submit(st, job)

    def _submit(self, st: StateStore, job) -> None:
        self.count += 1
        self._nursery.start_soon(self._run, st, job)

    async def _run(self, st: StateStore, job) -> None:
        err = None
        try:
            await trio.to_thread.run_sync(job.run, limiter=self.limiter)
        except OSError as e:
            err = e
        except trio.Cancelled:
            err = OSError(errno.EIO, "write-back cancelled")
            raise
        except Exception as e:              # a bug must not take the mount down
            log.exception("sealing a block failed")
            err = OSError(errno.EIO, str(e))
        finally:
            self.count -= 1
            try:
                st.finish_block(job, err)
            except Exception:
                log.exception("recording a written block failed")
            self.lot.unpark_all()

    async def wait_room(self) -> None:
        while self.count > self.max_inflight:
            await self.lot.park()

    async def drain(self, st: StateStore, ino: int | None = None) -> None:
        while st.inflight(ino):
            await self.lot.park()
