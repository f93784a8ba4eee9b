"""Recovery and checking tools an admin runs as root: ``smpfs recover``,
``smpfs fsck --no-repair``, ``smpfs fsck --scrub`` and fsck's repairs.

* recover never follows a symlink someone planted where it writes, and never
  chowns through a path;
* recover and ``fsck --no-repair`` change nothing (no reserve file, no WAL),
  and recover works from read-only media;
* a damaged file is never left looking complete: recover exits 20 naming it;
* ``fsck --scrub`` authenticates every block and name and names each damaged file;
* fsck's repairs leave a store that reads back exactly as written.
"""
from __future__ import annotations

import hashlib
import json
import os
import pty
import random
import select
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from loopdisk import loop_ext4, mount_read_only, umount
from test_flow import snapshot, write_tree

MiB = 1 << 20
ATTACKER = 47_111
BIG = 2 * MiB + 999                    # blocks 0 and 1 in files of their own, block 2 inline


def _captured(smp):
    """A released capture holding write_tree's files, the SMP unmounted.
    Returns (recovery key, store directory, snapshot of the tree as the destination saw it)."""
    old, new = smp.add_computer(), smp.add_computer()
    smp.associate(old, new)
    store = smp.request_capture(old)
    smp.as_uid(old, write_tree, store, random.Random(7).randbytes(BIG))
    smp.release_capture(old)
    expected = smp.as_uid(new, snapshot, store)
    shown = json.loads(smp.cli("key", "show", old.name, "--json").out)
    smp.umount()
    return shown["recovery_key"], Path(shown["store_path"]), expected, new, store


def _db(store_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(store_dir / "store.db", isolation_level=None)


def _ino_of_size(store_dir: Path, size: int) -> int:
    conn = _db(store_dir)
    try:
        return conn.execute("SELECT ino FROM inodes WHERE size=?", (size,)).fetchone()[0]
    finally:
        conn.close()


def _block_file(store_dir: Path, ino: int, blkno: int) -> Path:
    conn = _db(store_dir)
    try:
        (c,) = conn.execute("SELECT counter FROM blocks WHERE ino=? AND blkno=? AND data IS NULL",
                            (ino, blkno)).fetchone()
    finally:
        conn.close()
    return store_dir / "b" / f"{c & 0xFF:02x}" / f"{c:016x}"


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        c = f.read(1)
        f.seek(offset)
        f.write(bytes([c[0] ^ 0x20]))


def _flip_inline(store_dir: Path, ino: int) -> None:
    """Flip a byte of an inline block (sealed into store.db)."""
    conn = _db(store_dir)
    try:
        blkno, data = conn.execute("SELECT blkno, data FROM blocks WHERE ino=? AND data IS NOT NULL",
                                   (ino,)).fetchone()
        data = bytearray(data)
        data[len(data) // 2] ^= 0x01
        conn.execute("UPDATE blocks SET data=? WHERE ino=? AND blkno=?", (bytes(data), ino, blkno))
    finally:
        conn.close()


def _hashes(*roots: Path) -> dict:
    """Every file under ``roots``: its type, mode, size and content hash."""
    out = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                e = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_size)
                if stat.S_ISREG(st.st_mode):
                    with open(p, "rb") as f:
                        e += (hashlib.sha256(f.read()).hexdigest(),)
                out[p] = e
    return out


# -- recover: symlinks an attacker planted ------------------------------------------------

def test_recover_refuses_a_symlinked_outdir_and_writes_nothing_through_it(smp):
    key, store_dir, expected, _new, _store = _captured(smp)
    drop = smp.root / "drop"                           # a directory the attacker can write to
    drop.mkdir()
    os.chown(drop, ATTACKER, ATTACKER)
    victim = smp.root / "victim"                       # root's: must stay as it is
    victim.mkdir(mode=0o700)
    (victim / "keep").write_bytes(b"root's")
    empty_victim = smp.root / "empty-victim"
    empty_victim.mkdir(mode=0o700)

    def plant():
        os.symlink(empty_victim, drop / "out")         # an empty directory, through a symlink
        os.symlink(victim, drop / "full")
        os.symlink(smp.root / "not-yet", drop / "dangling")
    smp.as_uid(ATTACKER, plant)
    for name in ("out", "full", "dangling"):
        r = smp.cli("recover", "--key", key, store_dir, drop / name, check=False)
        assert r.code == 2, (name, r.code, r.err)
        assert "not a directory" in r.err or "not empty" in r.err, r.err
    assert os.listdir(empty_victim) == []
    assert os.listdir(victim) == ["keep"]
    for d in (victim, empty_victim):
        st = os.stat(d)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700), d
    assert not (smp.root / "not-yet").exists()

    # an empty directory the attacker made is taken over before use; the result is right
    smp.as_uid(ATTACKER, os.mkdir, str(drop / "theirs"))
    r = smp.cli("recover", "--key", key, store_dir, drop / "theirs")
    assert snapshot(drop / "theirs") == expected
    # a new OUTDIR is made by recover itself
    r = smp.cli("recover", "--key", key, store_dir, drop / "new" / "out")
    assert "into" in r.out and snapshot(drop / "new" / "out") == expected


# -- recover: read-only, from read-only media, honest about damage ------------------------

def test_recover_changes_nothing_and_works_from_read_only_media(smp):
    key, store_dir, expected, _new, _store = _captured(smp)
    folder = store_dir.parent
    (folder / ".smpfs-reserve").unlink(missing_ok=True)
    before = _hashes(folder)
    out = smp.root / "out"
    smp.cli("recover", "--key", key, store_dir, out)
    assert snapshot(out) == expected
    assert _hashes(folder) == before, "recover changed the storage folder"

    # the SMP is gone; its store is on a backup disk mounted read-only
    with loop_ext4(64) as (image, mnt):
        shutil.copytree(store_dir, mnt / store_dir.name, symlinks=True)
        umount(mnt)
        mount_read_only(image, mnt)
        r = smp.cli("recover", "--key", key, mnt / store_dir.name, smp.root / "from-backup", check=False)
        assert r.code == 0, r.err
        assert snapshot(smp.root / "from-backup") == expected


def test_recover_of_a_damaged_block_exits_20_and_names_the_file(smp):
    key, store_dir, expected, _new, _store = _captured(smp)
    ino = _ino_of_size(store_dir, BIG)
    _flip(_block_file(store_dir, ino, 1), 3 * 65_536 + 99)
    out = smp.root / "out"
    r = smp.cli("recover", "--key", key, store_dir, out, check=False)
    assert r.code == 20, (r.code, r.err)
    assert "USMT/USMT.MIG: not fully recovered" in r.err, r.err
    assert "1 item(s) not fully recovered" in r.err
    # no file presented as complete: what was readable is kept under another name
    assert not (out / "USMT" / "USMT.MIG").exists()
    got = (out / "USMT" / "USMT.MIG.damaged").read_bytes()
    want = random.Random(7).randbytes(BIG)
    assert len(got) == BIG and got[:MiB] == want[:MiB] and got[2 * MiB:] == want[2 * MiB:]
    assert got[MiB:2 * MiB] == bytes(MiB)
    assert stat.S_IMODE(os.stat(out / "USMT" / "USMT.MIG.damaged").st_mode) == 0o600
    # everything else is whole
    rest = {k: v for k, v in snapshot(out).items() if "USMT.MIG" not in k}
    assert rest == {k: v for k, v in expected.items() if "USMT.MIG" not in k}
    entries = [json.loads(line) for line in smp.cli("log", "--json").out.splitlines() if line.strip()]
    assert [e["outcome"] for e in entries if e["action"] == "recover"] == ["error"]


# -- fsck: --no-repair, --scrub, repairs ---------------------------------------------------

def test_fsck_no_repair_changes_nothing(smp):
    _key, store_dir, _expected, _new, _store = _captured(smp)
    folder = store_dir.parent
    (folder / ".smpfs-reserve").unlink(missing_ok=True)
    stray = store_dir / "b" / "ab" / f"{(1 << 40) + 0xab:016x}"   # a block file nothing points to
    stray.write_bytes(os.urandom(5000))
    before = _hashes(smp.state, folder)
    r = smp.cli("fsck", "--no-repair", "--json")
    assert any("1 orphan blocks" in f for f in json.loads(r.out)["findings"]), r.out
    r = smp.cli("fsck", "--no-repair", "--scrub", "--json")
    assert _hashes(smp.state, folder) == before, "fsck --no-repair changed something"
    smp.cli("fsck")
    assert not stray.exists()


def test_fsck_scrub_names_each_damaged_file(smp):
    _key, store_dir, expected, new, store = _captured(smp)
    r = smp.cli("fsck", "--scrub")
    assert r.err == "" and "0 finding(s)" in r.out          # piped: no progress line
    big = _ino_of_size(store_dir, BIG)
    hive = _ino_of_size(store_dir, len(b"registry hive\0" * 500))
    _flip(_block_file(store_dir, big, 0), 100)
    _flip_inline(store_dir, hive)
    conn = _db(store_dir)
    try:                                                    # and a byte of one sealed name
        empty_ino = conn.execute("SELECT ino FROM inodes WHERE mode=?", (stat.S_IFREG | 0o444,)).fetchone()[0]
        rid, name = conn.execute("SELECT id, name FROM dentries WHERE ino=?", (empty_ino,)).fetchone()
        conn.execute("UPDATE dentries SET name=? WHERE id=?", (bytes([name[0] ^ 1]) + name[1:], rid))
    finally:
        conn.close()
    assert smp.cli("fsck", "--no-repair").code == 0         # structure alone does not see it
    r = smp.cli("fsck", "--scrub", check=False)
    assert r.code == 20, (r.code, r.out, r.err)
    assert "/USMT/USMT.MIG: block 0:" in r.out, r.out
    assert "/USMT/profiles/alice/ntuser.dat: block 0:" in r.out, r.out
    assert "/USMT: the name of an entry" in r.out, r.out
    assert "3 problem(s) could not be repaired" in r.err
    assert "\r" not in r.err

    # on a terminal it shows its progress
    main, sub = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-m", "smpfs", "--state", str(smp.state), "fsck", "--scrub",
                              "--no-repair"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sub)
        os.close(sub)
        shown = b""
        while True:
            ready, _, _ = select.select([main], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(main, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        p.stdout.read()
        assert p.wait(60) == 20
    finally:
        os.close(main)
    assert b"scrubbing store 1/1" in shown, shown


def test_fsck_repairs_what_a_crash_leaves_and_the_store_reads_back(smp):
    key, store_dir, expected, new, store = _captured(smp)
    big = _ino_of_size(store_dir, BIG)
    hive = _ino_of_size(store_dir, len(b"registry hive\0" * 500))
    past = (1 << 40) + 0x1234                                # a counter far above any used
    shutil.copyfile(_block_file(store_dir, big, 1), store_dir / "b" / "34" / f"{past:016x}")
    stray = store_dir / "b" / "77" / f"{(1 << 40) + 0x77:016x}"
    stray.write_bytes(os.urandom(3000))
    tmp = store_dir / "b" / "77" / "leftover.tmp"
    tmp.write_bytes(b"half a block")
    conn = _db(store_dir)
    try:
        conn.execute("INSERT INTO dentries (parent, name, ino) VALUES (1, ?, 987654)", (os.urandom(40),))
        conn.execute("UPDATE inodes SET nlink=7 WHERE ino=?", (hive,))
        conn.execute("UPDATE inodes SET nlink=9 WHERE ino=1")
        cols = [r[1] for r in conn.execute("PRAGMA table_info(blocks)")]   # block 1's row, as block 5
        pick = ", ".join({"blkno": "5", "counter": str(past)}.get(c, c) for c in cols)
        conn.execute(f"INSERT INTO blocks SELECT {pick} FROM blocks WHERE ino=? AND blkno=1", (big,))
    finally:
        conn.close()
    r = smp.cli("fsck", "--json")
    findings = json.loads(r.out)["findings"]
    for kind in ("1 dangling entries", "2 link counts", "1 past eof blocks", "1 orphan blocks"):
        assert any(kind in f for f in findings), (kind, findings)
    assert not stray.exists() and not tmp.exists()
    assert not (store_dir / "b" / "34" / f"{past:016x}").exists()
    assert json.loads(smp.cli("fsck", "--no-repair", "--json").out)["findings"] == []
    conn = _db(store_dir)
    try:
        assert conn.execute("SELECT nlink FROM inodes WHERE ino=?", (hive,)).fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM dentries WHERE ino=987654").fetchone()[0] == 0
    finally:
        conn.close()
    smp.mount()
    assert smp.as_uid(new, snapshot, store) == expected
    smp.umount()
    r = smp.cli("recover", "--key", key, store_dir, smp.root / "out")
    assert snapshot(smp.root / "out") == expected


def test_recover_leaves_outdir_as_the_store_root_and_needs_read_access_to_the_store(smp):
    """What docs/admin.md and README say of OUTDIR and of who can recover, checked."""
    old, new = smp.add_computer(), smp.add_computer()
    smp.associate(old, new)
    store = smp.request_capture(old)
    smp.as_uid(old, os.chmod, store, 0o750)                 # as a migration tool may
    top = smp.as_uid(old, os.stat, store)
    smp.release_capture(old)
    shown = json.loads(smp.cli("key", "show", old.name, "--json").out)
    key, store_dir = shown["recovery_key"], Path(shown["store_path"])
    smp.umount()
    out = smp.root / "taken-over"
    out.mkdir()
    os.chown(out, ATTACKER, ATTACKER)
    os.chmod(out, 0o777)
    smp.cli("recover", "--key", key, store_dir, out)
    st = os.stat(out)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode))
    assert st.st_uid == old.uid and stat.S_IMODE(st.st_mode) == 0o750
    docs = (Path(__file__).resolve().parents[2] / "docs" / "admin.md").read_text()
    assert "(root, 0700) before writing" not in docs and "OUTDIR ends as the store's top directory was" in docs
    # a uid that has the key but cannot read the store directory (root's, 0700): a usage error saying so
    mine = smp.root / "mine"
    mine.mkdir()
    os.chown(mine, new.uid, 0)
    r = smp.cli("recover", "--key", key, store_dir, mine / "out", uid=new, check=False)
    assert r.code == 2 and "not readable" in r.err and key not in r.err, r.err
    assert stat.S_IMODE(os.stat(store_dir).st_mode) & 0o007 == 0
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "anyone with the key |" not in readme and "read access to the store directory" in readme
