"""What a crash or an admin's slip leaves behind: a daemon killed outright,
an unmount aimed at another SMP's mount, a storage folder in the wrong place.
Each is detected, explained (exit code and hint) and cleared."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from smpfs.lifecycle.smp import daemon_alive, fuse_mounts
from smpfs.testing import mounted

DIRTY = r"the last mount did not end cleanly|fsck: |cleared the dead mount"


def kill_daemon(smp) -> None:
    """SIGKILL the daemon and leave everything as it is (dead mount, daemon.json,
    socket; the process may stay a zombie until init reaps it)."""
    os.kill(smp.daemon_pid(), signal.SIGKILL)
    deadline = time.monotonic() + 20
    while daemon_alive(smp.state) and time.monotonic() < deadline:     # the kernel drops its lock
        time.sleep(0.05)
    assert not daemon_alive(smp.state)


@pytest.mark.daemon_log(DIRTY)
def test_a_killed_daemon_is_not_reported_as_mounted_and_mount_recovers(smp):
    pc = smp.add_computer()
    store = smp.request_capture(pc)
    smp.as_uid(pc, lambda: (store / "f").write_bytes(b"kept"))
    time.sleep(6)                                   # a durable point
    kill_daemon(smp)
    assert str(smp.mountpoint) in fuse_mounts()     # the dead mount is still there
    st = smp.status()
    assert st["mountpoint"] is None and st["dead_mount"] == str(smp.mountpoint)
    text = smp.cli("status").out
    assert "not mounted" in text and "smpfs umount" in text
    # mount recovers by itself: clears the dead mount, checks the stores, serves
    r = smp.cli("mount", str(smp.mountpoint), check=False)
    assert r.code == 0 and "Traceback" not in r.err, r.err
    assert smp.status()["mountpoint"] == str(smp.mountpoint)
    assert smp.as_uid(pc, lambda: (store / "f").read_bytes()) == b"kept"
    # mounting again is refused: the live daemon holds the lock
    r = smp.cli("mount", str(smp.mountpoint), check=False)
    assert r.code == 5 and "already mounted" in r.err


@pytest.mark.daemon_log(DIRTY)
def test_umount_clears_the_mount_of_a_killed_daemon(smp):
    kill_daemon(smp)
    r = smp.cli("umount", str(smp.mountpoint), check=False)
    assert r.code == 0 and "cleared the dead mount" in r.err, (r.code, r.err)
    assert str(smp.mountpoint) not in fuse_mounts()
    assert not (smp.state / "daemon.json").exists() and not (smp.state / "control.sock").exists()
    assert smp.status()["dead_mount"] is None
    smp.mount()
    assert smp.status()["mountpoint"] == str(smp.mountpoint)


@pytest.mark.daemon_log(DIRTY)
def test_mount_after_a_killed_daemon_says_so_and_the_next_umount_unmounts_it(smp):
    kill_daemon(smp)
    r = smp.cli("mount", str(smp.mountpoint), check=False)
    assert r.code == 0, r.err
    lines = r.err.strip().splitlines()
    assert lines and all(line.startswith("smpfs mount: ") for line in lines), r.err
    assert f"cleared the dead mount it left at {smp.mountpoint}" in r.err
    pid = smp.daemon_pid()
    r = smp.cli("umount", str(smp.mountpoint), "--json")
    assert json.loads(r.out)["cleared_dead_mount"] is False and "cleared" not in r.err, (r.out, r.err)
    assert not smp.mounted and str(smp.mountpoint) not in fuse_mounts()
    last = (smp.state / "smpfs.log").read_text().rstrip().splitlines()[-1]
    assert f"INFO smpfs.mount.daemon: unmounted {smp.mountpoint}" in last, "the live daemon unmounted cleanly"
    assert pid != smp.daemon_pid()


def test_umount_of_a_live_daemon_whose_lock_file_was_removed_unmounts_it(smp):
    os.unlink(smp.state / "daemon.lock")             # "tidying" the state dir by hand
    st = smp.status()
    assert st["mountpoint"] == str(smp.mountpoint) and st["dead_mount"] is None, st
    pid = smp.daemon_pid()
    r = smp.cli("umount", str(smp.mountpoint), "--json", check=False)
    assert r.code == 0 and json.loads(r.out)["cleared_dead_mount"] is False, (r.out, r.err)
    assert not smp.mounted
    assert f"unmounted {smp.mountpoint}" in (smp.state / "smpfs.log").read_text()
    try:                                             # gone, or a zombie init has not reaped yet
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("Z", "gone"), f"the daemon still runs ({state})"
    smp.mount()                                      # and it mounts again (a new lock file)
    assert smp.status()["mountpoint"] == str(smp.mountpoint)


def test_umount_with_another_smps_state_leaves_that_mount_alone(smp):
    with mounted() as other:
        t = time.monotonic()
        r = smp.cli("umount", str(other.mountpoint), check=False)
        assert r.code == 6 and "not the mount of the SMP" in r.err and "hint:" in r.err, r.err
        assert time.monotonic() - t < 10
        assert other.status()["mountpoint"] == str(other.mountpoint)
        assert os.path.ismount(other.mountpoint) and os.listdir(other.mountpoint)
        assert smp.status()["mountpoint"] == str(smp.mountpoint)
        r = smp.cli("umount", str(smp.root / "nowhere"), check=False)
        assert r.code == 6 and f"mounted at {smp.mountpoint}" in r.err


def _bounded(smp, *args, timeout: float = 30):
    """``smpfs --state STATE --json ARGS`` as root in a process of its own, bounded:
    (exit code, result or error object), or None if it did not answer in time."""
    try:
        r = subprocess.run([sys.executable, "-m", "smpfs", "--state", str(smp.state), "--json", *map(str, args)],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    try:
        return r.returncode, json.loads(r.stderr)["error"] if r.returncode else json.loads(r.stdout)
    except ValueError:
        return r.returncode, {"stdout": r.stdout, "stderr": r.stderr}


def test_a_storage_folder_on_an_smpfs_mount_is_refused_without_a_hang(smp):
    share = next(p.name for p in smp.mountpoint.iterdir())
    (smp.root / "to-mount").symlink_to(smp.mountpoint)
    stuck = False

    def bounded(*args):
        nonlocal stuck
        got = _bounded(smp, *args)
        if got is None:
            stuck = True
            pytest.fail(f"smpfs {' '.join(map(str, args))} did not answer in 30 s (the daemon waits on itself)")
        return got

    try:
        with mounted() as other:
            cases = [(smp.mountpoint / share / "new", "this SMP's own mount"),
                     (smp.mountpoint, "this SMP's own mount"),
                     (smp.root / "to-mount" / "x", "this SMP's own mount"),
                     (other.mountpoint / "x", "another SMP's")]
            for path, words in cases:
                code, err = bounded("folder", "add", path)
                assert code == 2 and err["class"] == "UsageError" and words in err["message"], (path, err)
                assert "outside" in err["hint"], err
            # nothing was recorded or created, and the daemon still serves
            code, listed = bounded("folder", "list")
            assert code == 0 and [f["path"] for f in listed] == [str(smp.state / "store")], listed
            assert not (smp.mountpoint / share / "new").exists()
            pc = smp.add_computer()
            store = smp.request_capture(pc)
            smp.as_uid(pc, lambda: (store / "f").write_bytes(b"still served"))
            assert other.status()["mountpoint"] == str(other.mountpoint)
    finally:
        if stuck:          # a daemon waiting on its own mount: only ending the connection frees it
            smp.kill()


def test_fsck_while_mounted_and_umount_twice_say_what_to_do(smp):
    r = smp.cli("fsck", check=False)
    assert r.code == 5, r.err
    assert f"  hint: unmount it first: smpfs umount {smp.mountpoint}\n" in r.err, r.err
    smp.umount()
    try:
        r = smp.cli("umount", str(smp.mountpoint), check=False)
        assert r.code == 6 and r.err.startswith(f"smpfs: {smp.mountpoint} is not mounted"), r.err
        assert "not mounted (it is not mounted)" not in r.err and r.err.count("not mounted") == 1, r.err
    finally:
        smp.mount()
