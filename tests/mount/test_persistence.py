"""What was written survives an unmount, and a SIGKILL of the daemon.

* a clean unmount/remount keeps every file, name, mode, time, link and xattr;
* SIGKILL of the daemon in the middle of a write loop, then a remount: every
  file whose fsync returned is intact, no file reads garbage or fails, and a
  block rewritten in place is either its old or its new version;
* the dirty-shutdown flag makes the next mount run the consistency check
  (and only then); ``smpfs fsck`` runs it by hand.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from test_tools import assert_same_tree, make_tree, snapshot

from smpfs.testing import spawn_as

MiB = 1 << 20
BLOCK = 1 << 20


def _store_dir(smp, store) -> Path:
    """The store's encrypted files in the default storage folder."""
    return smp.state / "store" / Path(store).name


def _block_files(smp, store) -> set[str]:
    b = _store_dir(smp, store) / "b"
    return {f"{sub}/{n}" for sub in os.listdir(b) for n in os.listdir(b / sub)}


def _dirty_flag(smp) -> str | None:
    conn = sqlite3.connect(smp.state / "smp.db")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='dirty'").fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def _log(smp) -> str:
    try:
        return (smp.state / "smpfs.log").read_text()
    except FileNotFoundError:
        return ""


def _reap(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


# -- clean unmount --------------------------------------------------------------------

def test_remount_keeps_everything(smp):
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))
    smp.as_uid(comp, make_tree, f"{store}/tree")

    def extra(s):
        # a file written through an fd that stays open across a second write and a truncate
        fd = os.open(f"{s}/partial", os.O_CREAT | os.O_WRONLY, 0o600)
        os.pwrite(fd, b"x" * 300_000, 0)
        os.pwrite(fd, b"y" * 10, 5 * MiB)
        os.ftruncate(fd, 5 * MiB + 5)
        os.close(fd)
        os.utime(f"{s}/partial", ns=(1, 1_234_567_890_987_654_321))
        os.setxattr(s, "user.on-the-store-root", b"kept")
    smp.as_uid(comp, extra, store)
    before = smp.as_uid(comp, snapshot, store)
    smp.remount()
    after = smp.as_uid(comp, snapshot, store)
    assert_same_tree(before, after, "after a remount")
    assert after["partial"]["size"] == 5 * MiB + 5
    assert smp.as_uid(comp, lambda: os.getxattr(store, "user.on-the-store-root")) == b"kept"
    # and the store is still writable by its computer after the remount
    smp.as_uid(comp, lambda: open(f"{store}/new-after-remount", "wb").write(b"ok"))
    smp.remount()
    assert smp.as_uid(comp, lambda: open(f"{store}/new-after-remount", "rb").read()) == b"ok"
    assert _dirty_flag(smp) == "1"          # mounted: a crash now would be dirty
    smp.umount()
    assert _dirty_flag(smp) == "0"          # a clean unmount clears it
    smp.mount()


def _write_and_hold(report: int, store: str) -> None:
    """Write without fsync or close, then keep the file open until killed."""
    fd = os.open(f"{store}/held-open", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, _content(77, 2 * BLOCK + 300_000))          # the last block only in memory
    with open(f"{store}/closed", "wb") as f:
        f.write(_content(78, 500_000))
    os.write(report, b"ready\n")
    while True:
        time.sleep(1)


def test_sigterm_unmounts_cleanly_and_flushes(smp):
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))
    pid, r = spawn_as(comp.uid, _write_and_hold, store)
    try:
        with os.fdopen(r, "rb") as pipe:
            assert pipe.readline() == b"ready\n"
        checks = _log(smp).count("did not end cleanly")
        smp.kill(signal.SIGTERM)                      # returns once the daemon is gone
    finally:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
    assert not smp.mounted
    assert _dirty_flag(smp) == "0", "SIGTERM must end the mount cleanly"
    smp.mount()
    assert _log(smp).count("did not end cleanly") == checks
    got = smp.as_uid(comp, lambda: (open(f"{store}/held-open", "rb").read(), open(f"{store}/closed", "rb").read()))
    assert got[0] == _content(77, 2 * BLOCK + 300_000), "data written before SIGTERM was lost"
    assert got[1] == _content(78, 500_000)


# -- SIGKILL during a write loop -------------------------------------------------------

HOT_SIZE = 2 * BLOCK + BLOCK // 2


def _content(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


def _file_size(i: int) -> int:
    return random.Random(-i).choice([0, 1, 4096, 65536 + 3, 700_000, BLOCK, BLOCK + 1, 2 * BLOCK + 12345])


def _hot(v: int) -> bytes:
    return random.Random(1_000_000 + v).randbytes(HOT_SIZE)


def _cfg(v: int) -> bytes:
    return b"version %d\n" % v + random.Random(2_000_000 + v).randbytes(40_000 + v % 7 * 1000)


def _log_text(n: int) -> bytes:
    return b"".join(b"line %06d of the unsynced log\n" % i for i in range(n))


def _writer(report: int, store: str) -> None:
    """Write files forever, reporting each one whose fsync returned."""
    logfd = os.open(f"{store}/log.txt", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    hot = os.open(f"{store}/hot.bin", os.O_CREAT | os.O_RDWR, 0o644)
    v = c = 0
    for i in range(100_000):
        data = _content(i, _file_size(i))
        fd = os.open(f"{store}/f{i:05d}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        for off in range(0, len(data), 128 * 1024):
            os.write(fd, data[off:off + 128 * 1024])
        os.fsync(fd)
        os.write(report, b"F %d\n" % i)
        os.close(fd)
        os.write(logfd, b"line %06d of the unsynced log\n" % i)     # never fsynced
        if i % 2 == 0:               # the atomic-replace idiom: temp file, fsync, rename, fsync dir
            with open(f"{store}/cfg.tmp", "wb") as f:
                f.write(_cfg(c))
                os.fsync(f.fileno())
            os.rename(f"{store}/cfg.tmp", f"{store}/cfg")
            dfd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
            os.write(report, b"C %d\n" % c)
            c += 1
        if i % 3 == 0:                                              # rewrite a file in place
            new = _hot(v)
            for off in range(0, HOT_SIZE, 256 * 1024):
                os.pwrite(hot, new[off:off + 256 * 1024], off)
            os.fsync(hot)
            os.write(report, b"H %d\n" % v)
            v += 1


def _check_after_crash(store: str, synced: list[int], hot_v: int, max_i: int, cfg_v: int) -> dict:
    """As the computer, after the remount: what must and may be there."""
    names = set(os.listdir(store))
    # the file replaced by rename: a complete version, at least the last one made durable
    with open(f"{store}/cfg", "rb") as f:
        cfg = f.read()
    assert cfg in (_cfg(cfg_v), _cfg(cfg_v + 1)), f"cfg is not version {cfg_v} or {cfg_v + 1}: {cfg[:12]!r}"
    # every file whose fsync returned: intact
    for i in synced:
        name = f"f{i:05d}"
        assert name in names, f"{name} was fsynced but is gone"
        with open(f"{store}/{name}", "rb") as f:
            got = f.read()
        assert got == _content(i, _file_size(i)), f"{name} was fsynced but reads differently"
    # files in flight at the kill: readable, and each block is the data written or never written
    for name in sorted(names):
        with open(f"{store}/{name}", "rb") as f:
            got = f.read()                            # no file may fail to read (EIO)
        if name.startswith("f") and name[1:].isdigit() and int(name[1:]) not in synced:
            i = int(name[1:])
            assert i <= max_i + 1, f"{name} was never written"
            want = _content(i, _file_size(i))
            assert len(got) <= len(want), f"{name} is longer than ever written"
            for b in range(0, len(got), BLOCK):
                g = got[b:b + BLOCK]
                assert g == want[b:b + len(g)] or g == bytes(len(g)), f"{name}: block {b // BLOCK} is garbage"
    # the file rewritten in place: each block is the last fsynced version or the one in flight
    with open(f"{store}/hot.bin", "rb") as f:
        hot = f.read()
    allowed = [_hot(hot_v), _hot(hot_v + 1)] if hot_v >= 0 else [bytes(HOT_SIZE), _hot(0)]
    if hot_v >= 0:
        assert len(hot) == HOT_SIZE
    for b in range(0, len(hot), BLOCK):
        g = hot[b:b + BLOCK]
        assert any(g == a[b:b + len(g)] for a in allowed), f"hot.bin block {b // BLOCK} is neither old nor new"
    # the never-synced log: a prefix of what was written, possibly with zeros for blocks not yet written
    with open(f"{store}/log.txt", "rb") as f:
        log = f.read()
    want = _log_text(max_i + 2)
    assert len(log) <= len(want)
    assert all(g == w or g == 0 for g, w in zip(log, want, strict=False)), "log.txt reads garbage"
    return {"files": len(names), "hot_len": len(hot)}


@pytest.mark.daemon_log(r"fsck: ", r"did not end cleanly")
def test_sigkill_during_write_loop(smp):
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))
    pid, r = spawn_as(comp.uid, _writer, store)
    synced, hot_v, cfg_v = [], -1, -1
    buf = b""
    deadline = time.monotonic() + 30
    try:
        with os.fdopen(r, "rb", buffering=0) as pipe:
            while time.monotonic() < deadline and (len(synced) < 25 or hot_v < 3):
                chunk = pipe.read(4096)
                if not chunk:
                    break                              # the writer died: reported below
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    kind, n = line.split()
                    if kind == b"F":
                        synced.append(int(n))
                    elif kind == b"C":
                        cfg_v = int(n)
                    else:
                        hot_v = int(n)
            # kill while the writer is in the middle of its next file
            assert len(synced) >= 25, f"the writer stopped early after {len(synced)} files"
            smp.kill(signal.SIGKILL)
            rest = pipe.read()                         # reports written just before the kill
        for line in (buf + rest).split(b"\n"):
            if line.strip():
                kind, n = line.split()
                if kind == b"F":
                    synced.append(int(n))
                elif kind == b"C":
                    cfg_v = int(n)
                else:
                    hot_v = int(n)
    finally:
        _reap(pid)
    assert _dirty_flag(smp) == "1"
    smp.mount()
    assert "did not end cleanly" in _log(smp)
    res = smp.as_uid(comp, _check_after_crash, store, synced, hot_v, max(synced), cfg_v)
    assert res["files"] >= len(synced)
    # the store keeps working: write, remount cleanly, read back
    smp.as_uid(comp, lambda: open(f"{store}/after-crash", "wb").write(b"fine"))
    smp.remount()
    smp.as_uid(comp, _check_after_crash, store, synced, hot_v, max(synced), cfg_v)
    assert smp.as_uid(comp, lambda: open(f"{store}/after-crash", "rb").read()) == b"fine"


# -- deleted data leaves the disk ------------------------------------------------------------

def test_space_of_deleted_and_rewritten_data_is_reclaimed(smp):
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))
    base = _block_files(smp, store)

    def body(s):
        rnd = random.Random(4)
        for name in ("rm-me", "open-unlinked", "replaced", "truncated", "rewritten"):
            with open(f"{s}/{name}", "wb") as f:
                f.write(rnd.randbytes(3 * BLOCK))
                os.fsync(f.fileno())
        with open(f"{s}/new", "wb") as f:
            f.write(rnd.randbytes(100_000))
            os.fsync(f.fileno())
        os.unlink(f"{s}/rm-me")
        fd = os.open(f"{s}/open-unlinked", os.O_RDONLY)
        os.unlink(f"{s}/open-unlinked")
        assert len(os.read(fd, 10)) == 10
        os.close(fd)
        os.rename(f"{s}/new", f"{s}/replaced")
        os.truncate(f"{s}/truncated", 100_000)
        with open(f"{s}/rewritten", "r+b") as f:           # every block rewritten in place
            f.write(rnd.randbytes(3 * BLOCK))
            os.fsync(f.fileno())
        dfd = os.open(s, os.O_RDONLY | os.O_DIRECTORY)      # a durable point: old blocks may go
        os.fsync(dfd)
        os.close(dfd)
    smp.as_uid(comp, body, store)
    deadline = time.monotonic() + 10
    while True:
        left = _block_files(smp, store) - base
        # replaced (100 kB): 1, truncated to 100 kB: 1, rewritten: 3
        if len(left) <= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(left) == 5, f"{len(left)} block files on disk for 5 blocks of live data"
    smp.umount()
    assert len(_block_files(smp, store) - base) == 5
    smp.mount()
    assert smp.as_uid(comp, lambda: sorted(os.listdir(store))) == ["replaced", "rewritten", "truncated"]


# -- the dirty flag and fsck --------------------------------------------------------------

def _hold_unlinked(report: int, store: str) -> None:
    """Keep an unlinked, fsynced file open until killed."""
    with open(f"{store}/kept", "wb") as f:
        f.write(b"kept" * 10_000)               # big enough for a block file of its own
        os.fsync(f.fileno())
    fd = os.open(f"{store}/doomed", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, random.Random(5).randbytes(2 * BLOCK + 100_000))      # three block files
    os.fsync(fd)
    os.unlink(f"{store}/doomed")
    dfd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.write(report, b"ready\n")
    while True:
        time.sleep(1)


@pytest.mark.daemon_log(r"fsck: ", r"did not end cleanly")
def test_dirty_flag_triggers_fsck(smp):
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))
    sdir = _store_dir(smp, store)
    before = _block_files(smp, store)
    pid, r = spawn_as(comp.uid, _hold_unlinked, store)
    try:
        with os.fdopen(r, "rb") as pipe:
            assert pipe.readline() == b"ready\n"
        held = _block_files(smp, store) - before   # the unlinked file's blocks and kept's
        assert len(held) == 4, held
        smp.kill(signal.SIGKILL)
    finally:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
    # a stray block file no block map points to, as a crash between write and commit leaves
    orphan = sdir / "b" / "ab" / "00000000deadbeab"
    orphan.write_bytes(os.urandom(1000))
    assert _dirty_flag(smp) == "1"
    checks = _log(smp).count("did not end cleanly")
    smp.mount()
    log = _log(smp)
    assert log.count("did not end cleanly") == checks + 1
    assert "fsck:" in log
    assert not orphan.exists(), "fsck left an orphan block file"
    assert len(_block_files(smp, store) - before) == 1, "the unlinked file's blocks were not freed"
    assert smp.as_uid(comp, lambda: open(f"{store}/kept", "rb").read()) == b"kept" * 10_000
    assert smp.as_uid(comp, os.listdir, store) == ["kept"]

    # a clean unmount: no check on the next mount, so a planted orphan stays
    smp.umount()
    assert _dirty_flag(smp) == "0"
    orphan.write_bytes(os.urandom(1000))
    smp.mount()
    assert _log(smp).count("did not end cleanly") == checks + 1
    assert orphan.exists()
    smp.umount()
    # ... until `smpfs fsck` runs by hand
    out = smp.cli("fsck").out
    assert "1 orphan blocks" in out, out
    assert not orphan.exists()
    smp.mount()
    assert smp.as_uid(comp, lambda: open(f"{store}/kept", "rb").read()) == b"kept" * 10_000
