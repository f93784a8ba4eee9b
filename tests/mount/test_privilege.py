"""Privilege: the access table of the lifecycle, walked cell by cell, operation by operation.

For each state of a store (capturing, captured, restoring, restored) and each
actor (the source computer, the destination computer, another computer, root)
every operation a client can make is tried through the mount as that real
uid: stat, open for reading and for writing, opendir/readdir, chdir,
access(), getxattr, listxattr, setxattr, removexattr, readlink, statfs,
ioctl, create, mkdir, rmdir, mknod (fifo), symlink, link, unlink, rename
inside, into and out of the store, chmod, chown, utime and truncate.

Expected, from the access table (docs/architecture.md): the entitled uid reads everything; the
capturing source also changes everything; the destination's changes after
release fail with EROFS; everyone else -- root included -- gets EACCES for
anything inside the store. The store directory itself is public metadata.
The entitled uid always goes first, so a kernel cache warmed by it must not
answer for the others. Nothing a refused operation tried may change the
store. Then: a source still holding files open across the release; an
in-place store; the state dir, database, key and log unreadable by other
uids; denials of admin commands that leak nothing.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from pathlib import Path

import pytest
from test_local_attacks import raw_send

EACCES, EROFS, ENOTTY = errno.EACCES, errno.EROFS, errno.ENOTTY
FS_IOC_GETFLAGS = 0x80086601
TALLY = {"n": 0}                  # access-table cells checked (see the min_count marks)
SECRET_NAME = "Quarterly-Salaries-SECRETNAME.xlsx"


# -- the operations ---------------------------------------------------------------------

def _e(fn, *args, **kw) -> int:
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0


def _open_read(p):
    with open(p, "rb") as f:
        f.read()


def _open_write(p):
    fd = os.open(p, os.O_WRONLY)
    os.close(fd)


def _create(p):
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)


def _opendir(p):
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)


def _chdir(p):
    here = os.open(".", os.O_RDONLY)
    try:
        os.chdir(p)
    finally:
        os.fchdir(here)
        os.close(here)


def _ioctl(p):
    fd = os.open(p, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8)
    finally:
        os.close(fd)


def _access(p, mode):
    # access() answers a bool; turn "no" into the errno a failing call would give
    if not os.access(p, mode):
        raise OSError(EACCES, "access() said no")


def ops(s: str, uid: int, other_store: str | None):
    """(name, kind, callable) for store path ``s``. kinds: read, write, public, share."""
    share = os.path.dirname(s)
    yield "stat store dir", "public", lambda: os.stat(s)
    yield "stat", "read", lambda: os.stat(f"{s}/f")
    yield "lstat symlink", "read", lambda: os.lstat(f"{s}/l")
    yield "stat nested", "read", lambda: os.stat(f"{s}/d/inner")
    yield "stat name probe", "read", lambda: os.stat(f"{s}/d/{SECRET_NAME}")
    yield "open r", "read", lambda: _open_read(f"{s}/f")
    yield "open r nested", "read", lambda: _open_read(f"{s}/d/inner")
    yield "opendir", "read", lambda: _opendir(f"{s}/d")
    yield "readdir store", "read", lambda: os.listdir(s)
    yield "readdir", "read", lambda: os.listdir(f"{s}/d")
    yield "chdir", "read", lambda: _chdir(f"{s}/d")
    yield "access R_OK", "read", lambda: _access(f"{s}/f", os.R_OK)
    yield "getxattr", "read", lambda: os.getxattr(f"{s}/f", b"user.a")
    yield "listxattr", "read", lambda: os.listxattr(f"{s}/f")
    yield "readlink", "read", lambda: os.readlink(f"{s}/l")
    yield "statfs", "read", lambda: os.statvfs(f"{s}/d")
    yield "ioctl", "ioctl", lambda: _ioctl(f"{s}/f")
    yield "access W_OK", "accessw", lambda: _access(f"{s}/f", os.W_OK)
    yield "open w", "write", lambda: _open_write(f"{s}/f")
    yield "open append", "write", lambda: os.close(os.open(f"{s}/f", os.O_WRONLY | os.O_APPEND))
    yield "create", "write", lambda: _create(f"{s}/new-{uid}")
    yield "mkdir", "write", lambda: os.mkdir(f"{s}/newdir-{uid}")
    yield "rmdir", "write", lambda: os.rmdir(f"{s}/v_rmdir")
    yield "mknod fifo", "write", lambda: os.mkfifo(f"{s}/fifo-{uid}")
    yield "symlink", "write", lambda: os.symlink("f", f"{s}/sl-{uid}")
    yield "link", "write", lambda: os.link(f"{s}/f", f"{s}/hl-{uid}")
    yield "unlink", "write", lambda: os.unlink(f"{s}/v_unlink")
    yield "rename inside", "write", lambda: os.rename(f"{s}/v_rename", f"{s}/d/v_renamed")
    yield "chmod", "write", lambda: os.chmod(f"{s}/v_chmod", 0o600)
    yield "chown to self", "write", lambda: os.chown(f"{s}/v_chown", -1, os.getgid())
    yield "utime", "write", lambda: os.utime(f"{s}/v_utime", ns=(10**9, 10**9))
    yield "truncate", "write", lambda: os.truncate(f"{s}/v_trunc", 1)
    yield "setxattr", "write", lambda: os.setxattr(f"{s}/f", b"user.new", b"v")
    yield "removexattr", "write", lambda: os.removexattr(f"{s}/v_xattr", b"user.a")
    yield "rename out", "share", lambda: os.rename(f"{s}/v_out", f"{share}/stolen-{uid}")
    yield "link out", "share", lambda: os.link(f"{s}/f", f"{share}/stolen-link-{uid}")
    yield "rmdir store dir", "share", lambda: os.rmdir(s)
    yield "rename store dir", "share", lambda: os.rename(s, f"{share}/renamed-{uid}")
    if other_store:                               # an actor that has a writable store of its own
        yield "rename in", "into", lambda: os.rename(f"{other_store}/mine", f"{s}/moved-in")
        yield "link in", "into", lambda: os.link(f"{other_store}/mine", f"{s}/linked-in")


def expected(kind: str, level: str | None) -> set[int]:
    if kind == "public":
        return {0}
    if level is None:
        return {EACCES}
    if kind == "read":
        return {0}
    if kind == "ioctl":
        return {ENOTTY}                             # no ioctls, but the open worked
    if kind == "write":
        return {0} if level == "rw" else {EROFS}
    if kind == "share":
        return {EACCES}                             # nobody writes in the share itself
    if kind == "into":
        return {errno.EXDEV}
    if kind == "accessw":                           # FUSE's access() answers yes or no: EACCES
        return {0} if level == "rw" else {EACCES, EROFS}
    raise AssertionError(kind)


def _walk(store: str, uid: int, other_store, kinds) -> dict:
    return {name: _e(fn) for name, kind, fn in ops(store, uid, other_store) if kind in kinds}


def _fixtures(s: str) -> None:
    with open(f"{s}/f", "wb") as f:
        f.write(b"file content" * 100)
    os.setxattr(f"{s}/f", b"user.a", b"xattr value")
    os.symlink("f", f"{s}/l")
    os.mkdir(f"{s}/d")
    with open(f"{s}/d/inner", "wb") as f:
        f.write(b"inner")
    with open(f"{s}/d/{SECRET_NAME}", "wb") as f:
        f.write(b"salaries")
    os.mkdir(f"{s}/v_rmdir")
    for v in ("v_unlink", "v_rename", "v_chmod", "v_chown", "v_utime", "v_trunc", "v_xattr", "v_out"):
        with open(f"{s}/{v}", "wb") as f:
            f.write(v.encode())
    os.setxattr(f"{s}/v_xattr", b"user.a", b"1")


def _snapshot(s: str) -> str:
    """Everything observable in the store, as one digest."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(s):
        dirs.sort()
        for n in sorted(dirs + files):
            p = os.path.join(root, n)
            st = os.lstat(p)
            h.update(f"{p[len(s):]}|{st.st_mode:o}|{st.st_size}|{st.st_nlink}|{st.st_mtime_ns}|".encode())
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h.update(f.read())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            else:
                for x in sorted(os.listxattr(p)):
                    h.update(x.encode() + os.getxattr(p, x))
    return h.hexdigest()


def _mine(s: str) -> None:
    with open(f"{s}/mine", "wb") as f:
        f.write(b"mine")


def _level(state: str, who: str) -> str | None:
    if state == "capturing":
        return "rw" if who == "source" else None
    return "ro" if who == "dest" else None


@pytest.mark.min_count(684)
def test_access_table_cell_by_cell(smp):
    src, dst, oth = smp.add_computer(), smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    store = str(smp.request_capture(src))
    other_store = str(smp.request_capture(oth))   # the other computer captures too, at the same time
    smp.as_uid(src, _fixtures, store)
    smp.as_uid(oth, _mine, other_store)
    actors = {"source": src.uid, "dest": dst.uid, "other": oth.uid, "root": 0}
    mismatches, cells = [], 0
    kinds_all = {"public", "read", "ioctl", "write", "accessw", "share", "into"}

    def run_cell(state, who, kinds):
        nonlocal cells
        uid = actors[who]
        lvl = _level(state, who)
        got = smp.as_uid(uid, _walk, store, uid, other_store if who == "other" else None, kinds)
        for name, kind, _fn in ops(store, uid, other_store if who == "other" else None):
            if kind not in kinds:
                continue
            cells += 1
            want = expected(kind, lvl)
            if got[name] not in want:
                mismatches.append(f"{state:9} {who:6} {name:16} got {errno.errorcode.get(got[name], 'success')}"
                                  f", expected {' or '.join(errno.errorcode.get(w, 'success') for w in sorted(want))}")

    for state in ("capturing", "captured", "restoring", "restored"):
        if state == "captured":
            smp.release_capture(src)
        elif state == "restoring":
            smp.request_restore(dst)
        elif state == "restored":
            smp.release_restore(dst)
        entitled = "source" if state == "capturing" else "dest"
        before = smp.as_uid(actors[entitled], _snapshot, store)
        run_cell(state, entitled, {"public", "read", "ioctl"})        # warms the kernel's caches
        for who in ("dest", "other", "root", "source"):
            if who != entitled:
                run_cell(state, who, kinds_all)
        if state != "capturing":
            run_cell(state, entitled, kinds_all)
            after = smp.as_uid(actors[entitled], _snapshot, store)
            if after != before:
                mismatches.append(f"{state}: refused operations changed the store")
        else:
            after = smp.as_uid(src, _snapshot, store)
            smp.as_uid(oth, _e, os.stat, other_store + "/mine")
            run_cell(state, "source", kinds_all)                       # last: its changes succeed
            if smp.as_uid(src, _snapshot, store) == after:
                mismatches.append("capturing: the source's changes did not happen")
            if after != before:
                mismatches.append("capturing: refused operations of others changed the store")
            smp.as_uid(src, _fixtures_again, store)
    TALLY["n"] += cells
    print(f"access table: {cells} (state, actor, operation) cells checked")
    assert not mismatches, f"{len(mismatches)} of {cells} cells differ from the access table:\n" + \
        "\n".join(mismatches)


def _fixtures_again(s: str) -> None:
    """Put back the victims the source consumed, so the next states have targets."""
    os.mkdir(f"{s}/v_rmdir")
    for v in ("v_unlink", "v_rename", "v_out"):
        if not os.path.exists(f"{s}/{v}"):
            with open(f"{s}/{v}", "wb") as f:
                f.write(v.encode())
    os.setxattr(f"{s}/v_xattr", b"user.a", b"1")


# -- handles kept across the release -------------------------------------------------------------

def test_handles_open_across_release(smp):
    """A writer that still holds its files when the capture is released: its next
    write fails with EROFS, its reads with EACCES (side-by-side), and nothing it
    tries after the release reaches the store."""
    src, dst = smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    store = str(smp.request_capture(src))
    import threading
    r_go, w_go = os.pipe()
    r_done, w_done = os.pipe()

    def holder(store):
        fd = os.open(f"{store}/held", os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, b"before release")
        os.fsync(fd)
        os.mkdir(f"{store}/sub")
        with open(f"{store}/sub/{SECRET_NAME}", "wb") as f:
            f.write(b"x")
        dfd = os.open(f"{store}/sub", os.O_RDONLY | os.O_DIRECTORY)
        os.stat(SECRET_NAME, dir_fd=dfd)             # the name is in the kernel's cache now
        os.write(w_done, b"1")                       # tell the test: release now
        os.read(r_go, 1)
        out = {"write": _e(os.pwrite, fd, b"after", 0), "read": _e(os.pread, fd, 10, 0),
               "fsync": _e(os.fsync, fd), "ftruncate": _e(os.ftruncate, fd, 0),
               "fchmod": _e(os.fchmod, fd, 0o777), "fsetxattr": _e(os.setxattr, fd, b"user.x", b"1"),
               "dirfd open": _e(lambda: os.close(os.open(SECRET_NAME, os.O_RDONLY, dir_fd=dfd))),
               "dirfd readdir": _e(os.listdir, dfd),
               "dirfd create": _e(lambda: os.close(os.open("new", os.O_CREAT | os.O_WRONLY, dir_fd=dfd))),
               "dirfd stat": _e(os.stat, SECRET_NAME, dir_fd=dfd),
               "dirfd probe": _e(os.stat, "no-such-name", dir_fd=dfd)}
        os.close(dfd)
        os.close(fd)
        return out

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", smp.as_uid(src, holder, store)))
    t.start()
    try:
        os.read(r_done, 1)
        smp.release_capture(src)
    finally:
        os.write(w_go, b"1")
        t.join(60)
        for fd in (r_go, w_go, r_done, w_done):
            os.close(fd)
    got = box["r"]
    assert got["write"] == EROFS and got["ftruncate"] in (EROFS, EACCES), got
    assert got["read"] == EACCES, got
    assert got["fchmod"] in (EROFS, EACCES) and got["fsetxattr"] in (EROFS, EACCES), got
    assert got["dirfd open"] == EACCES and got["dirfd readdir"] == EACCES, got
    # a name the kernel had cached for the source is not reachable through its old dir fd either
    assert got["dirfd stat"] == EACCES and got["dirfd probe"] == EACCES, got
    assert got["dirfd create"] in (EACCES, EROFS), got
    smp.request_restore(dst)
    assert smp.as_uid(dst, lambda: open(f"{store}/held", "rb").read()) == b"before release"


# -- in-place: source = destination ------------------------------------------------------------------

@pytest.mark.min_count(99)
def test_in_place_store_is_read_only_for_its_computer_after_release(smp):
    pc, oth = smp.add_computer(), smp.add_computer()
    store = str(smp.request_capture(pc))            # no association: in-place
    smp.as_uid(pc, _fixtures, store)
    smp.release_capture(pc)
    bad = []
    for who, uid, lvl in (("pc", pc.uid, "ro"), ("other", oth.uid, None), ("root", 0, None)):
        got = smp.as_uid(uid, _walk, store, uid, None, {"public", "read", "ioctl", "write", "accessw"})
        for name, kind, _ in ops(store, uid, None):
            if kind in ("public", "read", "ioctl", "write", "accessw") and got[name] not in expected(kind, lvl):
                bad.append(f"{who} {name}: {errno.errorcode.get(got[name], 'success')}")
    TALLY["n"] += 3 * 33
    assert not bad, bad


# -- the state dir, its files and what denials say ---------------------------------------------------

def _probe_files(paths):
    out = {}
    for p in paths:
        out[p] = _e(lambda p=p: os.close(os.open(p, os.O_RDONLY)))
    out["listdir state"] = _e(os.listdir, os.path.dirname(paths[0]))
    return out


def test_state_dir_database_key_and_log_unreadable_by_others(smp):
    a, b = smp.add_computer(), smp.add_computer()
    smp.associate(a, b)
    store = smp.request_capture(a)
    smp.as_uid(a, lambda: open(f"{store}/{SECRET_NAME}", "wb").write(b"x" * 100))
    files = []
    for root, _dirs, names in os.walk(smp.state):
        for n in names:
            p = os.path.join(root, n)
            if not stat.S_ISSOCK(os.lstat(p).st_mode):
                files.append(p)
    assert {os.path.basename(p) for p in files} >= {"smp.db", "master.key", "smpfs.log", "store.db"}
    for who in (a, b):
        got = smp.as_uid(who, _probe_files, files)
        readable = [p for p, e in got.items() if e == 0]
        assert not readable, f"readable by {who.name} (uid {who.uid}): {readable}"
    # the control socket is for everyone; the kernel tells the daemon who calls
    assert stat.S_IMODE(os.stat(smp.state / "control.sock").st_mode) == 0o666


ADMIN_COMMANDS = [["status"], ["log"], ["computer", "list"], ["association", "list"], ["folder", "list"],
                  ["config", "--restore-only", "on"], ["retention", "run", "--at", "+30d"],
                  ["computer", "add", "EVIL", "--uid", "4242"], ["retire", "--yes"],
                  ["folder", "add", "/tmp/evil"], ["associate", "{src}", "{me}"]]


def test_denials_leak_nothing(smp):
    src, dst, oth = smp.add_computer(), smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    store = smp.request_capture(src)
    smp.as_uid(src, lambda: open(f"{store}/{SECRET_NAME}", "wb").write(b"x"))
    key = json.loads(smp.cli("key", "show", src.name, "--json").out)["recovery_key"]
    sid = store.name
    outputs = []
    for args in ADMIN_COMMANDS + [["key", "show", "{src}"]]:
        args = [a.replace("{src}", src.name).replace("{me}", oth.name) for a in args]
        r = smp.cli(*args, uid=oth, check=False)
        assert r.code == 7, (args, r.code, r.err)
        assert "admin" in r.err.lower() or "root" in r.err.lower(), r.err
        outputs.append(r.out + r.err)
    for args in (["request", "restore", dst.name], ["release", "capture", src.name],
                 ["request", "capture", src.name], ["request", "restore"], ["release", "restore"]):
        r = smp.cli(*args, uid=oth, check=False)
        assert r.code != 0, args
        outputs.append(r.out + r.err)
    for out in outputs:
        assert sid not in out and sid[:12] not in out and key not in out and SECRET_NAME not in out, out
    # the admin's view: audit log records the denials, but never a key or a file name
    log = smp.cli("log", "--json").out
    assert key not in log and SECRET_NAME not in log
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    denied = [e for e in entries if e.get("outcome") == "denied"]
    assert len(denied) >= len(ADMIN_COMMANDS)
    daemon_log = (smp.state / "smpfs.log").read_text()
    assert SECRET_NAME not in daemon_log and key not in daemon_log
    assert not re.search(r"[0-9A-F]{8}(-[0-9A-F]{8}){7}", daemon_log), "a recovery key in the daemon log"


def _raw_control(sock_path: str, request: dict) -> dict:
    """One control request, written by hand (not through the CLI, which never
    sends identity fields): the reply, as JSON."""
    return json.loads(raw_send(Path(sock_path).parent, json.dumps(request).encode() + b"\n", timeout=60))


FORGED_IDENTITY = ({"caller_uid": 0}, {"uid": 0}, {"caller_uid": 0, "uid": 0, "user": "root"})


def test_control_requests_with_forged_identity_fields_are_judged_by_the_kernels_peer_uid(smp):
    """The daemon learns the caller from SO_PEERCRED. A computer that writes
    ``caller_uid: 0`` (at the top level or among the arguments) is still itself:
    admin commands are refused, another computer's store stays out of reach."""
    src, dst, oth = smp.add_computer(), smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    store = smp.request_capture(src)
    sock = str(smp.state / "control.sock")
    tried = 0
    for forged in FORGED_IDENTITY:
        for cmd, args in (("computer_add", {"name": "FORGED", "uid": 4242}),
                          ("config", {"restore_only": "on"}),
                          ("release_capture", {"computer": src.name}),
                          ("key_show", {"computer": src.name})):
            request = {"cmd": cmd, "args": {**args, **forged}, **forged}
            reply = smp.as_uid(oth, _raw_control, sock, request)
            assert reply["ok"] is False, (request, reply)
            assert "recovery_key" not in json.dumps(reply)
            tried += 1
    assert tried == 4 * len(FORGED_IDENTITY)
    assert "FORGED" not in smp.cli("computer", "list").out
    # the capture was not released by someone else: its computer still writes to it
    assert smp.as_uid(src, lambda: _e(lambda: open(f"{store}/still-mine", "wb").write(b"x"))) == 0
    # and restore-only mode was not switched on: a new computer may still capture
    smp.request_capture(smp.add_computer())


def test_capturing_computer_cannot_give_a_file_to_another_uid(smp):
    """chown to another uid is root's privilege (POSIX), and root gets nothing
    here; the owner may still 'chown' to itself."""
    src, dst = smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    store = str(smp.request_capture(src))

    def attempt(path):
        with open(path, "wb") as f:
            f.write(b"mine")
        out = {"to other": _e(os.chown, path, dst.uid, -1), "to self": _e(os.chown, path, src.uid, -1),
               "lchown other": _e(os.lchown, path, dst.uid, -1)}
        out["owner"] = os.stat(path).st_uid
        return out
    got = smp.as_uid(src, attempt, f"{store}/f")
    assert got == {"to other": errno.EPERM, "to self": 0, "lchown other": errno.EPERM, "owner": src.uid}, got
