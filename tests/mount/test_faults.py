"""Faults: broken keys, broken databases, damaged ciphertext, dying clients.

Each fault gets a clear message and its own exit code, or EIO for the
damaged file alone -- never a crash of the whole mount, never wrong data.

* master key missing, world-readable, wrong (another key), wrong size:
  ``smpfs mount`` refuses with exit 4 and says what is wrong and what to do;
* smp.db corrupt, empty, or from a newer smpfs: exit 3 with a clear message;
* one store's store.db corrupt: that store answers EIO, the others work;
* block files missing, bit-flipped (ciphertext and tag), truncated, swapped
  with another block of the same file or of another store, replaced by a
  symlink: EIO for that file (its intact blocks still read), other files and
  the mount unharmed; ``smpfs fsck`` reports what it cannot repair (exit 20);
* a client SIGKILLed in the middle of writing: the mount stays healthy.

(A full storage folder -- ENOSPC -- is covered by tests/test_enospc.py.)
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from test_concurrency import collect, reap, spawn_as

MiB = 1 << 20
LOCAL_MASK = (1 << 40) - 1


def mount_refused(smp, code: int, *words: str) -> str:
    """``smpfs mount`` must fail with ``code`` and a message containing ``words``."""
    assert not smp.mounted
    r = smp.cli("mount", smp.mountpoint, check=False)
    assert r.code == code, f"mount exited {r.code}, expected {code}: {r.err or r.out}"
    msg = r.err.lower()
    assert msg.startswith("smpfs: "), r.err
    for w in words:
        assert w.lower() in msg, f"{w!r} not in the message: {r.err}"
    assert "traceback" not in msg, r.err
    assert not smp.mounted and smp.daemon_pid() is None
    return r.err


def write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def err_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


# -- the master key ----------------------------------------------------------------------

@pytest.fixture
def captured(smp):
    """An SMP with one store holding data, unmounted."""
    a = smp.add_computer()
    store = smp.request_capture(a)
    smp.as_uid(a, write, f"{store}/USMT.MIG", b"state" * 1000)
    smp.umount()
    smp.computer, smp.store = a, store
    return smp


def test_master_key_missing(captured):
    smp = captured
    key = smp.state / "master.key"
    key.rename(smp.root / "key.bak")
    err = mount_refused(smp, 4, "master key", "missing")
    assert "backup" in err                      # says what to do
    (smp.root / "key.bak").rename(key)
    smp.mount()
    assert smp.as_uid(smp.computer, read, f"{smp.store}/USMT.MIG") == b"state" * 1000


def test_master_key_world_readable(captured):
    smp = captured
    key = smp.state / "master.key"
    for mode in (0o644, 0o640, 0o604):
        os.chmod(key, mode)
        mount_refused(smp, 4, "readable by others", f"chmod 600 {key}")
    os.chmod(key, 0o600)
    smp.mount()


def test_master_key_wrong_or_damaged(captured):
    smp = captured
    key = smp.state / "master.key"
    good = key.read_bytes()
    key.write_bytes(os.urandom(32))                      # someone else's key
    mount_refused(smp, 4, "does not unwrap", "not the one this SMP was created with")
    r = smp.cli("key", "show", smp.computer.name, check=False)
    assert r.code == 4 and "does not unwrap" in r.err, r
    for bad in (good[:31], good + b"\n", b""):            # cut short, an editor's newline, empty
        key.write_bytes(bad)
        mount_refused(smp, 4, "master key", f"{len(bad)} bytes")
    os.unlink(key)
    os.symlink(smp.root / "elsewhere.key", key)          # never followed
    (smp.root / "elsewhere.key").write_bytes(good)
    os.chmod(smp.root / "elsewhere.key", 0o600)
    mount_refused(smp, 4, "master key")
    os.unlink(key)
    key.write_bytes(good)
    os.chmod(key, 0o600)
    smp.mount()
    assert smp.as_uid(smp.computer, read, f"{smp.store}/USMT.MIG") == b"state" * 1000


# -- smp.db ---------------------------------------------------------------------------------

def _db_files(state: Path):
    return [state / n for n in ("smp.db", "smp.db-wal", "smp.db-shm") if (state / n).exists()]


def test_smp_db_corrupt_empty_or_newer(captured):
    smp = captured
    backup = smp.root / "dbbackup"
    backup.mkdir()
    for f in _db_files(smp.state):
        shutil.copy2(f, backup / f.name)

    def restore():
        for f in _db_files(smp.state):
            f.unlink()
        for f in backup.iterdir():
            shutil.copy2(f, smp.state / f.name)

    db = smp.state / "smp.db"
    # garbage over the header
    with open(db, "r+b") as f:
        f.write(os.urandom(100))
    mount_refused(smp, 3, "not a readable SMP database")
    r = smp.cli("status", check=False)
    assert r.code == 3 and "not a readable SMP database" in r.err
    restore()
    # an empty file
    for f in _db_files(smp.state):
        f.unlink()
    db.touch(mode=0o600)
    err = mount_refused(smp, 3)
    assert "not a readable SMP database" in err or "not an initialised SMP database" in err, err
    restore()
    # written by a newer smpfs
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    conn.close()
    mount_refused(smp, 3, "schema version 999", "upgrade smpfs")
    restore()
    smp.mount()
    assert smp.as_uid(smp.computer, read, f"{smp.store}/USMT.MIG") == b"state" * 1000


# -- damaged stores and blocks ----------------------------------------------------------------

def _store_dir(smp, store: Path) -> Path:
    folder = smp.status()["folders"][0]["path"]
    return Path(folder) / store.name


def _blocks(store_dir: Path, ino: int) -> list[Path]:
    conn = sqlite3.connect(f"file:{store_dir / 'store.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT counter FROM blocks WHERE ino=? ORDER BY blkno", (ino,)).fetchall()
    finally:
        conn.close()
    return [store_dir / "b" / f"{c & 0xFF:02x}" / f"{c:016x}" for (c,) in rows]


def _make_files(root: str, names, seed: int) -> dict:
    out = {}
    for _i, name in enumerate(names):
        data = random.Random(f"{seed}/{name}").randbytes(3 * MiB + 1000)
        write(f"{root}/{name}", data)
        out[name] = os.stat(f"{root}/{name}").st_ino & LOCAL_MASK
    return out


def _outcomes(root: str, names) -> dict:
    """name -> ('ok', sha) or ('err', errno) for a full read; plus the last block alone."""
    import hashlib
    out = {}
    for n in names:
        try:
            out[n] = ("ok", hashlib.sha256(read(f"{root}/{n}")).hexdigest())
        except OSError as e:
            out[n] = ("err", e.errno)
        try:
            fd = os.open(f"{root}/{n}", os.O_RDONLY)
            try:
                out[n + "#tail"] = ("ok", hashlib.sha256(os.pread(fd, 1000, 3 * MiB)).hexdigest())
            finally:
                os.close(fd)
        except OSError as e:
            out[n + "#tail"] = ("err", e.errno)
    return out


@pytest.mark.daemon_log(r"I/O error: .*(fails authentication|is truncated|is missing|cannot be opened)")
def test_damaged_blocks_give_eio_for_that_file_alone(smp):
    import hashlib
    seed = random.SystemRandom().randrange(1 << 30)
    a, b = smp.add_computer(), smp.add_computer()
    sa, sb = smp.request_capture(a), smp.request_capture(b)
    cases = ["missing", "bitflip", "tagflip", "truncated", "swapped", "other_store", "symlink", "zeroed"]
    inos = smp.as_uid(a, _make_files, str(sa), cases + ["healthy"], seed)
    ino_b = smp.as_uid(b, _make_files, str(sb), ["theirs"], seed)["theirs"]
    smp.umount()
    da, db_ = _store_dir(smp, sa), _store_dir(smp, sb)
    blk = {n: _blocks(da, i) for n, i in inos.items()}
    assert all(len(v) == 4 for v in blk.values()), {n: len(v) for n, v in blk.items()}
    # damage block 1 (bytes 1-2 MiB) of each file in its own way; block 3 stays intact
    target = {n: blk[n][1] for n in cases}
    target["missing"].unlink()
    with open(target["bitflip"], "r+b") as f:           # a bit in the ciphertext of chunk 5
        f.seek(5 * (64 * 1024 + 16) + 1234)
        c = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([c[0] ^ 0x10]))
    with open(target["tagflip"], "r+b") as f:           # a bit in the tag of chunk 0
        f.seek(64 * 1024 + 3)
        c = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([c[0] ^ 0x01]))
    os.truncate(target["truncated"], os.path.getsize(target["truncated"]) - 1)
    shutil.copyfile(blk["swapped"][2], target["swapped"])          # its own block 2, in block 1's place
    shutil.copyfile(_blocks(db_, ino_b)[1], target["other_store"])  # another store's block
    target["symlink"].unlink()
    os.symlink(blk["healthy"][1], target["symlink"])               # points at a valid block
    size = os.path.getsize(target["zeroed"])
    write(target["zeroed"], bytes(size))

    r = smp.cli("fsck", "--no-repair", "--json", check=False)
    assert r.code == 20, (r.code, r.err)
    assert "could not be repaired" in r.err
    report = json.loads(r.out)
    assert any("missing blocks" in f for f in report["findings"]), report

    smp.mount()
    got = smp.as_uid(a, _outcomes, str(sa), cases + ["healthy"])
    want = {n: hashlib.sha256(random.Random(f"{seed}/{n}").randbytes(3 * MiB + 1000)).hexdigest()
            for n in cases + ["healthy"]}
    tail = {n: hashlib.sha256(random.Random(f"{seed}/{n}").randbytes(3 * MiB + 1000)[3 * MiB:]).hexdigest()
            for n in cases + ["healthy"]}
    problems = []
    for n in cases:
        if got[n] != ("err", errno.EIO):
            problems.append(f"{n}: reading the damaged file gave {got[n][0]} "
                            f"{'(WRONG DATA)' if got[n][0] == 'ok' and got[n][1] != want[n] else got[n][1]}, not EIO")
        if got[n + "#tail"] != ("ok", tail[n]):
            problems.append(f"{n}: an intact block of the damaged file did not read back: {got[n + '#tail']}")
    assert got["healthy"] == ("ok", want["healthy"]), "an undamaged file of the same store is harmed"
    assert not problems, "\n".join(problems)
    # the other store and the mount are unharmed; the destination sees the same after release
    assert smp.as_uid(b, _outcomes, str(sb), ["theirs"])["theirs"][0] == "ok"
    assert smp.daemon_pid() and os.listdir(sa.parent)
    log = (smp.state / "smpfs.log").read_text()
    assert "fails authentication" in log or "I/O error" in log, "the admin is not told about the damage"
    smp.umount()


@pytest.mark.daemon_log(r"lookup failed", r"Traceback: sqlite3.DatabaseError")
def test_corrupt_store_db_fails_that_store_alone(smp):
    a, b = smp.add_computer(), smp.add_computer()
    sa, sb = smp.request_capture(a), smp.request_capture(b)
    smp.as_uid(a, write, f"{sa}/f", b"a" * 100)
    smp.as_uid(b, write, f"{sb}/f", b"b" * 100)
    smp.umount()
    sdb = _store_dir(smp, sa) / "store.db"
    with open(sdb, "r+b") as f:
        f.write(b"this is not sqlite" * 6)
    smp.mount()
    assert smp.as_uid(a, err_of, read, f"{sa}/f") == errno.EIO
    assert smp.as_uid(a, err_of, os.listdir, str(sa)) == errno.EIO
    assert smp.as_uid(b, read, f"{sb}/f") == b"b" * 100
    assert smp.daemon_pid() and os.statvfs(smp.mountpoint)
    smp.umount()
    r = smp.cli("fsck", "--no-repair", check=False)
    assert r.code == 20 and "cannot open" in r.out, (r.code, r.out, r.err)


# -- a client dying mid-write ------------------------------------------------------------------

def _writer(path: str, ready: str) -> None:
    chunk = bytes(range(256)) * 4096                     # 1 MiB, a recognisable pattern
    with open(path, "wb") as f:
        i = 0
        while True:
            f.write(chunk)
            i += 1
            if i == 4:
                Path(ready).touch()


def test_client_killed_mid_write_leaves_mount_healthy(smp):
    a = smp.add_computer()
    store = smp.request_capture(a)
    smp.as_uid(a, write, f"{store}/keep", b"k" * 5000)
    ready = smp.root / f"ready-{a.uid}"
    os.chmod(smp.root, 0o777)
    children = []
    try:
        for n in range(3):                               # kill at three different moments
            if ready.exists():
                ready.unlink()
            c = spawn_as(a.uid, None, _writer, f"{store}/big{n}", str(ready), label="writer")
            children.append(c)
            deadline = time.monotonic() + 30
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            # write(2) of 4 MiB returned before the kill: all of it must read back
            assert ready.exists(), f"writer {n} did not write 4 MiB within 30 s"
            time.sleep(random.uniform(0, 0.3))
            os.kill(c.pid, signal.SIGKILL)
            with pytest.raises(AssertionError, match="died without a result"):
                collect(c)
            children.remove(c)
    finally:
        reap(children)
        os.chmod(smp.root, 0o711)

    def check(store):
        pattern = bytes(range(256)) * 4096
        out = []
        for n in range(3):
            data = read(f"{store}/big{n}")
            whole, rest = divmod(len(data), MiB)
            out.append(len(data))
            assert len(data) >= 4 * MiB
            assert data == (pattern * (whole + 1))[:len(data)], f"big{n}: not a prefix of what was written"
        assert read(f"{store}/keep") == b"k" * 5000
        write(f"{store}/after", b"still writable")       # the mount takes new writes
        return out
    sizes = smp.as_uid(a, check, str(store))
    assert all(s >= 4 * MiB for s in sizes)
    smp.umount()                                          # not busy: nothing left open
    r = smp.cli("fsck", "--no-repair", "--json")
    assert json.loads(r.out)["findings"] == []
    smp.mount()
