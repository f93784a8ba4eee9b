"""Power cuts: lose everything that was not made durable, reopen, check.

The store's file I/O goes through ``smpfs.store.diskio.io``; here that is a
:class:`diskmodel.PowerCutDisk`, which lets every call reach the real files
and keeps, beside them, what a machine would find after losing power. Every
call that changes or syncs a file is a cut point. For each cut point the
durable image is written into a fresh directory, the store is opened there,
``fsck`` runs on it, and the result must be **exactly the state the workload
had at some moment between its last acknowledged durable point (an
``fsync``/``fsyncdir``/``sync`` that returned) and the cut**: every
acknowledged byte is there, nothing is half-applied, fsck finds nothing but
orphans to clean, and no nonce can be reused.

The model (what is durable after a power cut), and its assumptions:

* A regular file's content is durable as of its last ``fsync``/``fdatasync``
  (or a ``syncfs``); a file whose name is durable but whose data never was
  is found empty (what delayed allocation leaves).
* A directory's entries (creates, renames, unlinks in it) are durable as of
  its last fsync or a ``syncfs``; fsync of a file does not make its name
  durable. A directory listing is taken whole (a rename between two
  directories is never half-done within one directory).
* ``syncfs`` makes everything under the simulated root durable.
* sqlite files are not written through diskio. store.db runs
  ``journal_mode=WAL, synchronous=NORMAL``: a commit is not durable by
  itself; the store's explicit ``fsync`` of the WAL (or a ``syncfs``) makes
  every commit so far durable. So the database is durable as of its
  committed state at that fsync (taken with sqlite's backup API). sqlite's
  own checkpoints also sync, which this ignores: the model may lose more
  than a real disk, never less. smp.db runs ``synchronous=FULL`` (the
  lifecycle test asserts it): every commit is durable when it returns.
* "Mixed" images (a sample of cut points) add what a real disk may also do:
  each directory listing and each file content is, at random, either
  durable or as it is now (written back early). sqlite stays as durable: a
  WAL written back early would also be a valid state, but then unsynced
  block-map rows may name block files whose data is not on disk yet; the
  store does not promise anything for data never fsynced beyond fsck's
  report, so that case is not asserted here.

The workloads are seeded (``seed`` fixture; ``SMPFS_SEED`` replays one).
"""
from __future__ import annotations

import os
import random
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from diskmodel import PowerCutDisk

from smpfs.crypto import keys as key
from smpfs.crypto.chunk import BLOCK_SIZE
from smpfs.store import diskio, fsck, layout
from smpfs.store.counter import read_counter_file
from smpfs.store.layout import ROOT
from smpfs.store.statestore import StateStore

CUT_MIN = 800             # cut points one store workload must reach (asserted)
SIZES = (0, 100, 5000, 16 << 10, 16 << 10 | 1, 20_000, 20_000, 40_000, 70_000, 130_000)
BIG = (BLOCK_SIZE - 1, BLOCK_SIZE + 3000, 2 * BLOCK_SIZE + 12345)     # a few, now and then


# -- reading a store back as a plain value -------------------------------------------------

def store_state(st: StateStore) -> dict:
    """{path: ("d", xattrs) | ("f", content, xattrs)} of everything under the root."""
    out: dict = {}

    def walk(dino: int, prefix: bytes) -> None:
        for _c, name, a in st.readdir(dino):
            p = prefix + name
            xa = frozenset((n, st.getxattr(a.ino, n)) for n in st.listxattr(a.ino))
            if stat.S_ISDIR(a.mode):
                out[p] = ("d", xa)
                walk(a.ino, p + b"/")
            else:
                out[p] = ("f", st.read(a.ino, 0, a.size) if a.size else b"", xa, None)
    walk(ROOT, b"")
    return out


class Cuts:
    """Records, at every cut point, which durable image it leaves and which
    workload states it may show; checks each distinct image once."""

    def __init__(self, disk: PowerCutDisk, model, rng, mixed_every: int):
        self.disk, self.model, self.rng, self.mixed_every = disk, model, rng, mixed_every
        self.images: dict[int, object] = {}
        self.cuts: list[tuple[int, int, int]] = []       # (image id, acked, current)
        self.mixed: list[tuple[object, int, int]] = []
        disk.on_event = self.cut

    def cut(self, _what: str = "end") -> None:
        v = self.disk.poll()
        if v not in self.images:
            self.images[v] = self.disk.freeze()
        self.cuts.append((v, self.model.acked, len(self.model.states) - 1))
        if len(self.cuts) % self.mixed_every == 0:            # every so many cut points, a mixed image too
            self.mixed.append((self.disk.mixed(self.rng), self.model.acked, len(self.model.states) - 1))

    def verify(self, tmp: Path, check) -> dict:
        """``check(image, lo, hi, where)`` for each distinct image (lo..hi: the
        states some cut point with that image allows; every cut point's own
        range is then checked against the matching states)."""
        by_image: dict[int, list[tuple[int, int]]] = {}
        for v, a, c in self.cuts:
            by_image.setdefault(v, []).append((a, c))
        n = 0
        for v, ranges in by_image.items():
            lo, hi = min(a for a, _ in ranges), max(c for _, c in ranges)
            n += 1
            matches = check(self.images[v], lo, hi, tmp / f"img{n}")
            for a, c in ranges:
                assert any(a <= j <= c for j in matches), \
                    f"after a cut the store shows none of the states {a}..{c} (it matches {sorted(matches)[:10]})"
        for img, a, c in self.mixed:
            n += 1
            matches = check(img, a, c, tmp / f"img{n}")
            assert matches, f"after a cut (mixed image) the store shows none of the states {a}..{c}"
        return {"cuts": len(self.cuts), "images": len(by_image), "mixed": len(self.mixed)}


# -- the store-level workload ------------------------------------------------------------

class Model:
    """What the workload did: states[i] after its i-th step; ``acked``: the
    step of the last durable point that returned."""

    def __init__(self):
        self.now: dict = {}
        self.states = [dict(self.now)]
        self.acked = 0
        self.history: dict[int, list] = {}     # file id -> [(state index, content)]

    def put(self, path: bytes, data: bytes, xa, synced: bool, fid: int) -> None:
        """A file's new value: ("f", content, xattrs, data durable?, file id)."""
        self.now[path] = ("f", data, xa, synced, fid)
        self.history.setdefault(fid, []).append((len(self.states), data))

    def step(self) -> None:
        self.states.append(dict(self.now))

    def ack(self) -> None:
        self.acked = len(self.states) - 1

    def mark_all_synced(self) -> None:
        self.now = {p: v[:3] + (True, v[4]) if v[0] == "f" else v for p, v in self.now.items()}

    def matches(self, j: int, got: dict) -> bool:
        """Is ``got`` (a recovered store) state j? A file whose data was not made
        durable since it last changed (no fsync of it, no durable point) may
        show, block by block, any version it had, cut short and zero-filled to
        its size (its size was committed by another file's fsync, its newest
        blocks were not: they were still in memory)."""
        want = self.states[j]
        if want.keys() != got.keys():
            return False
        for p, w in want.items():
            g = got[p]
            if w[0] != g[0] or w[0] == "d" and w != g:
                return False
            if w[0] == "d" or w[1:3] == g[1:3]:
                continue
            if w[2] != g[2] or w[3] or len(w[1]) != len(g[1]):
                return False
            versions = {d for k, d in self.history[w[4]] if k <= j}
            for off in range(0, len(g[1]), BLOCK_SIZE):
                blk = g[1][off:off + BLOCK_SIZE].rstrip(b"\0")     # an older, shorter version, zero-extended
                if blk and not any(v[off:off + BLOCK_SIZE].startswith(blk) for v in versions):
                    return False
        return True


class StoreWorkload:
    def __init__(self, st: StateStore, rng: random.Random, model: Model):
        self.st, self.rng, self.m = st, rng, model
        self.inos: dict[bytes, int] = {b"": ROOT}
        self.n = 0

    def _files(self):
        return [p for p, v in self.m.now.items() if v[0] == "f"]

    def _dirs(self):
        return [b""] + [p for p, v in self.m.now.items() if v[0] == "d"]

    def _newname(self) -> bytes:
        self.n += 1
        d = self.rng.choice(self._dirs())
        return (d + b"/" if d else b"") + b"f%d" % self.n

    def _parent(self, p: bytes) -> tuple[int, bytes]:
        d, _, name = p.rpartition(b"/")
        return self.inos[d], name

    def op(self) -> None:
        r, st, m = self.rng.random(), self.st, self.m
        files = self._files()
        if r < 0.22 or not files:                                 # new file with content
            p = self._newname()
            parent, name = self._parent(p)
            ino = st.mknode(parent, name, stat.S_IFREG | 0o644, 1000, 1000).ino
            data = self.rng.randbytes(self.rng.choice(BIG if self.rng.random() < 0.04 else SIZES))
            st.write(ino, 0, data)
            self.inos[p] = ino
            m.put(p, data, frozenset(), False, fid=self.n)
        elif r < 0.40:                                            # overwrite or extend a range
            p = self.rng.choice(files)
            _, data, xa, _s, fid = m.now[p]
            off = self.rng.randrange(0, len(data) + 1)
            new = self.rng.randbytes(self.rng.choice((1, 4000, 30_000, 70_000)))
            st.write(self.inos[p], off, new)
            data = data[:off] + new + data[off + len(new):]
            m.put(p, data, xa, False, fid)
        elif r < 0.46:                                            # truncate
            p = self.rng.choice(files)
            _, data, xa, _s, fid = m.now[p]
            size = self.rng.randrange(0, len(data) + 30_000)
            st.setattr(self.inos[p], size=size)
            m.put(p, data[:size] + bytes(max(0, size - len(data))), xa, False, fid)
        elif r < 0.54:                                            # rename, maybe over another file
            p = self.rng.choice(files)
            q = self.rng.choice(files) if self.rng.random() < 0.4 else self._newname()
            if q == p:
                return
            p1, n1 = self._parent(p)
            p2, n2 = self._parent(q)
            gone = st.rename(p1, n1, p2, n2)
            if gone is not None:
                st.free_if_unlinked(gone.ino)
            m.now[q] = m.now.pop(p)
            self.inos[q] = self.inos.pop(p)
        elif r < 0.60:                                            # unlink
            p = self.rng.choice(files)
            parent, name = self._parent(p)
            a = st.unlink(parent, name)
            st.free_if_unlinked(a.ino)
            del m.now[p], self.inos[p]
        elif r < 0.64:                                            # mkdir
            self.n += 1
            d = self.rng.choice(self._dirs())
            p = (d + b"/" if d else b"") + b"d%d" % self.n
            parent, name = self._parent(p)
            self.inos[p] = st.mknode(parent, name, stat.S_IFDIR | 0o755, 1000, 1000).ino
            m.now[p] = ("d", frozenset())
        elif r < 0.72:                                            # xattr set / remove
            p = self.rng.choice(files)
            kind, data, xa, synced, fid = m.now[p]
            x = dict(xa)
            name = b"user.k%d" % self.rng.randrange(3)
            if name in x and self.rng.random() < 0.4:
                st.removexattr(self.inos[p], name)
                del x[name]
            else:
                x[name] = self.rng.randbytes(self.rng.choice((0, 10, 3000)))
                st.setxattr(self.inos[p], name, x[name])
            m.put(p, data, frozenset(x.items()), synced, fid)
        elif r < 0.92:                                            # fsync one file
            p = self.rng.choice(files)
            m.step()
            st.fsync(self.inos[p])
            m.ack()
            m.now[p] = m.now[p][:3] + (True, m.now[p][4])
            m.step()
            return
        else:                                                     # a durable point of everything
            m.step()
            st.sync()
            m.ack()
            m.mark_all_synced()
            m.step()
            return
        m.step()


def describe_diff(want: dict, got: dict) -> str:
    out = []
    for p in sorted(set(want) | set(got)):
        w, g = want.get(p), got.get(p)
        if w == g or w and g and w[:3] == g[:3]:
            continue
        if w is None or g is None:
            out.append(f"{p!r}: {'missing' if g is None else 'unexpected'}")
        elif w[0] != g[0]:
            out.append(f"{p!r}: kind {w[0]} vs {g[0]}")
        elif w[0] == "f" and w[1] != g[1]:
            n = min(len(w[1]), len(g[1]))
            first = next((i for i in range(n) if w[1][i] != g[1][i]), n)
            out.append(f"{p!r}: {len(g[1])} bytes, want {len(w[1])}, first difference at {first}")
        else:
            out.append(f"{p!r}: xattrs differ")
    return "; ".join(out[:8]) or "equal"


def open_recovered(dest: Path, sid: str, keys) -> tuple[StateStore, dict]:
    st = StateStore(dest / sid, keys)
    found = fsck.check_store(st, repair=True)
    bad = {k: v for k, v in found.items() if v and k not in ("orphan_blocks", "orphan_inodes")}
    assert not bad, f"fsck after a power cut found damage: {bad}"
    # a counter in use must be under the recorded high-water mark (no nonce reuse after it)
    top = st.db.execute("SELECT max(counter) FROM blocks").fetchone()[0] or 0
    assert top <= max(read_counter_file(dest / sid), int(st._meta("counter_hwm"))), \
        "a block's counter is above every record of the high-water mark: a nonce could be reused"
    return st, found


@pytest.fixture
def simulated(tmp_path):
    """A scratch directory (in memory when possible: nothing here needs a real
    disk's durability); the real disk I/O is put back however the test ends."""
    saved = diskio.io
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else tmp_path
    work = Path(tempfile.mkdtemp(prefix="smpfs-powercut-", dir=base))
    try:
        yield work
    finally:
        diskio.set_io(saved)
        shutil.rmtree(work, ignore_errors=True)


def run_store_workload(tmp: Path, seed: int, nops: int, mixed_every: int) -> dict:
    folder = tmp / "folder"
    folder.mkdir()
    sid = os.urandom(32).hex()
    keys = key.StoreKeys.from_data_key(sid, key.new_data_key())
    layout.create_store(folder, sid, keys, owner_uid=1000)
    st = StateStore(folder / sid, keys)
    st.sync()
    disk = PowerCutDisk(folder)
    model = Model()
    rng = random.Random(seed)
    cuts = Cuts(disk, model, random.Random(seed + 1), mixed_every)
    diskio.set_io(disk)
    try:
        w = StoreWorkload(st, rng, model)
        for _ in range(nops):
            w.op()
        cuts.cut()
    finally:
        diskio.set_io(diskio.DiskIO())
        disk.close_all()
    st.abandon()

    def check(image, lo, hi, dest):
        image.materialize(dest)
        rst, _found = open_recovered(dest, sid, keys)
        try:
            got = store_state(rst)
        finally:
            rst.close()
        shutil.rmtree(dest)
        hit = {j for j in range(lo, hi + 1) if model.matches(j, got)}
        if not hit:
            print("recovered vs state", hi, ":", describe_diff(model.states[hi], got))
            print("recovered vs state", lo, ":", describe_diff(model.states[lo], got))
        return hit

    return cuts.verify(tmp, check)


def test_power_cut_store_keeps_every_fsynced_byte_and_nothing_half_done(simulated, seed):
    out = run_store_workload(simulated, seed, nops=800, mixed_every=40)
    print(out)
    assert out["cuts"] >= CUT_MIN, f"only {out['cuts']} cut points: the workload no longer exercises the disk"
    assert out["images"] >= 50 and out["mixed"] >= CUT_MIN // 40, out


# -- the same through the FUSE layer's handlers ---------------------------------------------

class Ctx:
    """What the kernel tells a handler about its caller."""
    def __init__(self, uid: int, gid: int):
        self.uid, self.gid, self.pid, self.umask = uid, gid, os.getpid(), 0o022


class OpsWorkload:
    """The FUSE handlers (smpfs.mount.operations) driven directly, as the kernel
    would: create/write/flush/release, fsync, fsyncdir, rename, unlink, mkdir,
    setxattr. Acknowledged: what an fsync or fsyncdir that returned made durable."""

    def __init__(self, ops, rowid: int, rng: random.Random, model: Model):
        from smpfs.mount.inodes import join
        self.ops, self.rng, self.m = ops, rng, model
        self.root = join(rowid, ROOT)
        self.inos: dict[bytes, int] = {b"": self.root}
        self.ctx = Ctx(1000, 1000)
        self.n = 0

    def _files(self):
        return [p for p, v in self.m.now.items() if v[0] == "f"]

    def _dirs(self):
        return [b""] + [p for p, v in self.m.now.items() if v[0] == "d"]

    def _parent(self, p: bytes) -> tuple[int, bytes]:
        d, _, name = p.rpartition(b"/")
        return self.inos[d], name

    def _newname(self, prefix: bytes = b"f") -> bytes:
        self.n += 1
        d = self.rng.choice(self._dirs())
        return (d + b"/" if d else b"") + prefix + b"%d" % self.n

    async def _open(self, p: bytes):
        import pyfuse3
        if p in self.inos:
            return (await self.ops.open(self.inos[p], os.O_WRONLY, self.ctx)).fh
        parent, name = self._parent(p)
        fi, entry = await self.ops.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT, self.ctx)
        self.inos[p] = entry.st_ino
        await self.ops.forget([(entry.st_ino, 1)])
        assert isinstance(fi, pyfuse3.FileInfo)
        return fi.fh

    async def _close(self, fh: int) -> None:
        await self.ops.flush(fh)
        await self.ops.release(fh)

    async def op(self) -> None:
        r, ops, m, ctx = self.rng.random(), self.ops, self.m, self.ctx
        files = self._files()
        if r < 0.45 or not files:                             # write a new or an existing file
            new = r < 0.25 or not files
            p = self._newname() if new else self.rng.choice(files)
            fid = self.n if new else m.now[p][4]
            data, xa = (b"", frozenset()) if new else m.now[p][1:3]
            fh = await self._open(p)
            off = 0 if new else self.rng.randrange(0, len(data) + 1)
            buf = self.rng.randbytes(self.rng.choice(BIG if self.rng.random() < 0.03 else SIZES))
            for i in range(0, len(buf), 128 << 10):                    # the kernel's write size
                await ops.write(fh, off + i, buf[i:i + (128 << 10)])
            data = data[:off] + buf + data[off + len(buf):]
            m.put(p, data, xa, False, fid)
            if self.rng.random() < 0.5:
                m.step()
                await ops.fsync(fh, self.rng.random() < 0.3)
                m.ack()
                m.now[p] = m.now[p][:3] + (True, fid)
            await self._close(fh)
        elif r < 0.60:                                        # rename, maybe over another file
            p = self.rng.choice(files)
            q = self.rng.choice(files) if self.rng.random() < 0.4 else self._newname()
            if q == p:
                return
            (p1, n1), (p2, n2) = self._parent(p), self._parent(q)
            await ops.rename(p1, n1, p2, n2, 0, ctx)
            m.now[q] = m.now.pop(p)
            self.inos[q] = self.inos.pop(p)
        elif r < 0.68:                                        # unlink
            p = self.rng.choice(files)
            await ops.unlink(*self._parent(p), ctx)
            del m.now[p], self.inos[p]
        elif r < 0.74:                                        # mkdir
            p = self._newname(b"d")
            entry = await ops.mkdir(*self._parent(p), 0o755, ctx)
            await ops.forget([(entry.st_ino, 1)])
            self.inos[p] = entry.st_ino
            m.now[p] = ("d", frozenset())
        elif r < 0.82:                                        # xattr
            p = self.rng.choice(files)
            kind, data, xa, synced, fid = m.now[p]
            x = dict(xa)
            name = b"user.k%d" % self.rng.randrange(3)
            x[name] = self.rng.randbytes(self.rng.choice((0, 10, 3000)))
            await ops.setxattr(self.inos[p], name, x[name], ctx)
            m.put(p, data, frozenset(x.items()), synced, fid)
        else:                                                 # fsyncdir: names made durable
            d = self.rng.choice(self._dirs())
            fh = await ops.opendir(self.inos[d], ctx)
            m.step()
            await ops.fsyncdir(fh, False)
            m.ack()
            await ops.releasedir(fh)
        m.step()


async def test_power_cut_through_fuse_handlers_fsync_and_fsyncdir(simulated, seed):
    pytest.importorskip("pyfuse3", reason="drives the FUSE handlers: the unprivileged unit venv has no pyfuse3")
    from smpfs.mount.catalog import Catalog, ShareRec, StoreRec
    from smpfs.mount.operations import SmpOperations
    folder = simulated / "folder"
    folder.mkdir()
    sid = os.urandom(32).hex()
    keys = key.StoreKeys.from_data_key(sid, key.new_data_key())
    layout.create_store(folder, sid, keys, owner_uid=1000)
    cat = Catalog()
    cat.shares[1] = ShareRec(1, "POWERCUT", str(folder), lambda: 0)
    cat.stores[1] = StoreRec(1, sid, 1, "capturing", 1000, 1001)
    ops = SmpOperations(cat, lambda rec: StateStore(folder / rec.store_id, keys))
    model = Model()
    rng = random.Random(seed)
    w = OpsWorkload(ops, 1, rng, model)
    await ops.getattr(w.root, w.ctx)                  # opens the store
    ops.stores.open[1].sync()
    disk = PowerCutDisk(folder)
    cuts = Cuts(disk, model, random.Random(seed + 1), 40)
    diskio.set_io(disk)
    try:
        for _ in range(500):
            await w.op()
        cuts.cut()
    finally:
        diskio.set_io(diskio.DiskIO())
        disk.close_all()
    ops.stores.close(1, abandon=True)

    def check(image, lo, hi, dest):
        image.materialize(dest)
        rst, _found = open_recovered(dest, sid, keys)
        try:
            got = store_state(rst)
        finally:
            rst.close()
        shutil.rmtree(dest)
        return {j for j in range(lo, hi + 1) if model.matches(j, got)}

    out = cuts.verify(simulated, check)
    print(out)
    assert out["cuts"] >= 600 and out["images"] >= 50, out


# -- lifecycle steps: release, retention deletion ---------------------------------------------

ORDER = ("capturing", "captured", "restoring", "restored", "deleting", "deleted")


def test_power_cut_during_capture_release_and_retention_deletion(simulated, seed):
    """A capture written and fsynced, released (the daemon makes the store
    durable and read-only), restored, released with 'delete immediately'.
    After any cut: the store's status is at or after the last step that
    returned; a store not yet deleting opens with every captured byte; a
    deleting one has no key left and the sweep finishes it; a deleted one
    left nothing behind."""
    from smpfs.lifecycle import api, retention
    from smpfs.lifecycle.smp import Smp

    smp = Smp.init(simulated / "state", server="SMP01")
    api.dispatch(smp, 0, "computer_add", {"name": "PC-OLD", "uid": 1001})
    api.dispatch(smp, 0, "computer_add", {"name": "PC-NEW", "uid": 1002})
    api.dispatch(smp, 0, "associate", {"source": "PC-OLD", "dest": "PC-NEW"})
    api.dispatch(smp, 0, "config", {"delete_after": 0})
    sid = api.dispatch(smp, 1001, "request_capture", {})["store_id"]
    row = smp.store(sid)
    folder = Path(smp.folder(row["folder_id"])["path"])
    keys = key.StoreKeys.from_data_key(sid, smp.data_key(row))

    def on_reserve(limit: int) -> None:          # as the daemon records nonce reservations
        with smp.tx():
            smp.conn.execute("UPDATE stores SET nonce_hwm=max(nonce_hwm, ?) WHERE store_id=?", (limit, sid))
    st = StateStore(folder / sid, keys, on_reserve=on_reserve)
    st.sync()
    assert smp.conn.execute("PRAGMA synchronous").fetchone()[0] == 2, \
        "smp.db is no longer synchronous=FULL: this test's model of it (every commit durable) is wrong"
    disk = PowerCutDisk(simulated, full_sync_dbs=[simulated / "state" / "smp.db"])
    model = Model()
    cuts = Cuts(disk, model, random.Random(seed + 1), 40)
    steps = {"acked": 0, "now": 0}
    cut_meta: list[tuple[int, int]] = []          # per cut point: (lifecycle step returned, step under way)
    record = cuts.cut

    def cut(what: str = "end") -> None:
        record(what)
        cut_meta.append((steps["acked"], steps["now"]))
    disk.on_event = cut
    # smp.db's commits are cut points too (just before each)
    smp.conn.set_trace_callback(lambda sql: cut("smp") if sql.lstrip().upper().startswith("COMMIT") else None)

    def step(fn) -> None:
        steps["now"] += 1
        fn()
        steps["acked"] = steps["now"]

    diskio.set_io(disk)
    try:
        w = StoreWorkload(st, random.Random(seed), model)
        for _ in range(150):
            w.op()
        model.step()
        st.sync()                                     # the computer's last fsync before it releases
        model.ack()
        model.mark_all_synced()
        model.step()

        def release_capture():
            api.dispatch(smp, 1001, "release_capture", {})
            st.sync()                                 # what the daemon does when a capture is released
            st.read_only = True
        step(release_capture)
        step(lambda: api.dispatch(smp, 1002, "request_restore", {}))
        st.close()
        step(lambda: api.dispatch(smp, 1002, "release_restore", {}))
        cut()
    finally:
        smp.conn.set_trace_callback(None)
        diskio.set_io(diskio.DiskIO())
        disk.close_all()
    assert smp.store(sid)["status"] == "deleted"
    smp.close()
    final = len(model.states) - 1
    # which lifecycle step each status belongs to (the release of the restore is step 3)
    step_of = {"capturing": 0, "captured": 1, "restoring": 2, "restored": 3, "deleting": 3, "deleted": 3}

    def check(image, cut_no: int, dest: Path) -> str:
        image.materialize(dest)
        rsmp = Smp.open(dest / "state")
        try:
            with rsmp.tx():
                rsmp.conn.execute("UPDATE folders SET path=replace(path, ?, ?)", (str(simulated), str(dest)))
            r = rsmp.store(sid)
            acked_step, now_step = cut_meta[cut_no]
            assert acked_step <= step_of[r["status"]] <= now_step, \
                f"after a cut the store is {r['status']}, but step {acked_step} had returned"
            rfolder = dest / folder.relative_to(simulated)
            live, dying = rfolder / sid, rfolder / f".deleting-{sid}"
            if ORDER.index(r["status"]) >= ORDER.index("deleting"):
                assert r["wrapped_key"] is None, "a store being deleted still has its key"
                if r["status"] == "deleted":
                    assert not live.exists() and not dying.exists(), "a deleted store left files behind"
                retention.sweep(rsmp)
                assert rsmp.store(sid)["status"] == "deleted"
                assert not live.exists() and not dying.exists()
                return r["status"]
            assert live.is_dir(), f"a {r['status']} store lost its directory"
            rkeys = key.StoreKeys.from_data_key(sid, rsmp.data_key(r))
            rst, _found = open_recovered(rfolder, sid, rkeys)
            try:
                got = store_state(rst)
            finally:
                rst.close()
            a, c = cuts.cuts[cut_no][1], cuts.cuts[cut_no][2]
            if r["status"] != "capturing":
                a = c = final                          # released: everything captured is there
            assert any(model.matches(j, got) for j in range(a, c + 1)), \
                f"after a cut the {r['status']} store shows none of the states {a}..{c}"
            return r["status"]
        finally:
            rsmp.close()
            shutil.rmtree(dest)

    seen: dict[tuple, int] = {}
    statuses = set()
    for i, (v, a, c) in enumerate(cuts.cuts):
        k = (v, a, c, cut_meta[i])
        if k in seen:
            continue
        seen[k] = i
        statuses.add(check(cuts.images[v], i, simulated / f"img{i}"))
    print({"cuts": len(cuts.cuts), "checked": len(seen), "statuses": sorted(statuses)})
    assert len(cuts.cuts) >= 300, len(cuts.cuts)
    assert statuses == set(ORDER), f"cut points reached only {sorted(statuses)}"
