"""The storage folder's minimum free space is enforced on every change that grows a store.

The storage folder is a 64 MiB tmpfs; the SMP keeps 16 MB of it free. A
writer filling its store gets ENOSPC before the folder goes under 16 MB,
a refused write changes nothing, what was written before stays intact, and
after files are deleted writing works again (at once, never EIO). A disk
filled by another program gives ENOSPC. On a 64 MiB ext4 holding the whole
SMP, xattrs, names, symlinks, directories and hard links stop at the floor
too, and the SMP's own database keeps room.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from loopdisk import loop_ext4

from smpfs.testing import SkipNoFuse, TestSmp, fuse_available, mounted

MiB = 1 << 20
MIN_FREE = 16_000_000
SLACK = 128 * 1024


@contextlib.contextmanager
def _tmpfs_smp(request, size: str, min_free: str):
    """A mounted SMP whose only storage folder is a tmpfs of ``size``; always torn down."""
    why = fuse_available()
    if why:
        pytest.skip(why)
    parent = Path(tempfile.mkdtemp(prefix="smpfs-enospc-"))
    os.chmod(parent, 0o711)
    folder = parent / "folder"
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode:
        shutil.rmtree(parent, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        with mounted(folder=folder, min_free=min_free) as s:
            request.node._smpfs = s
            yield s, folder
    except SkipNoFuse as e:
        pytest.skip(str(e))
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def small_smp(request):
    with _tmpfs_smp(request, "64m", "16MB") as s:
        yield s


@pytest.fixture
def full_smp(request):
    """A 32 MiB folder with a minimum of 1 MB, for someone else to fill."""
    with _tmpfs_smp(request, "32m", "1MB") as s:
        yield s


def _hog(folder: Path) -> Path:
    """Another program fills the storage folder's filesystem to the last byte."""
    p = folder / "not-smpfs-hog"
    with open(p, "wb") as f:
        try:
            while True:
                f.write(bytes(MiB))
        except OSError as e:
            assert e.errno == errno.ENOSPC
    for size in (65536, 4096, 512, 1):
        try:
            with open(p, "ab") as f:
                while True:
                    f.write(bytes(size))
                    f.flush()
        except OSError:
            pass
    return p


def _free(path) -> int:
    v = os.statvfs(path)
    return v.f_bavail * v.f_frsize


def _content(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


def test_min_free_space_gives_enospc_and_recovers(small_smp):
    smp, folder = small_smp
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))

    def before_full(s):
        for name, size in (("keep1", 8 * MiB), ("keep2", 3 * MiB + 12345)):
            with open(f"{s}/{name}", "wb") as f:
                f.write(_content(name, size))
                os.fsync(f.fileno())
    smp.as_uid(comp, before_full, store)
    assert _free(folder) > MIN_FREE + 20 * MiB

    def fill(s):
        """Write 100 kB at a time (not block-aligned: a partly filled block always
        waits in memory) until refused; return (bytes accepted, errno, statvfs avail)."""
        data = _content("filler", 64 * MiB)
        fd = os.open(f"{s}/filler", os.O_CREAT | os.O_WRONLY, 0o600)
        done, err = 0, None
        try:
            while done < len(data):
                try:
                    done += os.write(fd, data[done:done + 100_000])
                except OSError as e:
                    err = e.errno
                    break
            os.fsync(fd)
        finally:
            os.close(fd)
        v = os.statvfs(s)
        return done, err, v.f_bavail * v.f_frsize
    done, err, store_avail = smp.as_uid(comp, fill, store)
    assert err == errno.ENOSPC, f"expected ENOSPC, got {err and errno.errorcode[err]} after {done} bytes"
    # (slack: the filesystem's allocation granularity and sqlite's own pages, not user data)
    free = _free(folder)
    assert free >= MIN_FREE - SLACK, f"the folder went under its minimum free space: {free} bytes free"
    assert done >= 20 * MiB, f"refused too early: only {done} bytes accepted"
    assert store_avail <= 2 * MiB, f"statvfs in the store still shows {store_avail} bytes available"

    def when_full(s):
        out = {}
        # a new big file, and an overwrite of an existing block (copy-on-write needs room)
        try:
            with open(f"{s}/more", "wb") as f:
                f.write(b"m" * (2 * MiB))
            out["new"] = None
        except OSError as e:
            out["new"] = e.errno
        try:
            fd = os.open(f"{s}/keep1", os.O_WRONLY)
            try:
                os.pwrite(fd, b"X" * (2 * MiB), MiB)
            finally:
                os.close(fd)
            out["overwrite"] = None
        except OSError as e:
            out["overwrite"] = e.errno
        # what was written stays intact and readable
        out["keep1"] = open(f"{s}/keep1", "rb").read() == _content("keep1", 8 * MiB)
        out["keep2"] = open(f"{s}/keep2", "rb").read() == _content("keep2", 3 * MiB + 12345)
        out["filler"] = open(f"{s}/filler", "rb").read() == _content("filler", 64 * MiB)[:done]
        # metadata-only operations still work
        os.mkdir(f"{s}/dir")
        os.rename(f"{s}/dir", f"{s}/dir2")
        return out
    out = smp.as_uid(comp, when_full, store)
    assert out["new"] == errno.ENOSPC and out["overwrite"] == errno.ENOSPC, out
    assert out["keep1"] and out["keep2"] and out["filler"], out
    assert _free(folder) >= MIN_FREE - SLACK

    # free space: delete the filler; writing works again
    def after_rm(s):
        os.unlink(f"{s}/filler")
        data = _content("after", 12 * MiB)
        with open(f"{s}/after", "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        assert open(f"{s}/after", "rb").read() == data
        assert open(f"{s}/keep1", "rb").read() == _content("keep1", 8 * MiB)
    smp.as_uid(comp, after_rm, store)
    # and everything survives a remount
    smp.remount()
    assert smp.as_uid(comp, lambda: open(f"{store}/after", "rb").read()) == _content("after", 12 * MiB)
    assert smp.as_uid(comp, lambda: sorted(os.listdir(store))) == ["after", "dir2", "keep1", "keep2", "more"]
    assert smp.as_uid(comp, lambda: os.stat(f"{store}/more").st_size) == 0     # created; its write refused
    assert smp.as_uid(comp, lambda: open(f"{store}/keep1", "rb").read()) == _content("keep1", 8 * MiB)


# -- the disk filled by someone else --------------------------------------------------

def _log(smp) -> str:
    return (smp.state / "smpfs.log").read_text()


@pytest.mark.daemon_log(r"no room to commit \(its folder is full\)")
def test_disk_filled_by_another_program(full_smp):
    """When something else fills the disk, changes fail with ENOSPC (not EIO),
    what is stored stays readable, and the store works again once there is room."""
    smp, folder = full_smp
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))
    keep = _content("keep", 3 * MiB)

    def write_keep(s):
        with open(f"{s}/keep", "wb") as f:
            f.write(keep)
            os.fsync(f.fileno())
    smp.as_uid(comp, write_keep, store)
    hog = _hog(folder)

    def when_full(s):
        errs = set()
        for i in range(200):
            try:
                fd = os.open(f"{s}/new-{i:03d}-" + "n" * 200, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
                os.setxattr(s, f"user.k{i}", os.urandom(2000))
            except OSError as e:
                errs.add(errno.errorcode[e.errno])
        try:
            with open(f"{s}/keep", "r+b") as f:
                f.write(b"overwrite")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            errs.add(errno.errorcode[e.errno])
        return errs, open(f"{s}/keep", "rb").read() == keep
    errs, intact = smp.as_uid(comp, when_full, store)
    assert errs == {"ENOSPC"}, f"a full disk must give ENOSPC, got {sorted(errs)}"
    assert intact
    hog.unlink()

    def after(s):
        with open(f"{s}/after", "wb") as f:
            f.write(_content("after", 2 * MiB))
            os.fsync(f.fileno())
        os.mkdir(f"{s}/dir-after")
        dfd = os.open(s, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
    smp.as_uid(comp, after, store)                    # no error once there is room again
    checks = _log(smp).count("did not end cleanly")
    smp.remount()
    assert _log(smp).count("did not end cleanly") == checks, "the unmount after a full disk was not clean"
    got = smp.as_uid(comp, lambda: {n: open(f"{store}/{n}", "rb").read() for n in ("keep", "after")})
    assert got == {"keep": keep, "after": _content("after", 2 * MiB)}
    assert "dir-after" in smp.as_uid(comp, os.listdir, store)


def test_acknowledged_changes_survive_a_full_disk(full_smp):
    smp, folder = full_smp
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))

    def mkdirs(s):
        for i in range(300):
            os.mkdir(f"{s}/dir-{i:03d}-" + "y" * 200)
    smp.as_uid(comp, mkdirs, store)                   # returned 0, not yet committed
    hog = _hog(folder)                                # the disk fills before the batch commit
    time.sleep(2.5)                                   # the daemon's commit timer runs meanwhile
    hog.unlink()
    assert len(smp.as_uid(comp, os.listdir, store)) == 300
    smp.remount()
    assert len(smp.as_uid(comp, os.listdir, store)) == 300


def test_space_freed_by_rm_is_usable_at_once_while_blocks_wait_in_memory(small_smp):
    """At the minimum free space, with a partly written block still in memory
    and a deleted file's blocks waiting for a durable point: the next write
    makes that durable point without blocking the daemon and succeeds (never
    EIO); a write with no room at all gets ENOSPC."""
    smp, folder = small_smp
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))

    def at_the_floor(s):
        with open(f"{s}/old", "wb") as f:
            f.write(_content("old", 20 * MiB))
            os.fsync(f.fileno())
        data = _content("filler", 64 * MiB)
        fd = os.open(f"{s}/filler", os.O_CREAT | os.O_WRONLY, 0o600)
        done, first_err = 0, None
        try:
            while done < len(data):                  # 100 kB at a time: a partial block stays in memory
                try:
                    done += os.write(fd, data[done:done + 100_000])
                except OSError as e:
                    first_err = e.errno
                    break
            os.unlink(f"{s}/old")                    # its blocks wait for a durable point
            try:
                with open(f"{s}/new", "wb") as f:
                    f.write(_content("new", 3 * MiB + 7))
                    os.fsync(f.fileno())
                after_rm = None
            except OSError as e:
                after_rm = e.errno
            no_room = None
            try:                                     # and now there is no room at all
                while done < len(data):
                    done += os.write(fd, data[done:done + MiB])
            except OSError as e:
                no_room = e.errno
            os.fsync(fd)
        finally:
            os.close(fd)
        intact = (open(f"{s}/new", "rb").read() == _content("new", 3 * MiB + 7)
                  and open(f"{s}/filler", "rb").read() == data[:done])
        return first_err, after_rm, no_room, intact
    first_err, after_rm, no_room, intact = smp.as_uid(comp, at_the_floor, store)
    assert first_err == errno.ENOSPC
    assert after_rm is None, f"a write after rm at the floor failed with {errno.errorcode[after_rm]}"
    assert no_room == errno.ENOSPC, no_room and errno.errorcode[no_room]
    assert intact
    assert _free(folder) >= MIN_FREE - SLACK


# -- metadata respects the floor; the SMP keeps room for itself -------------------------------

def _until_refused(fn, limit: int):
    """Call fn(i) until it raises; return (calls that succeeded, errno)."""
    for i in range(limit):
        try:
            fn(i)
        except OSError as e:
            return i, e.errno
    return limit, None


def test_metadata_growth_stops_at_the_floor_and_the_smp_keeps_working():
    """706 x 64 KiB xattrs once filled a folder on the state dir's disk to 0 bytes,
    after which computer add, release capture and the audit log failed. On a
    64 MiB ext4 holding the whole SMP: xattrs, names, symlinks, directories and
    hard links all get ENOSPC at the floor, and the SMP keeps working."""
    why = fuse_available()
    if why:
        pytest.skip(why)
    with loop_ext4(64) as (_image, disk):
        root = disk / "smp"
        root.mkdir(mode=0o711)
        smp = TestSmp(root, min_free="1MB")
        try:
            smp.init()
            smp.mount()
            comp, other = smp.add_computer(), smp.add_computer()
            smp.associate(comp, other)
            store = str(smp.request_capture(comp))

            def flood(s):
                out = {}
                os.mkdir(f"{s}/x")
                for j in range(4):
                    open(f"{s}/x/f{j}", "wb").close()
                out["xattrs"] = _until_refused(
                    lambda i: os.setxattr(f"{s}/x/f{i // 300}", f"user.k{i}", os.urandom(65536)), 1200)
                out["dirs"] = _until_refused(lambda i: os.mkdir(f"{s}/d{i:05d}" + "d" * 200), 100_000)
                out["files"] = _until_refused(lambda i: open(f"{s}/n{i:05d}" + "n" * 200, "wb").close(), 100_000)
                out["symlinks"] = _until_refused(lambda i: os.symlink("t" * 4000, f"{s}/l{i:05d}"), 100_000)
                out["links"] = _until_refused(lambda i: os.link(f"{s}/x/f0", f"{s}/h{i:05d}" + "h" * 200),
                                              100_000)
                fd = os.open(s, os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(fd)                           # everything accepted is committed and durable
                os.close(fd)
                return out
            out = smp.as_uid(comp, flood, store)
            for what, (n, err) in out.items():
                assert err == errno.ENOSPC, (what, n, err and errno.errorcode[err])
            # refused near the floor, not long before it (the check counts store.db's whole
            # WAL as still to be copied into store.db: a few MB early on a disk this small)
            assert out["xattrs"][0] >= 150, out
            # the floor: the folder's 1 MB, raised to the state dir's reserve (5% of the disk)
            assert _free(disk) >= 2 * MiB, f"the disk went under the floor: {_free(disk)} bytes free"

            # the SMP's own database and log still have room
            late = smp.add_computer()
            smp.release_capture(comp)
            assert smp.status()["associations"]
            log = smp.cli("log", "--json").out
            assert '"release_capture"' in log and f'"{late.name}"' in log
            smp.umount()
        finally:
            smp.teardown()
