"""Hostile input: names, paths, trees, links, xattrs and CLI arguments at and past the limits.

Everything a computer (or an admin's typo) can throw at the SMP: each is
either stored and given back exactly -- through the mount, after a remount,
to the destination after release, and through ``smpfs recover`` -- or
refused with a clear error; nothing is lost and nothing escapes the store.

``SMPFS_LONG=1`` makes the big directory 100,000 entries (20,000 in CI).
"""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from smpfs.testing import _run_cli

LONG = os.environ.get("SMPFS_LONG") == "1"
BIG_DIR = 100_000 if LONG else 20_000
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")          # 4096, counting the final NUL
TALLY = {"n": 0}                  # hostile inputs tried (see the min_count marks)


def count(n: int = 1) -> None:
    TALLY["n"] += n


def errno_of(fn, *args, **kw) -> int:
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0


def touch(path, data: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def captured_pair(smp):
    src, dst = smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    return src, dst, smp.request_capture(src)


def release_to(smp, src, dst):
    smp.release_capture(src)
    smp.request_restore(dst)


def recover_store(smp, src, store, outdir) -> dict:
    """``smpfs recover`` with nothing but the key, as root, from the storage folder."""
    key = json.loads(smp.cli("key", "show", src.name, "--json").out)
    r = smp.cli("recover", "--key", key["recovery_key"], key["store_path"], outdir, "--json", check=False)
    assert r.code == 0, (r.code, r.err[-3000:])
    return json.loads(r.out)


# -- names ---------------------------------------------------------------------------------

NAMES = [b"x" * 255, ("é" * 127 + "x").encode(), b"\xff\xfe\xfd", b"caf\xe9", b"\x80abc",
         b"a\x01b\x7f", b"new\nline", b" ", b"  lead and trail  ", b"-rf", b"*", b"?[a-z]",
         b"$(reboot)", b"`id`", b"a;b&c|d>e<f", b"'\"", b"...", b". ", b".. ", b"..\\..\\Windows",
         b"C:\\Users\\x", b"CON", b"nul.txt", b"\xef\xbb\xbfbom", b"\xed\xa0\x80surrogate",
         "日本語のファイル名".encode(), "\u202eevil.exe".encode(), b"%s%n%x", b"\\"]


def _make_names(root: str, names):
    for i, n in enumerate(names):
        touch(os.fsencode(root) + b"/" + n, b"%d" % i)
    os.mkdir(os.fsencode(root) + b"/" + b"\xff dir")
    touch(os.fsencode(root) + b"/\xff dir/" + b"y" * 255, b"deep")
    return sorted(os.listdir(os.fsencode(root)))


def _names_back(root: str, names):
    got = sorted(os.listdir(os.fsencode(root)))
    data = {n: read(os.fsencode(root) + b"/" + n) for n in names}
    return got, data, read(os.fsencode(root) + b"/\xff dir/" + b"y" * 255)


def _too_long(root: str):
    r = os.fsencode(root)
    long = b"z" * 256
    touch(r + b"/ok")
    os.mkdir(r + b"/okd")
    out = {
        "create": errno_of(os.open, r + b"/" + long, os.O_CREAT | os.O_WRONLY),
        "mkdir": errno_of(os.mkdir, r + b"/" + long),
        "symlink": errno_of(os.symlink, b"t", r + b"/" + long),
        "link": errno_of(os.link, r + b"/ok", r + b"/" + long),
        "rename": errno_of(os.rename, r + b"/ok", r + b"/" + long),
        "rename_dir": errno_of(os.rename, r + b"/okd", r + b"/" + long),
        "stat": errno_of(os.stat, r + b"/" + long),
        "mb_256": errno_of(os.open, r + b"/" + ("é" * 128).encode(), os.O_CREAT | os.O_WRONLY),
    }
    out["after"] = sorted(os.listdir(r))
    return out


@pytest.mark.min_count(39)
def test_names_255_bytes_ok_256_refused_non_utf8_round_trips(smp, tmp_path):
    src, dst, store = captured_pair(smp)
    made = smp.as_uid(src, _make_names, str(store), NAMES)
    want = sorted(NAMES + [b"\xff dir"])
    assert made == want
    count(len(NAMES) + 2)
    errs = smp.as_uid(src, _too_long, str(store) + "/\xff dir".encode("latin-1").decode("utf-8", "surrogateescape"))
    after = errs.pop("after")
    assert errs == {k: errno.ENAMETOOLONG for k in errs}, errs
    assert after == sorted([b"ok", b"okd", b"y" * 255]), "a refused name left something behind"
    count(len(errs))
    smp.remount()
    got, data, deep = smp.as_uid(src, _names_back, str(store), NAMES)
    assert got == want and deep == b"deep"
    assert all(data[n] == b"%d" % i for i, n in enumerate(NAMES))
    release_to(smp, src, dst)
    got, data, deep = smp.as_uid(dst, _names_back, str(store), NAMES)
    assert got == want and all(data[n] == b"%d" % i for i, n in enumerate(NAMES)) and deep == b"deep"
    # and with nothing but the key: every name comes back byte for byte, inside OUTDIR
    out = tmp_path / "out"
    stats = recover_store(smp, src, store, out)
    assert stats["errors"] == []
    assert sorted(os.listdir(os.fsencode(out))) == want
    assert all(read(os.fsencode(out) + b"/" + n) == b"%d" % i for i, n in enumerate(NAMES))
    assert sorted(os.listdir(tmp_path)) == ["out"], "recover wrote outside OUTDIR"


# -- . and .. ----------------------------------------------------------------------------------

def _dots(root: str, other: str):
    share = os.path.dirname(root)
    me = os.path.basename(root)
    out = {}
    os.mkdir(f"{root}/sub")
    touch(f"{root}/sub/f", b"f")
    out["create ."] = errno_of(os.open, f"{root}/.", os.O_CREAT | os.O_WRONLY)
    out["mkdir .."] = errno_of(os.mkdir, f"{root}/sub/..")
    out["rmdir ."] = errno_of(os.rmdir, f"{root}/sub/.")
    out["rename to .."] = errno_of(os.rename, f"{root}/sub/f", f"{root}/sub/..")
    out["rename .."] = errno_of(os.rename, f"{root}/sub/..", f"{root}/x")
    out["unlink .."] = errno_of(os.unlink, f"{root}/sub/..")
    out["other via .."] = errno_of(os.listdir, f"{root}/../{os.path.basename(other)}")
    out["other file via ../.."] = errno_of(os.stat, f"{root}/sub/../../{os.path.basename(other)}/secret")
    out["write in share via .."] = errno_of(os.open, f"{root}/../planted", os.O_CREAT | os.O_WRONLY)
    out["mkdir in mount root"] = errno_of(os.mkdir, f"{root}/../../planted")
    out["symlink in share"] = errno_of(os.symlink, "x", f"{root}/../planted")
    out["rename store away"] = errno_of(os.rename, root, f"{share}/renamed")
    out["rmdir store"] = errno_of(os.rmdir, root)
    out["rename into share"] = errno_of(os.rename, f"{root}/sub/f", f"{share}/f")
    out["link into share"] = errno_of(os.link, f"{root}/sub/f", f"{share}/f")
    listing = {
        "share": sorted(os.listdir(f"{root}/..")),
        "..": os.stat(f"{root}/sub/..").st_ino == os.stat(root).st_ino,
        "store/..": os.stat(f"{root}/..").st_ino == os.stat(share).st_ino,
        "mnt": os.listdir(f"{root}/../.."),
        "sub": sorted(os.listdir(f"{root}/sub/../sub")),
        "dots ok": [errno_of(touch, f"{root}/{n}") for n in ("...", ". ", "..\\..")],
    }
    return out, listing, me


@pytest.mark.min_count(18)
def test_dot_and_dotdot_tricks(smp):
    a, b = smp.add_computer(), smp.add_computer()
    sa, sb = smp.request_capture(a), smp.request_capture(b)
    smp.as_uid(b, touch, f"{sb}/secret", b"b's")
    errs, listing, me = smp.as_uid(a, _dots, str(sa), str(sb))
    count(len(errs) + 3)
    want = {
        "create .": errno.EISDIR, "mkdir ..": errno.EEXIST, "rmdir .": errno.EINVAL,
        "rename to ..": errno.EBUSY, "rename ..": errno.EBUSY, "unlink ..": errno.EISDIR,
        "other via ..": errno.EACCES, "other file via ../..": errno.EACCES,
        "write in share via ..": errno.EACCES, "mkdir in mount root": errno.EACCES,
        "symlink in share": errno.EACCES, "rename store away": errno.EACCES, "rmdir store": errno.EACCES,
        "rename into share": errno.EACCES, "link into share": errno.EACCES,
    }
    # the kernel may answer the '.'/'..' cases itself with a neighbouring errno; what matters is
    # that each one fails and changes nothing
    loose = {"create .", "mkdir ..", "rmdir .", "rename to ..", "rename ..", "unlink .."}
    for k, v in errs.items():
        assert v != 0, f"{k}: succeeded"
        if k not in loose:
            assert v == want[k], f"{k}: {errno.errorcode.get(v, v)}, expected {errno.errorcode[want[k]]}"
    assert listing["share"] == sorted([sa.name, sb.name])
    assert listing[".."] and listing["store/.."]
    assert listing["mnt"] == [sa.parent.name]
    assert listing["sub"] == ["f"] and listing["dots ok"] == [0, 0, 0]
    assert smp.as_uid(b, read, f"{sb}/secret") == b"b's"
    assert sorted(os.listdir(sa.parent)) == sorted([sa.name, sb.name]), "something was planted in the share"


# -- deep trees -----------------------------------------------------------------------------------

def _to_path_max(root: str):
    """Absolute paths up to PATH_MAX - 1 bytes work; one more byte is ENAMETOOLONG."""
    base = os.fsencode(root)
    path = base
    comp = b"d" * 200
    while len(path) + 1 + len(comp) + 1 + 20 < PATH_MAX - 1:
        path += b"/" + comp
        os.mkdir(path)
    name_len = PATH_MAX - 1 - len(path) - 1           # the longest file name that still fits
    assert 0 < name_len <= 255
    full = path + b"/" + b"f" * name_len
    assert len(full) == PATH_MAX - 1
    touch(full, b"at PATH_MAX")
    got = read(full)
    over = errno_of(touch, path + b"/" + b"f" * (name_len + 1))
    return got, over, len(full), path.count(b"/") - base.count(b"/")


def _deeper_than_path_max(root: str, levels: int):
    """With directory fds, a tree deeper than any path: the filesystem has no depth limit."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fds = [fd]
    try:
        for _i in range(levels):
            os.mkdir("a", dir_fd=fd)
            fd = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            fds.append(fd)
        wfd = os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(wfd, b"deepest")
        os.close(wfd)
    finally:
        for f in fds:
            os.close(f)
    return levels * 2


def _walk_deep(root: str, levels: int):
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            nfd = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        rfd = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(rfd, 100)
        finally:
            os.close(rfd)
    finally:
        os.close(fd)


DEEP = 1100            # 2 bytes a level: 2,200 bytes of path, well inside PATH_MAX


@pytest.mark.min_count(3)
def test_deep_trees_up_to_and_past_path_max(smp):
    src, dst, store = captured_pair(smp)
    got, over, n, depth = smp.as_uid(src, _to_path_max, str(store))
    assert got == b"at PATH_MAX" and n == PATH_MAX - 1
    assert over == errno.ENAMETOOLONG
    deep = store / "deep"
    smp.as_uid(src, os.mkdir, str(deep))
    smp.as_uid(src, _deeper_than_path_max, str(deep), DEEP)
    count(3)
    smp.remount()
    assert smp.as_uid(src, _walk_deep, str(deep), DEEP) == b"deepest"
    release_to(smp, src, dst)
    assert smp.as_uid(dst, _walk_deep, str(deep), DEEP) == b"deepest"
    smp.umount()
    r = smp.cli("fsck", "--no-repair", "--json")
    assert json.loads(r.out)["findings"] == []
    smp.mount()


def test_recover_deep_tree(smp, tmp_path):
    src, _dst, store = captured_pair(smp)
    deep = store / "deep"
    smp.as_uid(src, os.mkdir, str(deep))
    smp.as_uid(src, _deeper_than_path_max, str(deep), DEEP)
    smp.as_uid(src, touch, f"{store}/zz-after", b"after")
    out = tmp_path / "out"
    try:
        stats = recover_store(smp, src, store, out)
        assert stats["errors"] == []
        assert _walk_deep(str(out / "deep"), DEEP) == b"deepest"
        assert read(out / "zz-after") == b"after"
    finally:
        if (out / "deep").exists():
            _remove_chain(str(out / "deep"))   # shutil.rmtree (and pytest's cleanup) would recurse too deep


def _remove_chain(top: str, name: str = "a") -> None:
    """Remove a chain of directories ``top/a/a/...`` of any depth, without recursion."""
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        while name in os.listdir(fds[-1]):
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        for i in range(len(fds) - 1, -1, -1):
            for n in os.listdir(fds[i]):
                if n != name:
                    os.unlink(n, dir_fd=fds[i])
            if i:
                os.rmdir(name, dir_fd=fds[i - 1])
    finally:
        for fd in fds:
            os.close(fd)
    os.rmdir(top)


# -- a big directory --------------------------------------------------------------------------

def _fill(root: str, n: int):
    d = f"{root}/big"
    os.mkdir(d)
    t0 = time.monotonic()
    for i in range(n):
        os.mknod(f"{d}/entry-{i:06d}", 0o644 | stat.S_IFREG)
    return time.monotonic() - t0


def _list_big(root: str, n: int):
    d = f"{root}/big"
    t0 = time.monotonic()
    names = os.listdir(d)
    t_list = time.monotonic() - t0
    t0 = time.monotonic()
    with os.scandir(d) as it:                         # ls -l: readdir plus a stat of each
        sizes = sum(1 for e in it if e.stat(follow_symlinks=False).st_size == 0)
    t_long = time.monotonic() - t0
    t0 = time.monotonic()
    for i in range(0, n, max(1, n // 200)):
        os.stat(f"{d}/entry-{i:06d}")
    t_lookup = (time.monotonic() - t0) / len(range(0, n, max(1, n // 200)))
    missing = errno_of(os.stat, f"{d}/entry-x")
    ok = sorted(names) == [f"entry-{i:06d}" for i in range(n)] and sizes == n
    return ok, t_list, t_long, t_lookup, missing


@pytest.mark.min_count(20000)
def test_one_directory_with_many_entries(smp):
    src, dst, store = captured_pair(smp)
    t_fill = smp.as_uid(src, _fill, str(store), BIG_DIR)
    smp.remount()                                   # cold: nothing cached in the kernel
    ok, t_list, t_long, t_lookup, missing = smp.as_uid(src, _list_big, str(store), BIG_DIR)
    count(BIG_DIR)
    print(f"{BIG_DIR} entries: created in {t_fill:.1f}s, listed in {t_list:.2f}s, listed with stat in "
          f"{t_long:.2f}s, one lookup {t_lookup * 1000:.2f} ms")
    assert ok and missing == errno.ENOENT
    per = BIG_DIR / 20_000
    assert t_list < 3.0 * per, f"listing {BIG_DIR} entries took {t_list:.1f}s"
    assert t_long < 8.0 * per, f"listing {BIG_DIR} entries with stat took {t_long:.1f}s"
    assert t_lookup < 0.02, f"a lookup in a {BIG_DIR}-entry directory took {t_lookup * 1000:.1f} ms"
    release_to(smp, src, dst)
    ok, t_list, *_ = smp.as_uid(dst, _list_big, str(store), BIG_DIR)
    assert ok and t_list < 3.0 * per


# -- symlinks pointing outside -----------------------------------------------------------------------

def _symlinks(root: str, targets: dict):
    for name, t in targets.items():
        os.symlink(t, f"{root}/{name}")
    out = {}
    for name in targets:
        st = os.lstat(f"{root}/{name}")
        out[name] = {"readlink": os.readlink(f"{root}/{name}"), "islnk": stat.S_ISLNK(st.st_mode),
                     "size": st.st_size, "follow": errno_of(read, f"{root}/{name}"),
                     "xattr": errno_of(os.setxattr, f"{root}/{name}", b"user.x", b"1", follow_symlinks=False)}
    return out


@pytest.mark.min_count(9)
def test_symlinks_outside_the_store_are_data_never_followed(smp, tmp_path):
    src, dst, store = captured_pair(smp)
    other_src, _, other = captured_pair(smp)
    smp.as_uid(other_src, touch, f"{other}/theirs", b"other store")
    secret = smp.root / "root-only"                  # in a directory the computers can traverse
    touch(secret, b"root's secret")
    os.chmod(secret, 0o600)
    targets = {"shadow": "/etc/shadow", "root-only": str(secret), "up": "../../../../../../..",
               "other-store": f"../{other.name}/theirs", "other-abs": f"{other}/theirs",
               "state": str(smp.state / "master.key"), "self": "self", "empty-ish": " ",
               "long": "t/" * 2000}
    got = smp.as_uid(src, _symlinks, str(store), targets)
    count(len(targets))
    for name, t in targets.items():
        g = got[name]
        assert g["readlink"] == t and g["islnk"] and g["size"] == len(t.encode()), (name, g)
        assert g["xattr"] == errno.EPERM            # user.* xattrs are not for symlinks
    # followed by the *client's* kernel, with the client's rights: nothing it could not read anyway
    assert got["shadow"]["follow"] == errno.EACCES
    assert got["root-only"]["follow"] == errno.EACCES
    assert got["other-store"]["follow"] == errno.EACCES
    assert got["other-abs"]["follow"] == errno.EACCES
    assert got["state"]["follow"] == errno.EACCES
    assert got["self"]["follow"] == errno.ELOOP
    release_to(smp, src, dst)

    def dest_view(root):
        return {n: (os.readlink(f"{root}/{n}"), errno_of(read, f"{root}/{n}")) for n in targets}
    view = smp.as_uid(dst, dest_view, str(store))
    assert {n: v[0] for n, v in view.items()} == targets
    assert view["root-only"][1] == errno.EACCES and view["other-abs"][1] == errno.EACCES
    # recover (as root!) recreates the links; it never copies what they point to
    out = tmp_path / "out"
    recover_store(smp, src, store, out)
    for name, t in targets.items():
        assert os.path.islink(out / name) and os.readlink(out / name) == t
    assert read(secret) == b"root's secret"
    for root, _dirs, files in os.walk(out):
        for f in files:
            p = os.path.join(root, f)
            assert os.path.islink(p) or b"root's secret" not in read(p)


# -- hard links and renames across stores ---------------------------------------------------------

@pytest.mark.min_count(7)
def test_hard_links_and_renames_across_stores_are_exdev(smp):
    pc = smp.add_computer()                      # an in-place refresh: two stores, one computer
    old = smp.request_capture(pc)
    smp.as_uid(pc, touch, f"{old}/f", b"old")
    smp.release_capture(pc)
    smp.request_restore(pc)
    smp.release_restore(pc)                      # restored (read-only to pc), kept for a day
    new = smp.request_capture(pc)
    assert new != old
    smp.as_uid(pc, touch, f"{new}/g", b"new")
    outside = smp.root / "outside"                # a directory the computer may write to
    outside.mkdir()
    os.chmod(outside, 0o777)

    def tries(old, new, outside):
        return {
            "link old->new": errno_of(os.link, f"{old}/f", f"{new}/f-link"),
            "link new->old": errno_of(os.link, f"{new}/g", f"{old}/g-link"),
            "rename old->new": errno_of(os.rename, f"{old}/f", f"{new}/f-moved"),
            "rename new->old": errno_of(os.rename, f"{new}/g", f"{old}/g-moved"),
            "link to outside": errno_of(os.link, f"{new}/g", f"{outside}/g"),
            "link from outside": errno_of(os.link, f"{outside}/x", f"{new}/x"),
            "rename to outside": errno_of(os.rename, f"{new}/g", f"{outside}/g"),
        }
    touch(outside / "x")
    os.chmod(outside / "x", 0o666)
    got = smp.as_uid(pc, tries, str(old), str(new), str(outside))
    count(len(got))
    assert got == {k: errno.EXDEV for k in got}, got
    assert smp.as_uid(pc, read, f"{new}/g") == b"new" and os.listdir(outside) == ["x"]
    # another computer's store: it cannot even name the target directory
    other = smp.add_computer()
    theirs = smp.request_capture(other)
    assert smp.as_uid(pc, errno_of, os.link, f"{new}/g", f"{theirs}/stolen") == errno.EACCES
    assert smp.as_uid(other, os.listdir, str(theirs)) == []


# -- xattrs at the kernel limits -------------------------------------------------------------------

def _xattrs(root: str):
    p = f"{root}/x"
    touch(p)
    os.mkdir(f"{root}/d")
    out = {}
    n255, n256 = b"user." + b"n" * 250, b"user." + b"n" * 251
    v64k = os.urandom(65536)
    out["name 255"] = errno_of(os.setxattr, p, n255, b"v")
    out["name 256"] = errno_of(os.setxattr, p, n256, b"v")
    out["value 64k"] = errno_of(os.setxattr, p, b"user.big", v64k)
    out["value 64k+1"] = errno_of(os.setxattr, p, b"user.bigger", v64k + b"x")
    out["dir value 64k"] = errno_of(os.setxattr, f"{root}/d", b"user.big", v64k)
    out["empty value"] = errno_of(os.setxattr, p, b"user.empty", b"")
    out["binary name"] = errno_of(os.setxattr, p, b"user.\xff\x01", b"bin")
    out["trusted"] = errno_of(os.setxattr, p, b"trusted.x", b"v")
    out["security"] = errno_of(os.setxattr, p, b"security.x", b"v")
    out["create existing"] = errno_of(os.setxattr, p, n255, b"v", os.XATTR_CREATE)
    out["replace missing"] = errno_of(os.setxattr, p, b"user.none", b"v", os.XATTR_REPLACE)
    # names until the list would pass what listxattr can return (64 KiB): refused, never unlistable
    q = f"{root}/many"
    touch(q)
    added = 0
    while True:
        e = errno_of(os.setxattr, q, b"user.%04d" % added + b"m" * 246, b"")
        if e:
            out["too many names"] = e
            break
        added += 1
        if added > 1000:
            out["too many names"] = 0
            break
    out["listed"] = len(os.listxattr(q)) == added
    back = {"64k": os.getxattr(p, b"user.big") == v64k, "255": os.getxattr(p, n255) == b"v",
            "bin": os.getxattr(p, b"user.\xff\x01") == b"bin", "empty": os.getxattr(p, b"user.empty") == b"",
            "dir": os.getxattr(f"{root}/d", b"user.big") == v64k,
            "list": sorted(os.fsencode(n) for n in os.listxattr(p))}
    return out, back, added


@pytest.mark.min_count(269)
def test_xattr_names_and_values_at_the_limits(smp):
    src, dst, store = captured_pair(smp)
    errs, back, added = smp.as_uid(src, _xattrs, str(store))
    count(len(errs) + added)
    assert errs == {
        "name 255": 0, "name 256": errno.ERANGE, "value 64k": 0, "value 64k+1": errno.E2BIG,
        "dir value 64k": 0, "empty value": 0, "binary name": 0, "trusted": errno.EPERM,
        "security": errno.EPERM, "create existing": errno.EEXIST, "replace missing": errno.ENODATA,
        "too many names": errno.ENOSPC, "listed": True}, errs
    assert 200 < added < 260
    assert all(v for k, v in back.items() if k != "list")
    assert back["list"] == sorted([b"user." + b"n" * 250, b"user.big", b"user.empty", b"user.\xff\x01"])
    smp.remount()
    release_to(smp, src, dst)

    def dest(root):
        return (len(os.getxattr(f"{root}/x", b"user.big")), len(os.listxattr(f"{root}/many")),
                errno_of(os.setxattr, f"{root}/x", b"user.more", b"v"))
    assert smp.as_uid(dst, dest, str(store)) == (65536, added, errno.EROFS)


# -- malformed CLI arguments --------------------------------------------------------------------------

MALFORMED = [
    # sizes
    ["folder", "add", "{tmp}/f1", "--min-free", "12XB"], ["folder", "add", "{tmp}/f1", "--min-free", "-5MB"],
    ["folder", "add", "{tmp}/f1", "--min-free", "1e9"], ["folder", "add", "{tmp}/f1", "--min-free", "inf"],
    ["folder", "add", "{tmp}/f1", "--min-free", "150%"], ["folder", "add", "{tmp}/f1", "--min-free", "nan%"],
    ["folder", "add", "{tmp}/f1", "--min-free", "10%%"], ["folder", "add", "{tmp}/f1", "--min-free", "5 M B"],
    ["folder", "add", "{tmp}/f1", "--max-clients", "0"], ["folder", "add", "{tmp}/f1", "--max-clients", "100000"],
    ["folder", "add", "{tmp}/f1", "--max-clients", "ten"],
    # durations and times
    ["config", "--delete-after", "5parsecs"], ["config", "--delete-after", ""], ["config", "--delete-after", "-1d"],
    ["config", "--delete-after", "1d; rm -rf /"], ["config", "--delete-after", "99999999999999999999d"],
    ["config", "--delete-after", "1.5d"], ["config", "--delete-after", "d"],
    ["retention", "run", "--at", "yesterday"], ["retention", "run", "--at", "+5parsecs"],
    ["retention", "run", "--at", "2025-13-45"], ["retention", "run", "--at", "+99999999999999d"],
    ["request", "capture", "PC1", "--retries", "-1"], ["request", "capture", "PC1", "--retry-delay", "abc"],
    ["request", "capture", "PC1", "--retries", "1e3"], ["log", "--limit", "-1"],
    # names with spaces and shell characters
    ["computer", "add", "PC 01", "--uid", "5000"], ["computer", "add", "PC;rm -rf /", "--uid", "5001"],
    ["computer", "add", "$(reboot)", "--uid", "5002"], ["computer", "add", "`id`", "--uid", "5003"],
    ["computer", "add", "", "--uid", "5004"], ["computer", "add", "x" * 64, "--uid", "5005"],
    ["computer", "add", "../../etc", "--uid", "5006"], ["computer", "add", "PC\n01", "--uid", "5007"],
    ["computer", "add", "-PC", "--uid", "5008"], ["computer", "add", "PC|x", "--uid", "5009"],
    ["computer", "add", "PC-OK", "--uid", "5 000"], ["computer", "add", "PC-OK", "--uid", "0x10"],
    ["computer", "add", "PC-OK", "--uid", "²"], ["computer", "add", "PC-OK", "--uid", "99999999999"],
    ["computer", "add", "PC-OK", "--uid", "4294967295"], ["computer", "add", "PC-OK", "--uid", "-5"],
    ["computer", "add", "PC-OK", "--uid", "0"], ["computer", "add", "PC-OK", "--uid", ""],
    ["config", "--server", "a b"], ["config", "--server", "$(reboot)"], ["config", "--server", "bad\\name"],
    ["config", "--server", "  "], ["config", "--server", "x;y"], ["config", "--restore-only", "maybe"],
    ["init", "--server", "my server"], ["init", "--min-free", "12XB"], ["init", "--max-clients", "0"],
]


@pytest.mark.min_count(57)
def test_malformed_cli_arguments_exit_2(smp, tmp_path):
    def settings():
        return {k: v for k, v in json.loads(smp.cli("config", "--json").out).items() if k != "ts"}
    before = (smp.cli("computer", "list", "--json").out, settings(), smp.cli("folder", "list", "--json").out)
    bad = []
    for args in MALFORMED:
        args = [a.replace("{tmp}", str(tmp_path)) for a in args]
        argv = ["--state", str(tmp_path / "fresh") if args[0] == "init" else str(smp.state), *args]
        r = _run_cli(argv, None)
        text = (r.err + r.out)
        if r.code != 2 or "Traceback" in text or not (text.startswith("smpfs: ") or "Error:" in text):
            bad.append(f"{args}: exit {r.code}: {text.strip()[:200]}")
        if args[0] == "init" and (tmp_path / "fresh").exists():
            bad.append(f"{args}: created {tmp_path / 'fresh'} anyway")
    count(len(MALFORMED))
    assert not bad, "\n".join(bad)
    after = (smp.cli("computer", "list", "--json").out, settings(), smp.cli("folder", "list", "--json").out)
    assert json.loads(after[0]) == json.loads(before[0]) and after[1] == before[1]
    assert [f["path"] for f in json.loads(after[2])] == [f["path"] for f in json.loads(before[2])]
    assert not (tmp_path / "f1").exists()
    # names no computer can have: refused before any lookup (exit 2, the rule in the hint)
    for args in (["associate", "PC 1", "PC;2"], ["release", "capture", "$(id)"],
                 ["key", "show", "'; DROP TABLE stores; --"], ["request", "restore", "*"]):
        r = _run_cli(["--state", str(smp.state), *args], None)
        assert r.code == 2 and "invalid computer name" in r.err and "15 characters" in r.err, \
            (args, r.code, r.err)
        count()
    # well-formed but unknown: a clear "unknown computer" (exit 10), not a crash
    r = _run_cli(["--state", str(smp.state), "release", "capture", "PC-NOSUCH"], None)
    assert r.code == 10 and "unknown computer" in r.err, (r.code, r.err)
    # and through the real executable, where a shell would see the same argv
    r = subprocess.run([sys.executable, "-m", "smpfs", "--state", str(smp.state), "config",
                        "--delete-after", "1d; touch /tmp/pwned"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("smpfs: invalid duration")
    assert not os.path.exists("/tmp/pwned")
