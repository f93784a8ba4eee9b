"""Nothing of a user's data is readable at rest, and tampering reads as EIO.

* a known plaintext marker written into file contents, file and directory
  names, symlink targets, xattr names and values is found nowhere under the
  state directory or the storage folder (sqlite files and WAL included),
  neither while mounted nor after the unmount;
* a flipped byte, a truncated or missing block file, blocks swapped between
  files, within a file or between stores, and an older version of a block put
  back (replay) all read as EIO, while the other files still read fine;
* tampered metadata in store.db (an inline block, a name, an xattr value, a
  symlink target) is EIO too, never wrong data, and the mount stays up;
* so is an edited row (a block-map row deleted, a size or a mode and owner
  changed, a name repointed to another file) and a store put back whole
  from an older copy after its release.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from smpfs.testing import SkipNoFuse, mounted

MiB = 1 << 20
LOCAL_MASK = (1 << 40) - 1          # a store's own inode number inside the mount's st_ino


@pytest.fixture(scope="module")
def msmp():
    """An SMP whose storage folder is a directory of its own, outside the state dir."""
    parent = Path(tempfile.mkdtemp(prefix="smpfs-folder-"))
    os.chmod(parent, 0o711)
    try:
        with mounted(folder=parent / "folder") as s:
            yield s                                   # s.folder: the storage folder
    except SkipNoFuse as e:
        pytest.skip(str(e))
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def comp_store(msmp, request):
    request.node._smpfs = msmp
    comp = msmp.add_computer()
    return comp, str(msmp.request_capture(comp))


def _store_dir(smp, store) -> Path:
    return smp.folder / Path(store).name


def _blocks(smp, store) -> dict[str, Path]:
    b = _store_dir(smp, store) / "b"
    return {f"{sub}/{n}": b / sub / n for sub in os.listdir(b) for n in os.listdir(b / sub)}


def _write_new(smp, comp, store, name, data) -> list[Path]:
    """Write a file (as the computer, fsynced); return the block files it added."""
    before = set(_blocks(smp, store))

    def go(s):
        with open(f"{s}/{name}", "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
    smp.as_uid(comp, go, store)
    now = _blocks(smp, store)
    return [now[k] for k in sorted(set(now) - before)]


def _read_all(store, names) -> dict:
    out = {}
    for n in names:
        try:
            with open(f"{store}/{n}", "rb") as f:
                out[n] = ("ok", f.read())
        except OSError as e:
            out[n] = ("err", e.errno)
    return out


def _eio(result) -> bool:
    return result == ("err", errno.EIO)


def _log(smp) -> str:
    try:
        return (smp.state / "smpfs.log").read_text()
    except FileNotFoundError:
        return ""


# -- no plaintext at rest -----------------------------------------------------------------

def _find(marker: bytes, roots) -> list[str]:
    hits = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in filenames + dirnames:
                if marker in os.fsencode(n):
                    hits.append(f"name: {os.path.join(dirpath, n)}")
            for n in filenames:
                p = os.path.join(dirpath, n)
                if not os.path.isfile(p) or os.path.islink(p):
                    continue
                with open(p, "rb") as f:
                    if marker in f.read():
                        hits.append(p)
    return hits


def _grep(marker: bytes, roots) -> str:
    r = subprocess.run(["grep", "-r", "-a", "-l", "-F", "--", marker.decode(), *map(str, roots)],
                       capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


def test_no_plaintext_at_rest(msmp, comp_store):
    comp, store = comp_store
    marker = b"PLAINMARK" + os.urandom(6).hex().encode()
    m = marker.decode()

    def populate(s):
        rnd = random.Random(9)
        with open(f"{s}/small.txt", "wb") as f:                  # small: kept inline in store.db
            f.write(b"secret " + marker + b" secret")
        big = bytearray(rnd.randbytes(3 * MiB + 500))
        for off in range(0, len(big) - len(marker), 50_000):
            big[off:off + len(marker)] = marker
        for off in (64 * 1024 - 5, MiB - 7, 2 * MiB - 3):        # across chunk and block boundaries
            big[off:off + len(marker)] = marker
        with open(f"{s}/big.bin", "wb") as f:
            f.write(big)
        with open(f"{s}/rewritten", "wb") as f:                   # older versions superseded
            for v in range(3):
                f.seek(0)
                f.write(marker * 20_000 + b"v%d" % v)
                f.flush()
                os.fsync(f.fileno())
        os.mkdir(f"{s}/dir-{m}")
        with open(f"{s}/dir-{m}/file-{m}.txt", "wb") as f:
            f.write(marker)
        os.symlink(f"/target/{m}/x", f"{s}/link")
        os.symlink("small.txt", f"{s}/link-{m}")
        os.link(f"{s}/small.txt", f"{s}/hard-{m}")
        os.setxattr(f"{s}/small.txt", f"user.{m}", b"value " + marker)
        os.setxattr(f"{s}/dir-{m}", "user.plain", marker * 10)
        with open(f"{s}/old-name-{m}", "wb") as f:
            f.write(b"x")
        os.rename(f"{s}/old-name-{m}", f"{s}/renamed")
        with open(f"{s}/deleted-{m}", "wb") as f:
            f.write(marker * 1000)
        os.unlink(f"{s}/deleted-{m}")
        os.utime(f"{s}/big.bin", ns=(1, 2))
        for p in ("small.txt", "big.bin"):
            fd = os.open(f"{s}/{p}", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        # it all reads back through the mount
        assert open(f"{s}/link-{m}", "rb").read().count(marker) == 1
        assert os.readlink(f"{s}/link") == f"/target/{m}/x"
        assert os.getxattr(f"{s}/small.txt", f"user.{m}") == b"value " + marker
    msmp.as_uid(comp, populate, store)
    # the search itself finds plaintext where there is some
    control = msmp.state / "control-probe"
    control.write_bytes(b"junk" + marker + b"junk")
    assert _find(marker, [msmp.state]) == [str(control)] and _grep(marker, [msmp.state]).strip() == str(control)
    control.unlink()
    time.sleep(1.5)                                   # past the daemon's batch commit
    roots = [msmp.state, msmp.folder]
    dbs = {p.name for r in roots for p in Path(r).rglob("*.db*")}
    assert {"smp.db", "store.db"} <= dbs            # the databases (and any WAL) are searched
    assert _find(marker, roots) == [], "plaintext marker at rest while mounted"
    assert _grep(marker, roots) == ""
    msmp.umount()
    try:
        assert _find(marker, [msmp.root, msmp.folder]) == [], "plaintext marker at rest after unmount"
        assert _grep(marker, roots) == ""
    finally:
        msmp.mount()
    # and it is still all there, decrypted, for its computer
    assert msmp.as_uid(comp, lambda: open(f"{store}/dir-{m}/file-{m}.txt", "rb").read()) == marker


# -- tampering with block files -------------------------------------------------------------

@pytest.mark.daemon_log(r"I/O error: .*(fails authentication|is truncated|is missing|cannot be opened)")
def test_tampered_block_files_read_as_eio(msmp, comp_store):
    comp, store = comp_store
    rnd = random.Random(1)
    data = {n: rnd.randbytes(size) for n, size in
            [("flipped", 200_000), ("intact", 300_000), ("tiny", 100), ("truncated", 200_000),
             ("cut-at-chunk", 200_000), ("missing", 200_000), ("flipped-middle", 3 * MiB)]}
    files = {n: _write_new(msmp, comp, store, n, d) for n, d in data.items()}
    assert len(files["flipped"]) == 1 and len(files["flipped-middle"]) == 3
    msmp.umount()
    try:
        p = files["flipped"][0]
        raw = bytearray(p.read_bytes())
        raw[100] ^= 0x01
        p.write_bytes(raw)
        p = files["flipped-middle"][1]                 # a byte in the middle of the middle block
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0x80
        p.write_bytes(raw)
        p = files["truncated"][0]
        p.write_bytes(p.read_bytes()[:-10])
        p = files["cut-at-chunk"][0]                   # the last chunk dropped whole
        p.write_bytes(p.read_bytes()[:3 * (64 * 1024 + 16)])
        files["missing"][0].unlink()
    finally:
        msmp.mount()
    got = msmp.as_uid(comp, _read_all, store, list(data))
    for n in ("flipped", "flipped-middle", "truncated", "cut-at-chunk", "missing"):
        assert _eio(got[n]), f"{n}: expected EIO, got {got[n][0]} {got[n][1] if got[n][0] == 'err' else ''}"
    assert got["intact"] == ("ok", data["intact"])
    assert got["tiny"] == ("ok", data["tiny"])
    # the parts of a damaged file that are intact still read; the mount stays up
    def partial(s):
        with open(f"{s}/flipped-middle", "rb") as f:
            head = f.read(MiB)
        return head, sorted(os.listdir(s))
    head, names = msmp.as_uid(comp, partial, store)
    assert head == data["flipped-middle"][:MiB]
    assert names == sorted(data)
    assert "authentication" in _log(msmp) or "I/O error" in _log(msmp), "EIO is not logged"


@pytest.mark.daemon_log(r"I/O error: .*(fails authentication|is truncated|is missing|cannot be opened)")
def test_swapped_blocks_read_as_eio(msmp, comp_store):
    comp, store = comp_store
    other = msmp.add_computer()
    other_store = str(msmp.request_capture(other))
    rnd = random.Random(2)
    data = {n: rnd.randbytes(size) for n, size in
            [("x", 200_000), ("y", 200_000), ("two-blocks", 2 * MiB), ("intact", 200_000)]}
    files = {n: _write_new(msmp, comp, store, n, d) for n, d in data.items()}
    # the first file in another store: same inode number, block number and maybe counter
    theirs = rnd.randbytes(200_000)
    their_files = _write_new(msmp, other, other_store, "theirs", theirs)
    ours_first = _write_new(msmp, comp, store, "zz-for-cross-store", rnd.randbytes(200_000))
    msmp.umount()
    try:
        def swap(a: Path, b: Path):
            da, db = a.read_bytes(), b.read_bytes()
            a.write_bytes(db)
            b.write_bytes(da)
        swap(files["x"][0], files["y"][0])                      # between two files
        swap(*files["two-blocks"])                              # within one file
        swap(their_files[0], ours_first[0])                     # between two stores
    finally:
        msmp.mount()
    got = msmp.as_uid(comp, _read_all, store, list(data) + ["zz-for-cross-store"])
    for n in ("x", "y", "two-blocks", "zz-for-cross-store"):
        assert _eio(got[n]), f"{n}: a swapped block must read as EIO, got {got[n][0]}"
    assert got["intact"] == ("ok", data["intact"])
    assert _eio(msmp.as_uid(other, _read_all, other_store, ["theirs"])["theirs"])


@pytest.mark.daemon_log(r"I/O error: .*(fails authentication|is truncated|is missing|cannot be opened)")
def test_replayed_old_block_reads_as_eio(msmp, comp_store):
    comp, store = comp_store
    rnd = random.Random(3)
    v1, v2 = rnd.randbytes(200_000), rnd.randbytes(200_000)
    old = _write_new(msmp, comp, store, "rewritten", v1)
    assert len(old) == 1
    old_cipher = old[0].read_bytes()                  # an attacker's copy of version 1
    old_inplace = _write_new(msmp, comp, store, "inplace", v1)
    old_inplace_cipher = old_inplace[0].read_bytes()
    new = _write_new(msmp, comp, store, "rewritten", v2)          # truncate and rewrite

    def patch(s):                                      # overwrite part of a block in place
        with open(f"{s}/inplace", "r+b") as f:
            f.seek(1000)
            f.write(b"NEW" * 100)
            os.fsync(f.fileno())
    before = set(_blocks(msmp, store))
    msmp.as_uid(comp, patch, store)
    new_inplace = [p for k, p in _blocks(msmp, store).items() if k not in before]
    assert len(new) == 1 and len(new_inplace) == 1
    assert new[0] != old[0] and new_inplace[0] != old_inplace[0]
    msmp.umount()
    try:
        new[0].write_bytes(old_cipher)                 # version 1 under version 2's name
        new_inplace[0].write_bytes(old_inplace_cipher)
    finally:
        msmp.mount()
    got = msmp.as_uid(comp, _read_all, store, ["rewritten", "inplace"])
    assert _eio(got["rewritten"]), f"a replayed block must read as EIO, got {got['rewritten'][0]}"
    assert _eio(got["inplace"]), f"a replayed block must read as EIO, got {got['inplace'][0]}"


# -- tampering with store.db ------------------------------------------------------------------

@pytest.mark.daemon_log(r"I/O error: .*(fails authentication|is truncated|is missing|cannot be opened)")
def test_tampered_metadata_reads_as_eio(msmp, comp_store):
    comp, store = comp_store

    def populate(s):
        with open(f"{s}/inline", "wb") as f:                  # small: its block lives in store.db
            f.write(b"small and inline")
        with open(f"{s}/other", "wb") as f:
            f.write(b"o" * 100_000)
        os.mkdir(f"{s}/d")
        with open(f"{s}/d/named", "wb") as f:
            f.write(b"n")
        os.symlink("the target", f"{s}/sym")
        with open(f"{s}/xa", "wb") as f:
            f.write(b"x")
        os.setxattr(f"{s}/xa", "user.k", b"the value")
        return {n: os.lstat(f"{s}/{n}").st_ino & LOCAL_MASK for n in ("inline", "d", "sym", "xa")}
    inos = msmp.as_uid(comp, populate, store)
    msmp.umount()
    try:
        db = sqlite3.connect(_store_dir(msmp, store) / "store.db")
        with db:
            def flip(table, col, where, args):
                (blob,) = db.execute(f"SELECT {col} FROM {table} WHERE {where}", args).fetchone()
                assert blob is not None, f"no {table}.{col} to tamper with"
                b = bytearray(blob)
                b[len(b) // 2] ^= 0x04
                db.execute(f"UPDATE {table} SET {col}=? WHERE {where}", (bytes(b), *args))
            flip("blocks", "data", "ino=?", (inos["inline"],))
            flip("dentries", "name", "parent=?", (inos["d"],))
            flip("inodes", "target", "ino=?", (inos["sym"],))
            flip("xattrs", "value", "ino=?", (inos["xa"],))
        db.close()
    finally:
        msmp.mount()

    def check(s):
        out = {}
        for what, fn in [("inline", lambda: open(f"{s}/inline", "rb").read()),
                         ("listdir", lambda: os.listdir(f"{s}/d")),
                         ("readlink", lambda: os.readlink(f"{s}/sym")),
                         ("getxattr", lambda: os.getxattr(f"{s}/xa", "user.k"))]:
            try:
                out[what] = ("ok", fn())
            except OSError as e:
                out[what] = ("err", e.errno)
        out["other"] = open(f"{s}/other", "rb").read() == b"o" * 100_000
        out["root"] = sorted(os.listdir(s))
        return out
    got = msmp.as_uid(comp, check, store)
    for what in ("inline", "listdir", "readlink", "getxattr"):
        assert _eio(got[what]), f"tampered {what}: expected EIO, got {got[what]}"
    assert got["other"] is True
    assert got["root"] == ["d", "inline", "other", "sym", "xa"]


@pytest.mark.daemon_log(r"I/O error: .*fails authentication")
def test_edited_store_db_rows_read_as_eio(msmp, comp_store):
    """What an edit of store.db could do before: zeros for a deleted block-map
    row, a file cut short or grown, another file's content under a name, a
    forged setuid root file. Each is an EIO now; the rest of the store reads."""
    comp, store = comp_store
    rnd = random.Random(5)
    data = {n: rnd.randbytes(3 * MiB) for n in ("lost-block", "resized", "secret", "pointer", "intact")}
    data["forged"] = b"#!/bin/sh\n"

    def populate(s):
        for n, d in data.items():
            with open(f"{s}/{n}", "wb") as f:
                f.write(d)
            os.chmod(f"{s}/{n}", 0o644)
        os.fsync(os.open(s, os.O_RDONLY))
        return {n: os.lstat(f"{s}/{n}").st_ino & LOCAL_MASK for n in data}
    inos = msmp.as_uid(comp, populate, store)
    msmp.umount()
    try:
        db = sqlite3.connect(_store_dir(msmp, store) / "store.db")
        with db:
            db.execute("DELETE FROM blocks WHERE ino=? AND blkno=1", (inos["lost-block"],))
            db.execute("UPDATE inodes SET size=size-1000 WHERE ino=?", (inos["resized"],))
            db.execute("UPDATE dentries SET ino=? WHERE ino=?", (inos["secret"], inos["pointer"]))
            db.execute("UPDATE inodes SET mode=?, uid=0, gid=0 WHERE ino=?", (0o106777, inos["forged"]))
        db.close()
    finally:
        msmp.mount()

    def check(s):
        out = {}
        for n in data:
            try:
                with open(f"{s}/{n}", "rb") as f:
                    out[n] = ("ok", f.read())
            except OSError as e:
                out[n] = ("err", e.errno)
        try:
            st = os.stat(f"{s}/forged")
            out["forged-stat"] = ("ok", (st.st_mode, st.st_uid))
        except OSError as e:
            out["forged-stat"] = ("err", e.errno)
        return out
    got = msmp.as_uid(comp, check, store)
    for n in ("lost-block", "resized", "pointer", "forged", "forged-stat"):
        assert _eio(got[n]), f"{n}: an edited row must read as EIO, got {got[n][0]} {str(got[n][1])[:60]}"
    assert got["secret"] == ("ok", data["secret"])
    assert got["intact"] == ("ok", data["intact"])


@pytest.mark.daemon_log(r"I/O error: .*fails authentication as a whole")
def test_a_released_store_put_back_from_an_older_copy_is_refused(msmp, comp_store):
    """After release a store never changes: smp.db keeps its MAC as a whole,
    and a store.db put back from before the last writes is found at open."""
    comp, store = comp_store
    sd = _store_dir(msmp, store)

    def write(s, name, content):
        with open(f"{s}/{name}", "wb") as f:
            f.write(content)
            os.fsync(f.fileno())
    msmp.as_uid(comp, write, store, "first", b"1" * 100)
    msmp.umount()
    old = {n: (sd / n).read_bytes() for n in ("store.db",)}
    msmp.mount()
    msmp.as_uid(comp, write, store, "second", b"2" * 100)
    msmp.release_capture(comp)
    assert msmp.as_uid(comp, lambda: sorted(os.listdir(store))) == ["first", "second"]
    msmp.umount()
    try:
        with sqlite3.connect(msmp.state / "smp.db") as db:
            (root,) = db.execute("SELECT root_mac FROM stores WHERE store_id=?", (sd.name,)).fetchone()
        assert root is not None, "the release kept no MAC of the store"
        for n, raw in old.items():
            (sd / n).write_bytes(raw)
        for suffix in ("-wal", "-shm"):
            (sd / f"store.db{suffix}").unlink(missing_ok=True)
    finally:
        msmp.mount()

    def look(s):
        try:
            return ("ok", sorted(os.listdir(s)))
        except OSError as e:
            return ("err", e.errno)
    assert _eio(msmp.as_uid(comp, look, store))


def test_key_rotate_while_mounted_keeps_every_store_readable(msmp, comp_store):
    comp, store = comp_store
    old_master = (msmp.state / "master.key").read_bytes()
    msmp.as_uid(comp, lambda: open(f"{store}/kept", "wb").write(b"kept across a rotation"))
    before = msmp.cli("key", "show", comp.name, "--json").out
    r = msmp.cli("key", "rotate")
    assert "rotated" in r.out
    assert (msmp.state / "master.key").read_bytes() != old_master
    assert msmp.as_uid(comp, lambda: open(f"{store}/kept", "rb").read()) == b"kept across a rotation"
    # a store the daemon first opens after the rotation: its key is wrapped under the new master key
    late = msmp.add_computer()
    late_store = msmp.request_capture(late)
    r = msmp.cli("key", "rotate")
    msmp.as_uid(late, lambda: open(f"{late_store}/new", "wb").write(b"written after a rotation"))
    assert msmp.as_uid(late, lambda: open(f"{late_store}/new", "rb").read()) == b"written after a rotation"
    msmp.umount()
    msmp.mount()                                     # the store opens with its key rewrapped
    assert msmp.as_uid(late, lambda: open(f"{late_store}/new", "rb").read()) == b"written after a rotation"
    assert msmp.as_uid(comp, lambda: open(f"{store}/kept", "rb").read()) == b"kept across a rotation"
    after = msmp.cli("key", "show", comp.name, "--json").out
    assert json.loads(after)["recovery_key"] == json.loads(before)["recovery_key"]
