"""The SMP lifecycle end to end: the CLI as real computer uids, the real mount.

Capture -> release -> restore -> release side by side and in place, every
refusal with its message and exit code, storage folder selection and retries,
and recovery of a store with nothing but its recovery key. What the access
table says operation by operation is tests/test_privilege.py's business; these
tests follow whole migrations and assert what a task sequence or an admin sees.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from smpfs.testing import HeldFile as Held
from smpfs.testing import errname

# -- helpers -----------------------------------------------------------------------------


def write_tree(root: Path, big: bytes) -> None:
    """What a USMT capture might leave: nested dirs, a multi-block file, odd modes,
    a symlink, a hard link, xattrs, explicit times (run as the source uid)."""
    os.makedirs(root / "USMT" / "profiles" / "alice")
    (root / "USMT" / "USMT.MIG").write_bytes(big)
    secret = root / "USMT" / "profiles" / "alice" / "ntuser.dat"
    secret.write_bytes(b"registry hive\0" * 500)
    os.chmod(secret, 0o600)
    (root / "USMT" / "empty").write_bytes(b"")
    os.chmod(root / "USMT" / "empty", 0o444)
    os.setxattr(root / "USMT" / "USMT.MIG", "user.usmt.version", b"10.0.22621")
    os.setxattr(root / "USMT" / "USMT.MIG", "user.empty", b"")
    os.symlink("profiles/alice/ntuser.dat", root / "USMT" / "hive-link")
    os.symlink("/nowhere/dangling", root / "USMT" / "dangling")
    os.link(secret, root / "USMT" / "ntuser.hardlink")
    os.mkfifo(root / "USMT" / "pipe", 0o640)
    os.chmod(root / "USMT" / "profiles", 0o750)
    os.utime(secret, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    os.utime(root / "USMT" / "hive-link", ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_001),
             follow_symlinks=False)
    os.utime(root / "USMT" / "profiles" / "alice", ns=(1_300_000_000_000_000_000,) * 2)
    os.utime(root / "USMT" / "profiles", ns=(1_300_000_000_000_000_002,) * 2)


def snapshot(root) -> dict:
    """Everything a restore depends on, per path: type, mode, owner, size, mtime,
    content hash, link target, xattrs, and which paths are one inode."""
    root = Path(root)
    out, first_of = {}, {}
    paths = sorted(p for p in root.rglob("*"))
    for p in paths:
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        e = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
             "mtime_ns": st.st_mtime_ns, "xattrs": {}}
        if not stat.S_ISDIR(st.st_mode):
            e["size"] = st.st_size
            e["nlink"] = st.st_nlink
        if stat.S_ISREG(st.st_mode):
            e["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
            e["same_inode_as"] = first_of.setdefault(st.st_ino, rel)
        if stat.S_ISLNK(st.st_mode):
            e["target"] = os.readlink(p)
        else:
            e["xattrs"] = {n: os.getxattr(p, n) for n in sorted(os.listxattr(p))}
        out[rel] = e
    return out


def log_entries(smp) -> list[dict]:
    return [json.loads(line) for line in smp.cli("log", "--json").out.splitlines() if line.strip()]


def refused(smp, *args, uid=None):
    """Run a CLI command that must fail; returns (exit code, stderr)."""
    r = smp.cli(*args, uid=uid, check=False)
    assert r.out == "" or r.code == 0, r.out        # refusals print nothing on stdout
    return r.code, r.err


def assoc_of(smp, source) -> dict:
    return next(a for a in smp.status()["associations"] if a["source"] == source.name)


def share_of(store: Path) -> str:
    return store.parent.name


# -- the whole flow ----------------------------------------------------------------------


def test_side_by_side_capture_release_restore_release(smp):
    old, new, other = smp.add_computer(), smp.add_computer(), smp.add_computer()
    smp.associate(old, new)
    big = random.Random(4).randbytes((2 << 20) + 12345)      # three blocks, the last partial

    # Request State Store (capture), as the old computer: the path of a store it owns
    store = smp.request_capture(old)
    assert store.parent.parent == smp.mountpoint and share_of(store).startswith("SMPSTORED_")
    assert smp.as_uid(old, lambda: os.stat(store).st_uid) == old.uid
    a = assoc_of(smp, old)
    assert (a["dest"], a["migration_type"], a["status"]) == (new.name, "side-by-side", "capturing")
    assert a["unc"] == "\\\\SMPTEST\\" + share_of(store) + "\\" + store.name
    assert smp.cli("request", "capture", "--unc", uid=old).out.strip() == a["unc"]
    assert smp.as_uid(new, errname, os.listdir, store) == "EACCES"      # not the destination's yet

    smp.as_uid(old, write_tree, store, big)
    # a scanstate still writing its log when the task sequence releases the store
    with Held(old.uid, store / "USMT" / "scanstate.log", os.O_WRONLY | os.O_CREAT) as log:
        assert log.do("pwrite", b"written before release\n", 0) == 23
        written = smp.as_uid(old, snapshot, store)
        assert written["USMT/USMT.MIG"]["sha256"] == hashlib.sha256(big).hexdigest()
        smp.release_capture(old)
        assert log.errname("pwrite", b"written after release\n", 23) == "EROFS"
        assert log.errname("fsync") == "ok"                 # nothing pending: it was all kept

    # the source is locked out of what it captured
    assert smp.as_uid(old, lambda: [errname(os.listdir, store),
                                    errname(os.stat, store / "USMT" / "USMT.MIG"),
                                    errname(open, store / "USMT" / "USMT.MIG", "rb"),
                                    errname(open, store / "USMT" / "new", "wb")]) == ["EACCES"] * 4
    assert assoc_of(smp, old)["status"] == "captured"

    # Request State Store (restore), as the new computer: the same store, now its own, read-only
    assert smp.request_restore(new) == store
    assert assoc_of(smp, old)["status"] == "restoring"
    assert smp.as_uid(new, lambda: os.stat(store).st_uid) == new.uid
    seen = smp.as_uid(new, snapshot, store)
    assert seen["USMT/scanstate.log"]["size"] == 23
    assert smp.as_uid(new, lambda: (store / "USMT" / "scanstate.log").read_bytes()) \
        == b"written before release\n"
    assert seen == written                                  # byte-identical, modes and all
    assert seen["USMT/profiles/alice/ntuser.dat"]["mode"] == oct(stat.S_IFREG | 0o600)

    u = store / "USMT"
    changes = {
        "open for writing": lambda: os.open(u / "USMT.MIG", os.O_WRONLY),
        "open read-write": lambda: os.open(u / "USMT.MIG", os.O_RDWR),
        "open O_TRUNC": lambda: os.open(u / "USMT.MIG", os.O_RDONLY | os.O_TRUNC),
        "append": lambda: os.open(u / "USMT.MIG", os.O_WRONLY | os.O_APPEND),
        "create": lambda: os.open(u / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        "create in store root": lambda: os.open(store / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        "mkdir": lambda: os.mkdir(u / "newdir"),
        "mkfifo": lambda: os.mkfifo(u / "newpipe"),
        "symlink": lambda: os.symlink("x", u / "newlink"),
        "link": lambda: os.link(u / "USMT.MIG", u / "newhard"),
        "unlink": lambda: os.unlink(u / "USMT.MIG"),
        "unlink symlink": lambda: os.unlink(u / "hive-link"),
        "rmdir": lambda: os.rmdir(u / "profiles" / "alice"),
        "rename": lambda: os.rename(u / "USMT.MIG", u / "renamed"),
        "rename dir": lambda: os.rename(u / "profiles", store / "profiles"),
        "truncate": lambda: os.truncate(u / "USMT.MIG", 0),
        "chmod": lambda: os.chmod(u / "USMT.MIG", 0o777),
        "chown to self": lambda: os.chown(u / "USMT.MIG", new.uid, new.uid),
        "utime": lambda: os.utime(u / "USMT.MIG", (0, 0)),
        "setxattr": lambda: os.setxattr(u / "USMT.MIG", "user.x", b"1"),
        "removexattr": lambda: os.removexattr(u / "USMT.MIG", "user.usmt.version"),
    }
    result = smp.as_uid(new, lambda: {k: errname(fn) for k, fn in changes.items()})
    assert result == dict.fromkeys(changes, "EROFS")
    assert smp.as_uid(new, snapshot, store) == written     # and nothing changed
    # nobody else, root included, reads it
    assert smp.as_uid(other, errname, os.listdir, store) == "EACCES"
    assert errname(os.listdir, store) == "EACCES"

    # Release State Store (restore): restored, kept until the policy's deadline (default 1 day)
    out = smp.cli("release", "restore", uid=new).out
    assert out.startswith(f"Released restore of {new.name}: store kept until ")
    a = assoc_of(smp, old)
    assert a["status"] == "restored" and a["retention_s"] == 86400
    assert a["delete_at"] == pytest.approx(a["restore_released_at"] + 86400)
    # until then a re-run restore finds the same store and reads it
    assert smp.request_restore(new) == store
    assert smp.as_uid(new, lambda: (store / "USMT" / "USMT.MIG").read_bytes()) == big
    actions = [(e["action"], e["outcome"], e["uid"]) for e in log_entries(smp)]
    for step in [("request_capture", "ok", old.uid), ("release_capture", "ok", old.uid),
                 ("request_restore", "ok", new.uid), ("release_restore", "ok", new.uid)]:
        assert step in actions


def test_in_place_refresh(smp):
    """Refresh (wipe and load): the computer is its own destination; after the
    capture's release it may read its state back but change nothing."""
    pc = smp.add_computer()
    store = smp.request_capture(pc)                         # no association: in-place is created
    a = assoc_of(smp, pc)
    assert (a["source"], a["dest"], a["migration_type"], a["status"]) == \
        (pc.name, pc.name, "in-place", "capturing")
    data = os.urandom(300_000)
    smp.as_uid(pc, lambda: (store / "USMT.MIG").write_bytes(data))
    smp.release_capture(pc)

    assert smp.request_restore(pc) == store
    assert smp.as_uid(pc, lambda: (store / "USMT.MIG").read_bytes()) == data
    assert smp.as_uid(pc, lambda: [errname(open, store / "USMT.MIG", "r+b"),
                                   errname(open, store / "new", "wb"),
                                   errname(os.unlink, store / "USMT.MIG"),
                                   errname(os.mkdir, store / "d")]) == ["EROFS"] * 4
    smp.release_restore(pc)
    assert assoc_of(smp, pc)["status"] == "restored"
    assert smp.as_uid(pc, lambda: (store / "USMT.MIG").read_bytes()) == data


def test_source_read_handle_held_across_release_is_cut_off(smp):
    """Pages the source read while capturing must not be served from the kernel's
    cache to its still-open handle once the capture is released."""
    old, new = smp.add_computer(), smp.add_computer()
    smp.associate(old, new)
    store = smp.request_capture(old)
    smp.as_uid(old, lambda: (store / "USMT.MIG").write_bytes(b"user state " * 1000))
    with Held(old.uid, store / "USMT.MIG", os.O_RDONLY) as reader:
        assert reader.do("pread", 11, 0) == b"user state "
        smp.release_capture(old)
        assert reader.errname("pread", 11, 0) == "EACCES"


# -- refusals ------------------------------------------------------------------------------


def test_capture_and_restore_refusals(smp):
    old, new = smp.add_computer(), smp.add_computer()
    smp.associate(old, new)

    # unknown computers: named by root, or a uid no computer is mapped to
    code, err = refused(smp, "request", "capture", "NO-SUCH-PC")
    assert code == 10 and "smpfs: unknown computer 'NO-SUCH-PC'" in err and "smpfs computer add" in err
    stranger = old.uid + 7919
    code, err = refused(smp, "request", "capture", uid=stranger)
    assert code == 10 and f"uid {stranger} is not mapped to any computer" in err
    # root must say for which computer
    code, err = refused(smp, "request", "capture")
    assert code == 2 and "name the computer" in err

    # nothing captured: nothing to release, nothing to restore
    code, err = refused(smp, "release", "capture", uid=old)
    assert code == 14 and f"{old.name} has no capture to release" in err
    code, err = refused(smp, "request", "restore", uid=new)
    assert code == 15 and f"no state store is waiting for {new.name}" in err

    store = smp.request_capture(old)
    # a retried task sequence step gets the same store, not a second one
    assert smp.request_capture(old) == store
    assert smp.cli("request", "capture", old.name.lower(), uid=old).out.strip() == str(store)
    assert assoc_of(smp, old)["stores"] == 1

    # restore before the capture's release
    code, err = refused(smp, "request", "restore", uid=new)
    assert code == 13 and "is not released yet" in err and f"release capture {old.name}" in err
    code, err = refused(smp, "release", "restore", uid=new)
    assert code == 14 and f"{new.name} has no restore to release" in err

    smp.release_capture(old)
    code, err = refused(smp, "release", "capture", uid=old)
    assert code == 14 and "already captured" in err
    # a new capture while the previous one still waits for its restore
    code, err = refused(smp, "request", "capture", uid=old)
    assert code == 13 and "not yet restored" in err

    # restore-only mode: no new captures, restores continue
    smp.cli("config", "--restore-only", "on")
    assert smp.status()["settings"]["restore_only"] is True
    late = smp.add_computer()
    code, err = refused(smp, "request", "capture", uid=late)
    assert code == 11 and "restore-only mode" in err and "--restore-only off" in err
    assert smp.request_restore(new) == store
    smp.release_restore(new)
    code, err = refused(smp, "request", "capture", uid=old)  # old's store is restored: only the mode stops it
    assert code == 11
    smp.cli("config", "--restore-only", "off")
    assert smp.request_capture(late).parent == store.parent

    # every refusal is in the audit log, with who asked
    errors = {(e["action"], e["uid"], e["detail"].get("error")) for e in log_entries(smp)
              if e["outcome"] != "ok"}
    assert ("request_capture", stranger, "UnknownComputer") in errors
    assert ("request_restore", new.uid, "CaptureInProgress") in errors
    assert ("release_capture", old.uid, "NothingToRelease") in errors
    assert ("request_capture", late.uid, "RestoreOnlyMode") in errors


def test_computers_act_only_for_themselves_and_admin_is_root(smp):
    old, new, other = smp.add_computer(), smp.add_computer(), smp.add_computer()
    smp.associate(old, new)
    # naming another computer is refused, whichever step
    for step in (("request", "capture"), ("release", "capture"), ("request", "restore"),
                 ("release", "restore")):
        code, err = refused(smp, *step, new.name, uid=old)
        assert code == 7 and f"uid {old.uid} is computer {old.name} and cannot act for {new.name}" in err
    assert assoc_of(smp, old)["status"] == "not started"
    store = smp.request_capture(old)
    code, err = refused(smp, "release", "capture", old.name, uid=other)
    assert code == 7
    assert assoc_of(smp, old)["status"] == "capturing"

    admin = [("computer", "add", "EVIL", "--uid", "4242"), ("computer", "list"),
             ("computer", "remove", new.name), ("associate", other.name, new.name),
             ("association", "list"), ("association", "remove", old.name, new.name, "--force"),
             ("config",), ("config", "--restore-only", "on"), ("config", "--delete-immediately"),
             ("folder", "add", str(smp.root / "f2")), ("folder", "list"),
             ("key", "show", old.name), ("status",), ("log",), ("retire", "--yes")]
    for args in admin:
        code, err = refused(smp, *args, uid=other)
        assert code == 7 and "is for the SMP admin (root)" in err, args
    code, err = refused(smp, "retention", "run", "--at", "+30d", uid=other)
    assert code == 7 and "is for the SMP admin (root)" in err
    # nothing changed
    st = smp.status()
    assert st["settings"]["restore_only"] is False and st["settings"]["delete_after_s"] == 86400
    assert [c["name"] for c in st["computers"]] == sorted([old.name, new.name, other.name])
    assert assoc_of(smp, old)["status"] == "capturing" and len(st["folders"]) == 1
    assert not (smp.root / "f2").exists()
    smp.as_uid(old, lambda: (store / "still-mine").write_bytes(b"ok"))
    # a uid's refusals beyond ten a minute are counted in one "refusals" row
    denied = [(e["action"], e["uid"]) for e in log_entries(smp) if e["outcome"] == "denied"]
    denied += [(a, e["uid"]) for e in log_entries(smp) if e["action"] == "refusals"
               for a in e["detail"]["actions"]]
    assert ("request_capture", old.uid) in denied and ("release_capture", other.uid) in denied
    for action in ("computer_add", "associate", "association_remove", "config", "key_show", "retire"):
        assert (action, other.uid) in denied


# -- storage folders -------------------------------------------------------------------------


def test_folder_selection_full_folders_and_retries(smp):
    small = smp.root / "small"                     # a tmpfs of 4 MB: little free space
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0711", "smpfs-test", str(small)], check=True)
    try:
        default = smp.status()["folders"][0]["path"]
        smp.cli("folder", "remove", default)
        big, full = smp.root / "big", smp.root / "full"
        smp.cli("folder", "add", small, "--max-clients", "1", "--min-free", "1MB")
        smp.cli("folder", "add", big, "--max-clients", "1", "--min-free", "1MB")
        smp.cli("folder", "add", full, "--min-free", "99%")
        folders = {f["path"]: f for f in json.loads(smp.cli("folder", "list", "--json").out)}
        assert set(folders) == {str(small), str(big), str(full)}
        assert folders[str(full)]["has_room"] is False
        assert any("needs more than 99%" in r for r in folders[str(full)]["full_reasons"])
        assert folders[str(big)]["free_bytes"] > folders[str(small)]["free_bytes"]
        share = {p: f"SMPSTORED_{f['share']}$" for p, f in folders.items()}

        a, b, c, d = (smp.add_computer() for _ in range(4))
        # most free space first (big was added after small; full has as much space but no room)
        sa = smp.request_capture(a)
        assert share_of(sa) == share[str(big)] and (big / sa.name / "store.db").is_file()
        # big is at its maximum clients: the next one goes to small
        sb = smp.request_capture(b)
        assert share_of(sb) == share[str(small)] and (small / sb.name / "store.db").is_file()
        smp.as_uid(b, lambda: (sb / "f").write_bytes(b"on tmpfs"))
        folders = {f["path"]: f for f in json.loads(smp.cli("folder", "list", "--json").out)}
        assert [folders[str(p)]["clients"] for p in (big, small, full)] == [1, 1, 0]

        # nothing has room: retried N times, S seconds apart, then refused
        t = time.monotonic()
        code, err = refused(smp, "request", "capture", "--retries", "2", "--retry-delay", "0.5", uid=c)
        waited = time.monotonic() - t
        assert code == 12 and "no storage folder has room" in err
        assert f"{big}: 1/1 clients" in err and f"{small}: 1/1 clients" in err and f"{full}: " in err
        assert 1.0 <= waited < 2.5, waited
        assert c.name not in [x["source"] for x in smp.status()["associations"]]

        # room appears while a request retries: it gets a store, and the SMP
        # served the admin meanwhile
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            t = time.monotonic()
            pending = pool.submit(smp.cli, "request", "capture", "--retries", "8", "--retry-delay", "0.4",
                                  uid=d, check=False)
            time.sleep(0.6)
            assert not pending.done()
            smp.cli("association", "remove", a.name, a.name, "--force")   # a's store is deleted
            r = pending.result(timeout=20)
            waited = time.monotonic() - t
        assert r.code == 0, r.err
        sd = Path(r.out.strip())
        assert share_of(sd) == share[str(big)] and 0.6 <= waited < 3, waited
        # a's store was deleted once, for the reason the admin gave
        assert [(e["store_id"], e["detail"]["reason"]) for e in log_entries(smp) if e["action"] == "delete"] \
            == [(sa.name, "association removed")]
        assert smp.as_uid(b, lambda: (sb / "f").read_bytes()) == b"on tmpfs"
    finally:
        if smp.mounted:
            smp.umount()
        if subprocess.run(["umount", str(small)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(small)], capture_output=True)


# -- recovery with only the key ------------------------------------------------------------------


def test_recover_with_only_the_key(smp):
    old, new = smp.add_computer(), smp.add_computer()
    smp.associate(old, new)
    store = smp.request_capture(old)
    big = random.Random(7).randbytes((1 << 20) * 2 + 999)
    smp.as_uid(old, write_tree, store, big)
    smp.release_capture(old)
    expected = smp.as_uid(new, snapshot, store)
    assert expected["USMT/profiles/alice/ntuser.dat"]["same_inode_as"] == "USMT/ntuser.hardlink"
    assert expected["USMT/USMT.MIG"]["xattrs"] == {"user.empty": b"", "user.usmt.version": b"10.0.22621"}

    # the recovery key: root only, audited, never logged
    out = smp.cli("key", "show", old.name).out
    key_text = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("recovery key:"))
    shown = json.loads(smp.cli("key", "show", old.name, "--json").out)
    assert shown["recovery_key"] == key_text and shown["store_id"] == store.name
    store_dir = Path(shown["store_path"])
    assert store_dir.name == store.name and (store_dir / "store.db").is_file()
    code, err = refused(smp, "key", "show", old.name, uid=new)
    assert code == 7

    smp.umount()
    code, err = refused(smp, "request", "restore", uid=new)
    assert code == 6 and "not mounted" in err

    # the SMP is gone: only a copy of the store's directory and the key are left
    aside = smp.root / "aside"
    shutil.copytree(store_dir, aside / store.name, symlinks=True)
    gone = smp.root / "state.gone"
    os.rename(smp.state, gone)
    try:
        outdir = smp.root / "recovered"
        r = smp.cli("recover", "--key", key_text, aside / store.name, outdir)
        assert f"into {outdir}" in r.out
        assert snapshot(outdir) == expected
        assert (outdir / "USMT" / "USMT.MIG").read_bytes() == big
        assert stat.S_ISFIFO(os.lstat(outdir / "USMT" / "pipe").st_mode)

        wrong = "-".join(os.urandom(4).hex().upper() for _ in range(8))
        code, err = refused(smp, "recover", "--key", wrong, aside / store.name, smp.root / "wrong")
        assert code == 4 and "that recovery key does not open this store" in err
        assert not any((smp.root / "wrong").glob("*"))
        code, err = refused(smp, "recover", "--key", "0123-4567", aside / store.name, smp.root / "bad")
        assert code == 4 and "not a recovery key" in err
        code, err = refused(smp, "recover", "--key", key_text, aside / store.name, outdir)
        assert code == 2 and "is not empty" in err
    finally:
        os.rename(gone, smp.state)

    # with the SMP there, every use (and misuse) of a key is audited
    smp.cli("recover", "--key", key_text, store_dir, smp.root / "again")
    refused(smp, "recover", "--key", wrong, store_dir, smp.root / "wrong2")
    entries = log_entries(smp)
    assert any(e["action"] == "key_show" and e["store_id"] == store.name and e["uid"] == 0 for e in entries)
    rec = [e for e in entries if e["action"] == "recover" and e["store_id"] == store.name]
    assert [e["outcome"] for e in rec] == ["ok", "error"]
    assert key_text not in smp.cli("log", "--json").out
    assert key_text.replace("-", "").lower() not in smp.cli("log", "--json").out.lower()
