"""Retention through the real mount: deletion policies, deadlines crossed while
mounted and while unmounted, a daemon killed in the middle of a deletion, and
crypto-shredding that leaves nothing the SMP holds able to read old blocks.

The lifecycle layer's retention logic is unit-tested in tests/test_lifecycle.py;
these tests assert what users and admins see: stores vanishing from the mount,
open handles failing instead of serving old data, `smpfs status` and `smpfs log`.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smpfs.crypto import keys as keymod
from smpfs.testing import HeldFile as Held
from smpfs.testing import errname

# -- helpers -----------------------------------------------------------------------------


def migrate(smp, data: dict[str, bytes], release_restore: bool = True):
    """A side-by-side migration of ``data`` up to (by default including) the
    release of the restore. Returns (source, dest, store path)."""
    src, dst = smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    store = smp.request_capture(src)

    def write():
        for name, content in data.items():
            (store / name).write_bytes(content)
    smp.as_uid(src, write)
    smp.release_capture(src)
    assert smp.request_restore(dst) == store
    if release_restore:
        smp.release_restore(dst)
    return src, dst, store


def assoc(smp, source) -> dict:
    return next(a for a in smp.status()["associations"] if a["source"] == source.name)


def log_entries(smp) -> list[dict]:
    return [json.loads(line) for line in smp.cli("log", "--json").out.splitlines() if line.strip()]


def deletions(smp, store_id: str) -> list[dict]:
    return [e for e in log_entries(smp) if e["action"] == "delete" and e["store_id"] == store_id]


def folder_of(smp, store: Path) -> Path:
    share = store.parent.name
    return Path(next(f["path"] for f in smp.status()["folders"] if f"SMPSTORED_{f['share']}$" == share))


def assert_gone(smp, dest, store: Path) -> None:
    """The store is gone for good: not in the mount, not in its storage folder,
    nothing half-deleted left behind, and recorded as deleted."""
    assert smp.as_uid(dest, lambda: store.name in os.listdir(store.parent)) is False
    assert smp.as_uid(dest, errname, os.stat, store) == "ENOENT"
    folder = folder_of(smp, store)
    assert not (folder / store.name).exists()
    assert not list(folder.glob(".deleting-*"))


def assert_deleted_and_counted(smp, source, store: Path) -> dict:
    a = assoc(smp, source)
    assert a["status"] == "deleted" and a["store_id"] == store.name
    assert a["deleted_at"] is not None and a["bytes_freed"] > 0
    st = smp.status()
    assert st["deleted_bytes_total"] >= a["bytes_freed"]
    text = smp.cli("status").out
    assert "space freed by deletions: 0B" not in text and "deleted" in text
    (entry,) = [e for e in deletions(smp, store.name) if e["outcome"] == "ok"]
    assert entry["detail"]["bytes_freed"] == a["bytes_freed"]
    return entry


# -- the two policies -----------------------------------------------------------------------


def test_delete_immediately_after_restore(smp):
    out = smp.cli("config", "--delete-immediately").out
    assert "deletion:      immediately after restore" in out
    src, dst, store = migrate(smp, {"USMT.MIG": os.urandom(200_000)}, release_restore=False)
    with Held(dst.uid, store / "USMT.MIG") as reader:
        assert len(reader.do("pread", 4096, 0)) == 4096
        out = smp.cli("release", "restore", uid=dst).out
        assert out.strip() == f"Released restore of {dst.name}: store deleted (policy: delete immediately)"
        assert_gone(smp, dst, store)
        with pytest.raises(OSError):              # no data, cached or not, once the store is gone
            reader.do("pread", 4096, 0)
    entry = assert_deleted_and_counted(smp, src, store)
    assert entry["uid"] == dst.uid and "immediately" in entry["detail"]["reason"]
    r = smp.cli("request", "restore", uid=dst, check=False)
    assert r.code == 15 and "no state store is waiting" in r.err


def test_deadline_crossed_while_mounted(smp):
    smp.cli("config", "--delete-after", "30m")
    content = os.urandom(150_000)
    t = time.time()
    src, dst, store = migrate(smp, {"USMT.MIG": content, "other": b"x"})
    a = assoc(smp, src)
    assert a["retention_s"] == 1800 and a["delete_at"] == pytest.approx(t + 1800, abs=30)
    assert smp.status()["next_deadline"] == pytest.approx(a["delete_at"])

    with Held(dst.uid, store / "USMT.MIG") as reader:
        assert reader.do("pread", 1000, 0) == content[:1000]
        assert smp.advance("29m") == []                        # not yet: still there, still readable
        assert assoc(smp, src)["status"] == "restored"
        assert smp.as_uid(dst, lambda: (store / "USMT.MIG").read_bytes()) == content
        assert reader.do("pread", 1000, 100_000) == content[100_000:101_000]

        deleted = smp.advance("2m")                            # 31 minutes after the release
        assert [d["store_id"] for d in deleted] == [store.name] and deleted[0]["bytes_freed"] > 0
        assert_gone(smp, dst, store)
        for off in (0, 100_000):                               # cached and uncached pages alike
            with pytest.raises(OSError):
                reader.do("pread", 1000, off)
    entry = assert_deleted_and_counted(smp, src, store)
    assert entry["detail"]["reason"] == "retention"
    assert smp.status()["next_deadline"] is None


def test_open_handle_on_deleted_store_gets_eio(smp):
    """Open handles on a deleted store get EIO/ESTALE, not stale plaintext
    and not ENOENT (the file was not unlinked: its store was destroyed)."""
    src, dst, store = migrate(smp, {"USMT.MIG": b"state" * 1000})
    with Held(dst.uid, store / "USMT.MIG") as reader:
        assert reader.do("pread", 5, 0) == b"state"
        smp.advance("2d")
        with pytest.raises(OSError) as e:
            reader.do("pread", 5, 0)
        assert e.value.errno in (errno.EIO, errno.ESTALE)


def test_retention_run_while_mounted_prints_and_audits(smp):
    """`smpfs retention run` through the mounted daemon: root only, prints what it
    deleted, and the run and a refused attempt are both in the audit log."""
    src, dst, store = migrate(smp, {"USMT.MIG": b"x" * 5000})
    other = smp.add_computer()
    r = smp.cli("retention", "run", "--at", "+1h", uid=other, check=False)
    assert r.code == 7
    r = smp.cli("retention", "run", "--at", "+2d", check=False)
    assert r.code == 0, r.err
    assert f"deleted {store.name[:12]}… ({src.name} -> {dst.name}, retention)" in r.out
    assert "1 store(s) deleted; next deadline: -" in r.out
    runs = [(e["uid"], e["outcome"]) for e in log_entries(smp) if e["action"] == "retention_run"]
    assert (other.uid, "denied") in runs and (0, "ok") in runs


def test_policy_change_keeps_deadlines_and_the_daemon_deletes_on_time(smp):
    """The policy in force at the restore's release is recorded on the store: a
    later `config --delete-after` moves no deadline; `--reapply-retention` does,
    on purpose and audited. The daemon deletes on its own at the deadline."""
    smp.cli("config", "--delete-after", "12h")
    src1, dst1, s1 = migrate(smp, {"USMT.MIG": b"kept twelve hours" * 100})
    before = assoc(smp, src1)
    assert before["retention_s"] == 43200

    out = smp.cli("config", "--delete-after", "2s").out
    assert "deletion:      2s after restore" in out
    after = assoc(smp, src1)
    assert (after["delete_at"], after["retention_s"]) == (before["delete_at"], 43200)

    # a store released under the new policy: the daemon deletes it by itself,
    # with no command to wake it (only the storage folder is watched here)
    src2, dst2, s2 = migrate(smp, {"USMT.MIG": b"kept two seconds" * 100})
    released = assoc(smp, src2)["restore_released_at"]
    assert assoc(smp, src2)["delete_at"] == pytest.approx(released + 2)
    folder = folder_of(smp, s2)
    while (folder / s2.name).exists() and time.time() < released + 8:
        time.sleep(0.05)
    assert time.time() >= released + 2 - 0.5
    assert not (folder / s2.name).exists(), "the daemon did not delete the expired store on its own"
    # its sweep runs beside the filesystem: let it finish before looking at the records
    while assoc(smp, src2)["status"] != "deleted" and time.time() < released + 15:
        time.sleep(0.05)
    assert_gone(smp, dst2, s2)
    assert_deleted_and_counted(smp, src2, s2)
    # the first store keeps its twelve hours
    assert smp.as_uid(dst1, lambda: (s1 / "USMT.MIG").read_bytes()) == b"kept twelve hours" * 100
    assert assoc(smp, src1)["status"] == "restored"

    # reapplying the (now 1h) policy moves the deadline, audited
    out = smp.cli("config", "--delete-after", "1h", "--reapply-retention").out
    assert f"store {s1.name[:12]}…: delete at " in out
    moved = assoc(smp, src1)
    assert moved["retention_s"] == 3600
    assert moved["delete_at"] == pytest.approx(moved["restore_released_at"] + 3600)
    (e,) = [e for e in log_entries(smp) if e["action"] == "reapply_retention"]
    assert e["store_id"] == s1.name and e["detail"]["old_delete_at"] == pytest.approx(before["delete_at"])
    assert smp.advance("55m") == []
    assert [d["store_id"] for d in smp.advance("10m")] == [s1.name]     # long before the 12 hours
    assert_gone(smp, dst1, s1)


def test_deadline_crossed_while_unmounted(smp):
    """Nothing is deleted while unmounted unless an admin sweeps (`retention run`
    works without a mount); what expired meanwhile is deleted when the SMP is
    mounted again, before anyone can read it."""
    smp.cli("config", "--delete-after", "30m")
    src1, dst1, s1 = migrate(smp, {"USMT.MIG": b"one" * 1000})
    src2, dst2, s2 = migrate(smp, {"USMT.MIG": b"two" * 1000}, release_restore=False)
    src3, dst3, s3 = migrate(smp, {"USMT.MIG": b"three" * 1000}, release_restore=False)  # no deadline
    smp.umount()

    # an admin sweep with no mount, as if it were 31 minutes later
    out = smp.cli("retention", "run", "--at", "+31m").out
    assert f"deleted {s1.name[:12]}… ({src1.name} -> {dst1.name}, retention), freed " in out
    assert "1 store(s) deleted" in out
    assert assoc(smp, src1)["status"] == "deleted"

    # a restore released by root while unmounted, under a one-second policy
    smp.cli("config", "--delete-after", "1s")
    smp.cli("release", "restore", dst2.name)
    deadline = assoc(smp, src2)["delete_at"]
    time.sleep(max(0.0, deadline - time.time()) + 0.2)
    assert assoc(smp, src2)["status"] == "restored"        # unmounted: no daemon, no sweep
    assert (folder_of(smp, s2) / s2.name).is_dir()

    smp.mount()
    assert smp.as_uid(dst2, errname, os.listdir, s2) == "ENOENT"   # never served after its deadline
    assert_gone(smp, dst2, s2)
    assert_gone(smp, dst1, s1)
    entry = assert_deleted_and_counted(smp, src2, s2)
    assert entry["detail"]["reason"] == "retention"
    assert smp.as_uid(dst3, lambda: (s3 / "USMT.MIG").read_bytes()) == b"three" * 1000


# -- crash safety -------------------------------------------------------------------------------


@pytest.mark.daemon_log(r"fsck: ", r"did not end cleanly")
def test_kill_9_in_the_middle_of_a_deletion(smp):
    """A store of thousands of files is being deleted when the daemon is killed
    (SIGKILL): after the next mount it is gone completely and the other stores,
    one still being captured, are intact."""
    nfiles = 2500                  # 1500 with a block file of their own, 1000 small ones kept inline
    a, b = smp.add_computer(), smp.add_computer()
    smp.associate(a, b)
    store = smp.request_capture(a)

    def fill():
        os.mkdir(store / "files")
        for i in range(nfiles):
            with open(store / "files" / f"{i:05d}.dat", "wb") as f:
                f.write(i.to_bytes(4, "little") * (4500 if i < 1500 else 16))
    smp.as_uid(a, fill)
    smp.release_capture(a)
    smp.request_restore(b)
    smp.release_restore(b)
    keep_src, keep_dst, keep = migrate(smp, {"USMT.MIG": b"survivor" * 2000}, release_restore=False)
    capturing = smp.add_computer()
    cap = smp.request_capture(capturing)
    smp.as_uid(capturing, lambda: (cap / "part1").write_bytes(b"captured before the crash"))

    folder = folder_of(smp, store)
    dying = folder / f".deleting-{store.name}"
    pid = smp.daemon_pid()
    sweep = subprocess.Popen([sys.executable, "-m", "smpfs", "--state", str(smp.state), "retention", "run",
                              "--at", "+2d"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        limit = time.monotonic() + 20
        while not dying.exists() and time.monotonic() < limit:
            pass                                              # spin: the window is short
        assert dying.exists(), "the deletion never started"
        os.kill(pid, signal.SIGKILL)
        smp.kill()                                            # reap, clear the dead mount
    finally:
        out, err = sweep.communicate(timeout=30)
    assert sweep.returncode == 5 and "closed the connection without answering" in err
    # the kill landed mid-deletion: the key is already gone, some blocks are not
    assert dying.is_dir() and any(dying.rglob("*")), "the deletion finished before the kill"
    assert assoc(smp, a)["status"] == "deleting"
    r = smp.cli("key", "show", a.name, check=False)
    assert r.code == 15

    smp.mount()
    assert not dying.exists() and not (folder / store.name).exists()
    assert not list(folder.glob(".deleting-*"))
    assert_gone(smp, b, store)
    assert assoc(smp, a)["status"] == "deleted"
    assert any(e["detail"]["reason"] == "resumed" for e in deletions(smp, store.name))
    # the other stores are intact
    assert smp.as_uid(keep_dst, lambda: (keep / "USMT.MIG").read_bytes()) == b"survivor" * 2000
    assert assoc(smp, keep_src)["status"] == "restoring"
    assert smp.request_capture(capturing) == cap           # the capture goes on where it was
    smp.as_uid(capturing, lambda: (cap / "part2").write_bytes(b"and after"))
    smp.release_capture(capturing)
    assert smp.as_uid(capturing, lambda: [(cap / p).read_bytes() for p in ("part1", "part2")]) == \
        [b"captured before the crash", b"and after"]


def test_deleted_store_cannot_be_decrypted_by_anything_the_smp_holds(smp):
    """Crypto-shredding. Before deletion a backup of the store's directory is
    taken (block files, store.db), as a snapshot or backup tool would. After
    deletion the SMP's database holds no wrapped key for the store; neither the
    master key nor any data key the SMP still holds opens the copy. The only
    thing that still can is a recovery key someone saw before the deletion
    (`smpfs key show`, which is audited): deletion makes the SMP itself unable
    to read the data, it cannot take back a key an admin already wrote down."""
    smp.cli("config", "--delete-after", "1h")
    content = os.urandom((1 << 20) + 4321)                    # two blocks
    src, dst, store = migrate(smp, {"USMT.MIG": content}, release_restore=False)
    other_src, other_dst, other = migrate(smp, {"USMT.MIG": b"other" * 100}, release_restore=False)
    recovery_key = json.loads(smp.cli("key", "show", src.name, "--json").out)["recovery_key"]
    db = smp.state / "smp.db"

    def wrapped_keys() -> dict[str, bytes | None]:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return dict(conn.execute("SELECT store_id, wrapped_key FROM stores"))
    old_wrapped = wrapped_keys()[store.name]
    assert old_wrapped and len(old_wrapped) > 32

    backup = smp.root / "backup" / store.name
    shutil.copytree(folder_of(smp, store) / store.name, backup, symlinks=True)
    assert any(p.is_file() for p in (backup / "b").rglob("*"))  # the block files are in the copy

    smp.release_restore(dst)
    assert [d["store_id"] for d in smp.advance("2h")] == [store.name]
    assert_gone(smp, dst, store)

    held = wrapped_keys()
    assert held[store.name] is None and held[other.name] is not None
    for name in ("smp.db", "smp.db-wal"):
        path = smp.state / name
        if path.exists():
            assert old_wrapped not in path.read_bytes(), f"the shredded key is still in {name}"
    r = smp.cli("key", "show", src.name, check=False)
    assert r.code == 15 and "has no state store with a key" in r.err

    master = keymod.load_master_key(smp.state / keymod.MASTER_KEY_FILE)
    candidates = [master] + [keymod.unwrap(master, sid, w) for sid, w in held.items() if w is not None]
    for i, k in enumerate(candidates):
        r = smp.cli("recover", "--key", keymod.format_recovery_key(k), backup, smp.root / f"try{i}",
                    check=False)
        assert r.code == 4 and "that recovery key does not open this store" in r.err
        assert not any((smp.root / f"try{i}").glob("*"))

    smp.cli("recover", "--key", recovery_key, backup, smp.root / "with-the-old-key")
    assert (smp.root / "with-the-old-key" / "USMT.MIG").read_bytes() == content
    # the other store is untouched
    assert smp.as_uid(other_dst, lambda: (other / "USMT.MIG").read_bytes()) == b"other" * 100
