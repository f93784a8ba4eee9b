"""The page-cache pusher never hands the kernel data of a file that changed,
or of a store that changed state, after it was read (smpfs/mount/pagecache.py).

The kernel call is replaced by a recorder that can be held mid-push, so the
orderings that matter are forced rather than hoped for.
"""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("pyfuse3")
trio = pytest.importorskip("trio")

from smpfs.mount.pagecache import PageCachePush  # noqa: E402


class Kernel:
    """Records pushes; a push of ``hold_ino`` waits until released."""

    def __init__(self, hold_ino=None):
        self.pushed: list[tuple[int, int]] = []
        self.hold_ino = hold_ino
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, ino, off, data):
        if ino == self.hold_ino:
            self.entered.set()
            assert self.release.wait(10)
        self.pushed.append((ino, off))


def _settle(p: PageCachePush, timeout=5.0):
    deadline = time.monotonic() + timeout
    while (p._queue or p._busy_ino) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_push_queued_before_a_change_is_dropped():
    k = Kernel(hold_ino=1)
    p = PageCachePush(k)
    try:
        p.offer(1, 7, [(0, b"a")])
        assert k.entered.wait(5)                    # the worker is stuck in ino 1's push
        p.offer(2, 7, [(4096, b"old")])             # queued behind it
        trio.run(p.changing, 2)                     # ino 2 opened for writing
        k.release.set()
        _settle(p)
        assert k.pushed == [(1, 0)]
        p.offer(2, 7, [(8192, b"x")])               # still open for writing: nothing pushed
        p.changed(2)
        p.offer(2, 7, [(12288, b"new")])            # closed: pushes resume
        _settle(p)
        assert k.pushed == [(1, 0), (2, 12288)]
    finally:
        k.release.set()
        p.stop()


def test_a_change_waits_for_the_push_running():
    k = Kernel(hold_ino=1)
    p = PageCachePush(k)
    try:
        p.offer(1, 7, [(0, b"a")])
        assert k.entered.wait(5)
        done = []

        async def change():
            async with trio.open_nursery() as n:
                n.start_soon(p.changing, 1)
                await trio.sleep(0.2)
                done.append(bool(p._busy_ino))          # still waiting while the push runs
                k.release.set()
            done.append(not p._busy_ino)
        trio.run(change)
        assert done == [True, True]
    finally:
        k.release.set()
        p.stop()


def test_no_push_of_a_store_after_it_changed_state_and_quiesce_waits():
    k = Kernel(hold_ino=1)
    p = PageCachePush(k)
    try:
        p.offer(1, 7, [(0, b"a")])
        assert k.entered.wait(5)
        p.offer(3, 7, [(0, b"of the released store")])
        p.offer(4, 8, [(0, b"another store")])
        p.store_changed(7)
        t0 = time.monotonic()
        threading.Timer(0.3, k.release.set).start()
        p.quiesce(7)                                # returns only once ino 1's push is over
        assert time.monotonic() - t0 >= 0.25 and (1, 0) in k.pushed
        _settle(p)
        assert sorted(k.pushed) == [(1, 0), (4, 0)]
    finally:
        k.release.set()
        p.stop()


def test_bookkeeping_is_bounded():
    k = Kernel()
    p = PageCachePush(k)
    try:
        for ino in range(1000):
            p.offer(ino, 1, [(0, b"x")])
        _settle(p)
        trio.run(p.changing, 5)
        p.changed(5)
        assert not (p._pending or p._ino_gen or p._frozen or p._busy_ino)
        assert len(k.pushed) + p.dropped == 1000
    finally:
        p.stop()
