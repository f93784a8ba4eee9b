"""Each defence layer on its own, so removing one layer fails a test even
when the other would still have caught the misuse:

* the store refuses every change once read-only (the daemon makes it so at
  release), whatever the FUSE layer let through (test_store.py);
* the FUSE handlers re-check a handle opened before the release on every
  write, whatever the store layer says;
* a block a write-back worker failed to write is reported at the next write,
  at close and at fsync, and its data is kept in memory (nothing lost).

The FUSE handlers run in-process (no kernel, no mount), as in test_power_cut.py.
"""
from __future__ import annotations

import errno
import os

import pytest
import trio

from smpfs.crypto import keys as key
from smpfs.crypto.chunk import BLOCK_SIZE
from smpfs.store import diskio, layout
from smpfs.store.layout import ROOT
from smpfs.store.statestore import StateStore

pyfuse3 = pytest.importorskip("pyfuse3", reason="the FUSE handlers need pyfuse3 (root's .venv has it)")
from smpfs.mount.catalog import Catalog, ShareRec, StoreRec  # noqa: E402
from smpfs.mount.inodes import join  # noqa: E402
from smpfs.mount.operations import SmpOperations  # noqa: E402

SOURCE, DEST = 1001, 1002


class Ctx:
    def __init__(self, uid: int):
        self.uid, self.gid, self.pid, self.umask = uid, uid, os.getpid(), 0o022


@pytest.fixture
def store(tmp_path):
    sid = os.urandom(32).hex()
    keys = key.StoreKeys.from_data_key(sid, key.new_data_key())
    layout.create_store(tmp_path, sid, keys, owner_uid=SOURCE)
    return tmp_path, sid, keys


def handlers(store, status: str = "capturing"):
    folder, sid, keys = store
    cat = Catalog()
    cat.shares[1] = ShareRec(1, "LAYERS01", str(folder), lambda: 0)
    cat.stores[1] = StoreRec(1, sid, 1, status, SOURCE, DEST)
    return cat, SmpOperations(cat, lambda rec: StateStore(folder / rec.store_id, keys))


async def test_write_handle_opened_before_release_is_refused_by_the_fuse_layer(store):
    cat, ops = handlers(store)
    ctx = Ctx(SOURCE)
    fi, entry = await ops.create(join(1, ROOT), b"f", 0o644, os.O_WRONLY | os.O_CREAT, ctx)
    assert await ops.write(fi.fh, 0, b"before") == 6
    # released: the catalog says so; the store object itself is left writable,
    # so only the FUSE layer's re-check stands between this handle and the store
    cat.stores[1] = StoreRec(1, cat.stores[1].store_id, 1, "captured", SOURCE, DEST)
    assert ops.stores.open[1].read_only is False
    for attempt in (lambda: ops.write(fi.fh, 0, b"after"), lambda: ops.write(fi.fh, 6, b"more")):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await attempt()
        assert e.value.errno == errno.EROFS
    await ops.release(fi.fh)
    rfi = await ops.open(entry.st_ino, os.O_RDONLY, Ctx(DEST))
    assert await ops.read(rfi.fh, 0, 100) == b"before"
    ops.stores.close(1)


class FailingWrites(diskio.DiskIO):
    """Every write of a block file fails, as on a disk that went bad."""
    def write(self, fd, data):
        if "/b/" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "simulated write error")
        return os.write(fd, data)


async def test_write_back_failure_is_reported_and_the_data_kept(store):
    cat, ops = handlers(store)
    ctx = Ctx(SOURCE)
    data = os.urandom(BLOCK_SIZE)
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.wb.run)              # full blocks go to worker threads
        fi, entry = await ops.create(join(1, ROOT), b"f", 0o644, os.O_WRONLY | os.O_CREAT, ctx)
        st = ops.stores.open[1]
        assert st.submit is not None
        saved = diskio.set_io(FailingWrites())
        try:
            await ops.write(fi.fh, 0, data)          # block 0 is full: a worker writes it, and fails
            await ops.wb.drain(st)
            # the next write says so (and keeps saying so until close or fsync)
            for _ in range(2):
                with pytest.raises(pyfuse3.FUSEError) as e:
                    await ops.write(fi.fh, BLOCK_SIZE, b"tail")
                assert e.value.errno == errno.EIO
        finally:
            diskio.set_io(saved)
        # fsync reports it once (the kept block is written again, now successfully)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.fsync(fi.fh, False)
        assert e.value.errno == errno.EIO
        await ops.fsync(fi.fh, False)
        await ops.write(fi.fh, BLOCK_SIZE, b"tail")
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        # nothing written was lost
        rfi = await ops.open(entry.st_ino, os.O_RDONLY, ctx)
        got = await ops.read(rfi.fh, 0, BLOCK_SIZE + 10)
        assert bytes(got) == data + b"tail"
        await ops.release(rfi.fh)
        ops.stores.open[1].submit = None
        nursery.cancel_scope.cancel()
    ops.stores.close(1)


async def test_write_back_failure_is_reported_at_close(store):
    cat, ops = handlers(store)
    ctx = Ctx(SOURCE)
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.wb.run)
        fi, _entry = await ops.create(join(1, ROOT), b"f", 0o644, os.O_WRONLY | os.O_CREAT, ctx)
        saved = diskio.set_io(FailingWrites())
        try:
            await ops.write(fi.fh, 0, os.urandom(BLOCK_SIZE))
            with pytest.raises(pyfuse3.FUSEError) as e:
                await ops.flush(fi.fh)                   # close(2) returns the error
            assert e.value.errno == errno.EIO
        finally:
            diskio.set_io(saved)
        await ops.release(fi.fh)
        ops.stores.open[1].submit = None
        nursery.cancel_scope.cancel()
    ops.stores.close(1)
