"""The tools a migration uses copy a real tree into a store and back out exactly.

A tree with hard links, symlinks, user xattrs, odd modes, a sparse file,
long and non-ASCII names and nanosecond mtimes is generated on the local
disk as the computer's uid, copied into its store with ``cp -a``,
``rsync -aHAX`` or ``tar`` (run as that uid), and copied back out the same
way. Both copies must equal the original: bytes, types, modes, mtimes,
link counts and groups, symlink targets, xattrs.
"""
from __future__ import annotations

import hashlib
import os
import random
import stat

import pytest

MiB = 1 << 20


@pytest.fixture(scope="module")
def msmp(smp_module):
    return smp_module


@pytest.fixture
def env(msmp, request):
    """(smp, computer, store path, private work dir on the local disk)"""
    request.node._smpfs = msmp
    comp = msmp.add_computer()
    store = msmp.request_capture(comp)
    work = msmp.root / f"work-{comp.uid}"
    work.mkdir(mode=0o700)
    os.chown(work, comp.uid, comp.uid)
    msmp.as_uid(comp, make_tree, str(work / "src"))
    return msmp, comp, str(store), str(work)


# -- the tree ------------------------------------------------------------------------

T0 = 1_500_000_000_000_000_000


def make_tree(root: str) -> None:
    rnd = random.Random(42)
    os.umask(0)
    os.mkdir(root, 0o755)

    def f(rel, data=b"", mode=0o644, xattrs=None):
        p = os.path.join(root, rel)
        with open(p, "wb") as fh:
            fh.write(data)
        os.chmod(p, mode)
        for k, v in (xattrs or {}).items():
            os.setxattr(p, k, v)

    def d(rel, mode=0o755):
        os.mkdir(os.path.join(root, rel), mode)

    f("plain.txt", b"hello\n")
    f("empty", b"", 0o600)
    f("page.bin", rnd.randbytes(4095), 0o640)
    f("big.bin", rnd.randbytes(3 * MiB + 7), 0o640, {"user.checksum": b"sha256:feedface"})
    f("setuid.sh", b"#!/bin/sh\necho hi\n", 0o4755)
    f("setgid.bin", b"g", 0o2750)
    f("readonly", b"read only", 0o444)
    f("weird mode", b"w", 0o601)
    f("name with spaces & ünïcödé ✓.txt", b"unicode")
    f("L" * 255, b"long name")
    with open(os.path.join(root, "sparse.img"), "wb") as fh:     # holes at both ends of data
        fh.seek(5 * MiB)
        fh.write(b"island in the middle")
        fh.truncate(9 * MiB + 3)
    d("links")
    d("links/sub")
    f("links/a", rnd.randbytes(200_000), 0o640)
    os.link(os.path.join(root, "links/a"), os.path.join(root, "links/b"))
    os.link(os.path.join(root, "links/a"), os.path.join(root, "links/sub/c"))
    f("links/pair1", b"pair")
    os.link(os.path.join(root, "links/pair1"), os.path.join(root, "pair2"))
    d("symlinks")
    os.symlink("../plain.txt", os.path.join(root, "symlinks/rel"))
    os.symlink("/etc/hostname", os.path.join(root, "symlinks/abs"))
    os.symlink("does/not/exist", os.path.join(root, "symlinks/dangling"))
    os.symlink("../links", os.path.join(root, "symlinks/dirlink"))
    os.symlink("ünïcödé → target " + "z" * 300, os.path.join(root, "symlinks/long"))
    d("xattrs", 0o750)
    os.setxattr(os.path.join(root, "xattrs"), "user.dir", b"on a directory")
    f("xattrs/x.txt", b"x", 0o600, {"user.a": b"1", "user.bin": bytes(range(256)),
                                    "user.empty": b"", "user.big": rnd.randbytes(1500),   # ext4 keeps ~4 KiB per inode
                                    "user.ünï": b"unicode name"})
    d("sticky", 0o1777)
    f("sticky/inside", b"s")
    d("ro_dir", 0o755)
    f("ro_dir/f", b"in a read-only dir")
    d("empty_dir", 0o700)
    os.makedirs(os.path.join(root, "deep/a/b/c/d/e"))
    f("deep/a/b/c/d/e/f.txt", b"deep")
    for i in range(40):
        f(f"deep/a/many-{i:02d}", rnd.randbytes(rnd.randrange(0, 70_000)))
    os.chmod(os.path.join(root, "ro_dir"), 0o555)
    # distinct nanosecond times everywhere, children before their directories
    i = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames + ["."]:
            p = os.path.normpath(os.path.join(dirpath, name))
            i += 1
            t = T0 + i * 1_000_000_007 + i * 123_457
            os.utime(p, ns=(t + 17, t), follow_symlinks=False)


def snapshot(root: str) -> dict:
    """Everything that must survive a copy, keyed by relative path."""
    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["."] + dirnames + filenames if dirpath == root else dirnames + filenames:
            p = os.path.normpath(os.path.join(dirpath, name))
            rel = os.path.relpath(p, root)
            a = os.lstat(p)
            entry = {"type": stat.S_IFMT(a.st_mode), "mode": oct(stat.S_IMODE(a.st_mode)),
                     "mtime_ns": a.st_mtime_ns, "owner": (a.st_uid, a.st_gid)}
            if stat.S_ISREG(a.st_mode):
                with open(p, "rb") as fh:
                    data = fh.read()
                entry.update(size=a.st_size, sha256=hashlib.sha256(data).hexdigest(), nlink=a.st_nlink)
                inodes.setdefault(a.st_ino, []).append(rel)
            elif stat.S_ISLNK(a.st_mode):
                entry.update(target=os.readlink(p))
                del entry["mode"]                         # symlink modes mean nothing on Linux
            if not stat.S_ISLNK(a.st_mode):
                entry["xattrs"] = {k: os.getxattr(p, k) for k in sorted(os.listxattr(p))
                                   if k.startswith("user.")}
            out[rel] = entry
    out["<hard link groups>"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return out


def assert_same_tree(want: dict, got: dict, what: str) -> None:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"{what}: missing {missing}, extra {extra}"
    diffs = []
    for k in sorted(want):
        if want[k] != got[k]:
            if isinstance(want[k], dict):
                fields = {f: (want[k].get(f), got[k].get(f)) for f in set(want[k]) | set(got[k])
                          if want[k].get(f) != got[k].get(f)}
                diffs.append(f"{k}: {fields}")
            else:
                diffs.append(f"{k}: want {want[k]} got {got[k]}")
    assert not diffs, f"{what}: {len(diffs)} difference(s):\n  " + "\n  ".join(diffs[:30])


def _sanity(src: dict) -> None:
    # the generated tree really has what the tests claim to cover
    assert src["links/a"]["nlink"] == 3 and src["pair2"]["nlink"] == 2
    assert src["setuid.sh"]["mode"] == "0o4755" and src["sticky"]["mode"] == "0o1777"
    assert src["ro_dir"]["mode"] == "0o555"
    assert src["xattrs/x.txt"]["xattrs"]["user.bin"] == bytes(range(256))
    assert src["sparse.img"]["size"] == 9 * MiB + 3
    assert any(e.get("mtime_ns", 0) % 1000 for e in src.values() if isinstance(e, dict))


def _roundtrip(env, copy_in, copy_out):
    smp, comp, store, work = env
    src = f"{work}/src"
    inside = f"{store}/copy"
    out = f"{work}/out"
    want = smp.as_uid(comp, snapshot, src)
    _sanity(want)
    r = smp.run(copy_in(src, inside), who=comp, check=False)
    assert r.returncode == 0, f"copy in failed ({r.returncode}): {r.stderr}"
    got_in = smp.as_uid(comp, snapshot, inside)
    r = smp.run(copy_out(inside, out), who=comp, check=False)
    assert r.returncode == 0, f"copy out failed ({r.returncode}): {r.stderr}"
    got_out = smp.as_uid(comp, snapshot, out)
    assert_same_tree(want, got_in, "in the store")
    assert_same_tree(want, got_out, "copied back out")


def _diff_r(smp, comp, a: str, b: str, caps: str = "") -> None:
    r = _run_tool(smp, comp, f"diff -r --no-dereference {_q(a)} {_q(b)}", caps)
    assert r.returncode == 0, f"diff -r {a} {b}:\n{r.stdout[-3000:]}{r.stderr[-2000:]}"


def _roundtrip_store_dir(env, copy_in, copy_out, caps: str = ""):
    """Copy the tree into the store directory itself (as a task sequence does
    with $OSDStateStorePath) and back out; ``caps``: run the tools holding
    these capabilities (setpriv, ambient)."""
    smp, comp, store, work = env
    src, out = f"{work}/src", f"{work}/out"
    want = smp.as_uid(comp, snapshot, src, caps=_CAP_READ)
    _sanity(want)
    r = _run_tool(smp, comp, copy_in(src, store), caps)
    assert r.returncode == 0, f"copy into the store directory failed ({r.returncode}): {r.stderr}"
    r = _run_tool(smp, comp, copy_out(store, out), caps)
    assert r.returncode == 0, f"copy out failed ({r.returncode}): {r.stderr}"
    got_in = smp.as_uid(comp, snapshot, store, caps=_CAP_READ)
    got_out = smp.as_uid(comp, snapshot, out, caps=_CAP_READ)
    for got in (got_in, got_out):
        del got["."]["owner"]          # the store directory's owner is the SMP's (the computer)
    del want["."]["owner"]
    assert_same_tree(want, got_in, "in the store directory")
    assert_same_tree(want, got_out, "copied back out")
    _diff_r(smp, comp, src, out, caps)


_CAP_READ = 1 << 2                     # CAP_DAC_READ_SEARCH: snapshot files of any owner and mode


def _run_tool(smp, comp, cmd: str, caps: str):
    if not caps:
        return smp.run(cmd, who=comp, check=False)
    c = ",".join("+" + x for x in caps.split(","))
    return smp.run(["setpriv", f"--reuid={comp.uid}", f"--regid={comp.uid}", "--clear-groups",
                    f"--inh-caps={c}", f"--ambient-caps={c}", "sh", "-c", cmd], check=False)


def _q(p: str) -> str:
    return "'" + p.replace("'", "'\\''") + "'"


def test_cp_a_roundtrip(env):
    _roundtrip(env, lambda a, b: f"cp -a {_q(a)} {_q(b)}", lambda a, b: f"cp -a {_q(a)} {_q(b)}")


def test_rsync_aHAX_roundtrip(env):
    def rsync(a, b):
        return f"rsync -aHAX {_q(a + '/')} {_q(b + '/')}"
    _roundtrip(env, rsync, rsync)


def test_tar_roundtrip(env):
    opts = "--format=posix --xattrs --xattrs-include='user.*' --sparse"

    def tar(a, b):
        return f"mkdir {_q(b)} && tar {opts} -C {_q(a)} -cf - . | tar {opts} -C {_q(b)} -xpf -"
    _roundtrip(env, tar, tar)


def test_tar_archive_file_in_store(env):
    """tar writes an archive file into the store and extracts it from there."""
    smp, comp, store, work = env
    opts = "--format=posix --xattrs --xattrs-include='user.*' --sparse"
    src = f"{work}/src"
    r = smp.run(f"tar {opts} -C {_q(src)} -cf {_q(store)}/usmt.tar . && "
                f"mkdir {_q(work)}/x && tar {opts} -C {_q(work)}/x -xpf {_q(store)}/usmt.tar",
                who=comp, check=False)
    assert r.returncode == 0, r.stderr
    assert_same_tree(smp.as_uid(comp, snapshot, src), smp.as_uid(comp, snapshot, f"{work}/x"), "via an archive")


# -- into the store directory itself (cp -a profile/. "$OSDStateStorePath") ---------------

TAR = "--format=posix --xattrs --xattrs-include='user.*' --sparse"


def test_cp_a_into_the_store_directory(env):
    _roundtrip_store_dir(env, lambda a, b: f"cp -a {_q(a)}/. {_q(b)}",
                         lambda a, b: f"cp -a {_q(a)} {_q(b)}")


def test_rsync_into_the_store_directory(env):
    def rsync(a, b):
        return f"rsync -aHAX --numeric-ids {_q(a + '/')} {_q(b + '/')}"
    _roundtrip_store_dir(env, rsync, rsync)


def test_tar_into_the_store_directory(env):
    smp, comp, store, work = env
    r = smp.run(f"tar {TAR} -C {_q(work)}/src -cf {_q(work)}/profile.tar .", who=comp, check=False)
    assert r.returncode == 0, r.stderr
    _roundtrip_store_dir(env, lambda a, b: f"tar {TAR} -xpf {_q(work)}/profile.tar -C {_q(b)}",
                         lambda a, b: f"mkdir {_q(b)} && tar {TAR} -C {_q(a)} -cf - . | tar {TAR} -C {_q(b)} -xpf -")


# -- three owners, copied by a capture tool holding capabilities ----------------------------

OWNERS = (64100, 64200)
CAPS = "chown,fowner,dac_read_search"


@pytest.fixture
def owned_env(env):
    """The tree, with parts of it given to two more users (a multi-user /home)."""
    smp, comp, store, work = env
    src = f"{work}/src"
    a, b = OWNERS
    for rel, uid, gid in (("links", a, a), ("links/a", a, b), ("links/pair1", b, b), ("deep", b, a),
                          ("deep/a/b/c/d/e/f.txt", a, a), ("readonly", b, b), ("sticky", a, a),
                          ("sticky/inside", b, b), ("ro_dir", a, a), ("ro_dir/f", b, a)):
        st = os.lstat(f"{src}/{rel}")
        os.chown(f"{src}/{rel}", uid, gid)
        os.utime(f"{src}/{rel}", ns=(st.st_atime_ns, st.st_mtime_ns))      # chown leaves mtime
    return env


def _owners(snap: dict) -> set:
    return {v["owner"][0] for v in snap.values() if isinstance(v, dict)}


def test_three_owners_round_trip_with_capabilities(owned_env):
    smp, comp, store, work = owned_env
    assert _owners(smp.as_uid(comp, snapshot, f"{work}/src", caps=_CAP_READ)) == {comp.uid, *OWNERS}

    def tar_in(a, b):
        return f"tar {TAR} --same-owner --numeric-owner -C {_q(a)} -cf - . | " \
               f"tar {TAR} --same-owner --numeric-owner -xpf - -C {_q(b)}"

    def tar_out(a, b):
        return f"mkdir {_q(b)} && " + tar_in(a, b)
    _roundtrip_store_dir(owned_env, tar_in, tar_out, caps=CAPS)


def test_three_owners_cp_with_capabilities(owned_env):
    _roundtrip_store_dir(owned_env, lambda a, b: f"cp -a {_q(a)}/. {_q(b)}",
                         lambda a, b: f"cp -a {_q(a)} {_q(b)}", caps=CAPS)


def test_three_owners_rsync_with_capabilities(owned_env):
    """rsync decides by its uid, not its capabilities, whether to set owners
    (--super), and creates files in a directory after giving it away, so it
    also needs CAP_DAC_OVERRIDE -- as it would on ext4."""
    def rsync(a, b):
        return f"rsync -aHAX --numeric-ids --super {_q(a + '/')} {_q(b + '/')}"
    _roundtrip_store_dir(owned_env, rsync, rsync, caps=CAPS + ",dac_override")
