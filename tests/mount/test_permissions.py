"""Inside a store, the computer's processes meet the permission rules of ext4.

Every rule is tried as the capturing computer's uid through a real mount,
without capabilities and then with the one capability that lifts it
(``CAP_CHOWN``, ``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``, ``CAP_FOWNER``,
``CAP_FSETID``, ``CAP_MKNOD``), in a child forked as that uid that keeps the
capability effective (``smpfs.testing.as_uid(..., caps=)``). Files owned by
other uids are made the way a capture tool makes them: by a process of the
computer holding ``CAP_CHOWN``.
"""
from __future__ import annotations

import os
import stat

import pytest

from smpfs.testing import errname

CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID = (1 << n for n in range(5))
CAP_MKNOD = 1 << 27
OTHER = 64000           # a uid with no store: owner of files inside the store
OTHER_GID = 64001


@pytest.fixture(scope="module")
def msmp(smp_module):
    return smp_module


class Store:
    def __init__(self, smp, comp, path):
        self.smp, self.comp, self.path = smp, comp, str(path)

    def __call__(self, fn, *args, caps: int = 0, groups=()):
        """``fn(store_path, *args)`` as the computer, holding ``caps``."""
        return self.smp.as_uid(self.comp, fn, self.path, *args, caps=caps, groups=groups)

    def e(self, fn, *args, caps: int = 0, groups=(), **kw):
        """The errno name (or 'ok') of ``fn(*args, **kw)`` run as the computer."""
        return self.smp.as_uid(self.comp, errname, fn, *args, caps=caps, groups=groups, **kw)


@pytest.fixture
def st(msmp, request):
    request.node._smpfs = msmp
    comp = msmp.add_computer()
    return Store(msmp, comp, msmp.request_capture(comp))


def _mk(s, rel, data=b"x", mode=0o644, uid=None, gid=None):
    p = f"{s}/{rel}"
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
    if uid is not None or gid is not None:          # (chown after chmod: it is no longer ours to chmod)
        os.chown(p, -1 if uid is None else uid, -1 if gid is None else gid)
    return p


def _mkdir(s, rel, mode=0o755, uid=None, gid=None):
    p = f"{s}/{rel}"
    os.mkdir(p)
    os.chmod(p, mode)
    if uid is not None or gid is not None:          # (chown after chmod: it is no longer ours to chmod)
        os.chown(p, -1 if uid is None else uid, -1 if gid is None else gid)
    return p


def _read(p):
    with open(p, "rb") as f:
        return f.read()


def _write(p, data=b"w"):
    fd = os.open(p, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _create(p):
    os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))


# -- mode bits ------------------------------------------------------------------------------

def test_owner_mode_bits_refuse_the_owner(st):
    def setup(s):
        _mk(s, "none", mode=0o000)
        _mk(s, "ro", mode=0o400)
        _mk(s, "wo", mode=0o200)
        _mkdir(s, "rodir", 0o755)
        _mk(s, "rodir/inside", mode=0o644)
        os.chmod(f"{s}/rodir", 0o555)
    st(setup)
    s = st.path
    assert st.e(_read, f"{s}/none") == "EACCES"
    assert st.e(_write, f"{s}/none") == "EACCES"
    assert st.e(_read, f"{s}/ro") == "ok"
    assert st.e(_write, f"{s}/ro") == "EACCES"
    assert st.e(os.truncate, f"{s}/ro", 0) == "EACCES"
    assert st.e(_read, f"{s}/wo") == "EACCES"
    assert st.e(_write, f"{s}/wo") == "ok"
    # a read-only directory takes no new name and loses none
    assert st.e(_create, f"{s}/rodir/new") == "EACCES"
    assert st.e(os.mkdir, f"{s}/rodir/newdir") == "EACCES"
    assert st.e(os.symlink, "x", f"{s}/rodir/sym") == "EACCES"
    assert st.e(os.link, f"{s}/ro", f"{s}/rodir/hard") == "EACCES"
    assert st.e(os.unlink, f"{s}/rodir/inside") == "EACCES"
    assert st.e(os.rename, f"{s}/rodir/inside", f"{s}/moved") == "EACCES"
    assert st.e(os.rename, f"{s}/ro", f"{s}/rodir/in") == "EACCES"
    # ... but what is in it can still be changed
    assert st.e(_write, f"{s}/rodir/inside") == "ok"
    # the owner may always chmod back
    assert st.e(os.chmod, f"{s}/none", 0o600) == "ok"
    assert st.e(_read, f"{s}/none") == "ok"


def test_directory_search_and_read_bits(st):
    def setup(s):
        _mkdir(s, "noexec", 0o755)
        _mk(s, "noexec/f", b"hidden")
        os.chmod(f"{s}/noexec", 0o600)          # readable, not searchable
        _mkdir(s, "noread", 0o755)
        _mk(s, "noread/f", b"found")
        os.chmod(f"{s}/noread", 0o300)          # searchable, not readable
    st(setup)
    s = st.path
    assert st.e(os.stat, f"{s}/noexec/f") == "EACCES"
    assert st.e(_read, f"{s}/noexec/f") == "EACCES"
    assert st.e(os.chdir, f"{s}/noexec") == "EACCES"
    assert st(lambda s: sorted(os.listdir(f"{s}/noexec"))) == ["f"]
    assert st.e(os.listdir, f"{s}/noread") == "EACCES"
    assert st(lambda s: _read(f"{s}/noread/f")) == b"found"
    # names listed from a directory one may not search are not usable afterwards either
    assert st.e(os.stat, f"{s}/noexec/f") == "EACCES"


def test_access_answers_as_open_does(st):
    def body(s):
        out = {}
        for m in (0o000, 0o400, 0o200, 0o100, 0o600, 0o700):
            p = _mk(s, f"f{m:o}", mode=m)
            out[m] = [os.access(p, k) for k in (os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK)]
        d = _mkdir(s, "d", 0o500)
        out["d"] = [os.access(d, k) for k in (os.F_OK, os.R_OK, os.W_OK, os.X_OK)]
        out["missing"] = os.access(f"{s}/missing", os.F_OK)
        return out
    got = st(body)
    assert got[0o000] == [True, False, False, False, False]
    assert got[0o400] == [True, True, False, False, False]
    assert got[0o200] == [True, False, True, False, False]
    assert got[0o100] == [True, False, False, True, False]
    assert got[0o600] == [True, True, True, False, True]
    assert got[0o700] == [True, True, True, True, True]
    assert got["d"] == [True, True, False, True]
    assert got["missing"] is False


def test_group_and_other_classes(st):
    """Files of another owner: the group bits for the fsgid and supplementary
    groups, the other bits for everyone else; the owner's bits never leak."""
    gid = st.comp.uid                            # the computer's own group (as_uid's gid)

    def setup(s):
        _mk(s, "grp_r", mode=0o640, uid=OTHER, gid=gid)        # group may read
        _mk(s, "sup_r", mode=0o640, uid=OTHER, gid=OTHER_GID)  # a supplementary group may read
        _mk(s, "oth_none", mode=0o604, uid=OTHER, gid=gid)     # group gets no rights even if others do
        _mk(s, "oth_r", mode=0o604, uid=OTHER, gid=OTHER_GID)
    st(setup, caps=CAP_CHOWN)
    s = st.path
    assert st.e(_read, f"{s}/grp_r") == "ok"
    assert st.e(_write, f"{s}/grp_r") == "EACCES"
    assert st.e(_read, f"{s}/sup_r") == "EACCES"
    assert st.e(_read, f"{s}/sup_r", groups=[OTHER_GID]) == "ok"
    assert st.e(_read, f"{s}/oth_none") == "EACCES"
    assert st.e(_read, f"{s}/oth_r") == "ok"
    # not the owner: no chmod, no explicit times, no chown
    assert st.e(os.chmod, f"{s}/oth_r", 0o666) == "EPERM"
    assert st.e(os.utime, f"{s}/oth_r", ns=(1, 2)) == "EPERM"
    assert st.e(os.chown, f"{s}/oth_r", st.comp.uid, -1) == "EPERM"


def test_sticky_directory(st):
    def setup(s):
        _mkdir(s, "tmp", 0o1777, uid=OTHER)
        _mk(s, "tmp/theirs", uid=OTHER, mode=0o666)
        _mk(s, "tmp/mine", mode=0o644)
    st(setup, caps=CAP_CHOWN)
    s = st.path
    assert st.e(os.unlink, f"{s}/tmp/theirs") == "EPERM"
    assert st.e(os.rename, f"{s}/tmp/theirs", f"{s}/tmp/x") == "EPERM"
    assert st.e(os.rename, f"{s}/tmp/mine", f"{s}/tmp/theirs") == "EPERM"     # replacing theirs
    assert st.e(_write, f"{s}/tmp/theirs") == "ok"                             # writing is not deleting
    assert st.e(os.rename, f"{s}/tmp/mine", f"{s}/tmp/mine2") == "ok"
    assert st.e(os.unlink, f"{s}/tmp/mine2") == "ok"
    assert st.e(os.unlink, f"{s}/tmp/theirs", caps=CAP_FOWNER) == "ok"


# -- capabilities -----------------------------------------------------------------------------

def test_cap_dac_override_and_dac_read_search(st):
    def setup(s):
        _mk(s, "secret", b"s", mode=0o000, uid=OTHER)
        _mkdir(s, "closed", 0o755)
        _mk(s, "closed/f", b"in closed")
        os.chmod(f"{s}/closed", 0o000)
        os.chown(f"{s}/closed", OTHER, -1)
        _mk(s, "noexec", b"#!/bin/sh\n", mode=0o600)
    st(setup, caps=CAP_CHOWN)
    s = st.path
    for fn, args in ((_read, (f"{s}/secret",)), (os.listdir, (f"{s}/closed",)),
                     (_read, (f"{s}/closed/f",)), (_create, (f"{s}/closed/new",))):
        assert st.e(fn, *args) == "EACCES", fn
    # CAP_DAC_READ_SEARCH: read and search anything, write nothing more
    assert st.e(_read, f"{s}/secret", caps=CAP_DAC_READ_SEARCH) == "ok"
    assert st.e(os.listdir, f"{s}/closed", caps=CAP_DAC_READ_SEARCH) == "ok"
    assert st.e(_read, f"{s}/closed/f", caps=CAP_DAC_READ_SEARCH) == "ok"
    assert st.e(_write, f"{s}/secret", caps=CAP_DAC_READ_SEARCH) == "EACCES"
    assert st.e(_create, f"{s}/closed/new", caps=CAP_DAC_READ_SEARCH) == "EACCES"
    # CAP_DAC_OVERRIDE: read and write anything; execute needs some x bit
    assert st.e(_write, f"{s}/secret", caps=CAP_DAC_OVERRIDE) == "ok"
    assert st.e(_create, f"{s}/closed/new", caps=CAP_DAC_OVERRIDE) == "ok"
    assert st.smp.as_uid(st.comp, os.access, f"{s}/noexec", os.X_OK, caps=CAP_DAC_OVERRIDE) is False
    assert st.smp.as_uid(st.comp, os.access, f"{s}/secret", os.R_OK | os.W_OK, caps=CAP_DAC_OVERRIDE)
    # without them again: refused (nothing cached for the capable process leaks)
    assert st.e(_read, f"{s}/closed/f") == "EACCES"
    assert st.e(_read, f"{s}/secret") == "EACCES"


def test_cap_fowner_and_cap_chown(st):
    def setup(s):
        _mk(s, "theirs", mode=0o644, uid=OTHER, gid=OTHER_GID)
        _mk(s, "mine", mode=0o644)
    st(setup, caps=CAP_CHOWN)
    s = st.path
    assert st.e(os.chmod, f"{s}/theirs", 0o600) == "EPERM"
    assert st.e(os.chmod, f"{s}/theirs", 0o600, caps=CAP_FOWNER) == "ok"
    assert st.e(os.utime, f"{s}/theirs", ns=(5, 6), caps=CAP_FOWNER) == "ok"
    assert st.e(os.setxattr, f"{s}/theirs", "user.k", b"v", caps=CAP_FOWNER) == "EACCES"   # needs write
    assert st.e(os.chown, f"{s}/mine", OTHER, -1) == "EPERM"
    assert st.e(os.chown, f"{s}/mine", -1, OTHER_GID) == "EPERM"
    assert st.e(os.chown, f"{s}/mine", -1, OTHER_GID, groups=[OTHER_GID]) == "ok"     # a group of its own
    assert st.e(os.chown, f"{s}/mine", OTHER, OTHER_GID + 1, caps=CAP_CHOWN) == "ok"
    got = st(lambda s: (os.stat(f"{s}/mine").st_uid, os.stat(f"{s}/mine").st_gid,
                        stat.S_IMODE(os.stat(f"{s}/theirs").st_mode), os.stat(f"{s}/theirs").st_mtime_ns))
    assert got == (OTHER, OTHER_GID + 1, 0o600, 6)
    # touch ("now") needs only write permission
    st(lambda s: os.chmod(f"{s}/mine", 0o666), caps=CAP_FOWNER)
    assert st.e(os.utime, f"{s}/mine") == "ok"
    assert st.e(os.utime, f"{s}/mine", ns=(1, 1)) == "EPERM"


def test_setuid_setgid_clearing_and_cap_fsetid(st):
    def body(s, caps):
        out = {}
        for name, mode in (("suid", 0o4755), ("sgidx", 0o2755), ("sgid_lock", 0o2745)):
            p = _mk(s, f"{name}{caps}", mode=mode)
            _write(p)
            out[f"write {name}"] = oct(stat.S_IMODE(os.stat(p).st_mode))
        p = _mk(s, f"t{caps}", mode=0o6755)
        os.truncate(p, 0)
        out["truncate"] = oct(stat.S_IMODE(os.stat(p).st_mode))
        p = _mk(s, f"c{caps}", mode=0o6755)
        os.chown(p, os.getuid(), os.getgid())
        out["chown"] = oct(stat.S_IMODE(os.stat(p).st_mode))
        return out
    plain = st(body, 0)
    assert plain == {"write suid": "0o755", "write sgidx": "0o755", "write sgid_lock": "0o2745",
                     "truncate": "0o755", "chown": "0o755"}, plain
    kept = st(body, CAP_FSETID, caps=CAP_FSETID)
    assert kept == {"write suid": "0o4755", "write sgidx": "0o2755", "write sgid_lock": "0o2745",
                    "truncate": "0o6755", "chown": "0o755"}, kept        # chown clears even with it

    def chmod_sgid(s):
        p = _mk(s, "notmygroup", mode=0o644)
        os.chown(p, -1, OTHER_GID)
        return p
    p = st(chmod_sgid, caps=CAP_CHOWN)
    st(lambda s: os.chmod(p, 0o2755))
    assert st(lambda s: stat.S_IMODE(os.stat(p).st_mode)) == 0o755     # not in the group: setgid dropped
    st(lambda s: os.chmod(p, 0o2755), caps=CAP_FSETID)
    assert st(lambda s: stat.S_IMODE(os.stat(p).st_mode)) == 0o2755


def test_protected_hardlinks(st):
    def setup(s):
        _mk(s, "theirs_ro", mode=0o644, uid=OTHER)          # readable, not writable by us
        _mk(s, "theirs_rw", mode=0o666, uid=OTHER)
    st(setup, caps=CAP_CHOWN)
    s = st.path
    assert st.e(os.link, f"{s}/theirs_ro", f"{s}/l1") == "EPERM"
    assert st.e(os.link, f"{s}/theirs_rw", f"{s}/l2") == "ok"
    assert st.e(os.link, f"{s}/theirs_ro", f"{s}/l3", caps=CAP_FOWNER) == "ok"


def test_cap_mknod(st):
    s = st.path
    dev = os.makedev(1, 3)
    assert st.e(os.mknod, f"{s}/null", stat.S_IFCHR | 0o600, dev) == "EPERM"
    assert st.e(os.mknod, f"{s}/null", stat.S_IFCHR | 0o600, dev, caps=CAP_MKNOD) == "ok"
    assert st.e(os.mknod, f"{s}/fifo", stat.S_IFIFO | 0o600) == "ok"
    a = st(lambda s: os.lstat(f"{s}/null"))
    assert stat.S_ISCHR(a.st_mode) and a.st_rdev == dev


# -- the store directory ----------------------------------------------------------------------

def test_store_directory_is_its_computers(st, msmp):
    s = st.path
    st(lambda s: (os.chmod(s, 0o755), os.utime(s, ns=(1_000_000_007, 1_600_000_000_123_456_789)),
                  os.setxattr(s, "user.profile", b"yes")))
    a = st(lambda s: os.stat(s))
    assert stat.S_IMODE(a.st_mode) == 0o755 and a.st_mtime_ns == 1_600_000_000_123_456_789
    assert a.st_uid == st.comp.uid
    assert st(lambda s: os.getxattr(s, "user.profile")) == b"yes"
    assert st.e(os.chown, s, OTHER, -1, caps=CAP_CHOWN) == "EPERM"      # the SMP decides its owner
    assert st.e(os.chown, s, st.comp.uid, st.comp.uid) == "ok"          # ... which may be said again
    # another uid still sees the stub, with no way in
    other = msmp.add_computer()
    b = msmp.as_uid(other, os.stat, s)
    assert stat.S_IMODE(b.st_mode) == 0o700 and b.st_uid == st.comp.uid
    assert msmp.as_uid(other, errname, os.listdir, s) == "EACCES"
    assert msmp.as_uid(other, errname, os.getxattr, s, "user.profile") in ("ENODATA", "EACCES")


# -- sparse files and statfs ------------------------------------------------------------------

def test_sparse_file_reports_stored_blocks_and_copies_out_sparse(st, msmp):
    out = msmp.root / f"sparse-out-{st.comp.uid}"
    out.mkdir()
    os.chown(out, st.comp.uid, st.comp.uid)

    def body(s):
        with open(f"{s}/sparse", "wb") as f:
            f.truncate(50 << 20)
            f.seek((50 << 20) - 1)
            f.write(b"!")
        a = os.stat(f"{s}/sparse")
        with open(f"{s}/dense", "wb") as f:
            f.write(os.urandom(3 << 20))
        b = os.stat(f"{s}/dense")
        fd = os.open(f"{s}/sparse", os.O_RDWR)
        try:
            fa = errname(os.posix_fallocate, fd, 0, 4096)
        finally:
            os.close(fd)
        return a.st_size, a.st_blocks, b.st_blocks, fa
    size, blocks, dense_blocks, fallocate = st(body)
    assert size == 50 << 20
    assert blocks * 512 <= 2 << 20, blocks                     # one 1 MiB block stored, not 50
    assert dense_blocks * 512 >= 3 << 20
    assert fallocate in ("ok", "EOPNOTSUPP")                   # glibc falls back to writing zeros
    r = msmp.run(f"cp --sparse=auto {st.path}/sparse {out}/sparse", who=st.comp, check=False)
    assert r.returncode == 0, r.stderr
    copied = os.stat(out / "sparse")
    assert copied.st_size == 50 << 20
    assert copied.st_blocks * 512 < 8 << 20, copied.st_blocks  # holes stayed holes


def test_statfs_in_a_store_is_its_folder(st, msmp):
    v = st(lambda s: os.statvfs(s))
    folder = os.statvfs(msmp.state / "store")
    floor = 1_000_000                                          # the SMP's min free (1MB)
    slack = 256 << 20
    assert abs(v.f_bavail * v.f_frsize - (folder.f_bavail * folder.f_frsize - floor)) <= slack
    assert v.f_namemax == 255
    # root (and any uid without a store) is told about the whole SMP
    w = os.statvfs(msmp.mountpoint)
    assert w.f_blocks * w.f_frsize >= v.f_blocks * v.f_frsize - slack
