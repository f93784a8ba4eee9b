"""Every POSIX operation through a real mount, as the capturing computer's uid.

One SMP is mounted for the module; each test gets its own computer and a
fresh capture store. All file operations run in a child forked as the
computer's uid (``smp.as_uid``) with ordinary ``os`` calls; assertions made
there come back to pytest with their message.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import shutil
import stat
import time

import pytest

from smpfs.testing import HeldFile

MiB = 1 << 20
BLOCK = 1 << 20          # smpfs's content block size (chunk.BLOCK_SIZE)


# -- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def msmp(smp_module):
    return smp_module


class Store:
    def __init__(self, smp, comp, path):
        self.smp, self.comp, self.path = smp, comp, str(path)

    def __call__(self, fn, *args, **kw):
        """Run ``fn(store_path, *args)`` as the computer's uid."""
        return self.smp.as_uid(self.comp, fn, self.path, *args, **kw)


@pytest.fixture
def st(msmp, request):
    request.node._smpfs = msmp        # the plugin shows the SMP's logs when a test fails
    comp = msmp.add_computer()
    return Store(msmp, comp, msmp.request_capture(comp))


def _raises(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except OSError as e:
        assert e.errno == code, f"{fn.__name__}{args}: expected {errno.errorcode[code]}, got {e!r}"
        return
    raise AssertionError(f"{fn.__name__}{args} succeeded; expected {errno.errorcode[code]}")


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path, data: bytes, mode="wb"):
    with open(path, mode) as f:
        f.write(data)


def _pread_all(fd, size) -> bytes:
    out = bytearray()
    while len(out) < size:
        b = os.pread(fd, size - len(out), len(out))
        if not b:
            break
        out += b
    return bytes(out)


def _drop_cache(path):
    """Drop the kernel's cached pages of a file so the next read asks smpfs."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- create, write, read ------------------------------------------------------------------

def test_create_write_read_and_stat(st):
    def body(s):
        p = f"{s}/hello.txt"
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        assert os.write(fd, b"hello, world\n") == 13
        os.close(fd)
        assert _read(p) == b"hello, world\n"
        a = os.stat(p)
        assert stat.S_ISREG(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o644
        assert a.st_size == 13 and a.st_nlink == 1
        assert a.st_uid == os.getuid() and a.st_gid == os.getgid()
        _raises(errno.EEXIST, os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        assert sorted(os.listdir(s)) == ["hello.txt"]
        # O_TRUNC empties, O_APPEND appends
        _write(p, b"abc")
        assert _read(p) == b"abc"
        _write(p, b"def", "ab")
        assert _read(p) == b"abcdef"
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"!")                    # O_APPEND ignores the offset
        os.close(fd)
        assert _read(p) == b"abcdef!"
        # empty file
        _write(f"{s}/empty", b"")
        assert os.stat(f"{s}/empty").st_size == 0 and _read(f"{s}/empty") == b""
    st(body)


def test_umask_applies_on_create(st):
    def body(s):
        os.umask(0o027)
        fd = os.open(f"{s}/f", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
        os.mkdir(f"{s}/d", 0o777)
        assert stat.S_IMODE(os.stat(f"{s}/f").st_mode) == 0o640
        assert stat.S_IMODE(os.stat(f"{s}/d").st_mode) == 0o750
    st(body)


def test_write_updates_mtime_and_ctime(st):
    def body(s):
        p = f"{s}/f"
        _write(p, b"x" * 10)
        old = 1_000_000_000_123_456_789
        os.utime(p, ns=(old, old))
        before = time.time_ns()
        with open(p, "r+b") as f:
            f.seek(5)
            f.write(b"yy")
        a = os.stat(p)
        assert a.st_mtime_ns >= before - 10**9, "a write must update the file's mtime"
        assert a.st_ctime_ns >= before - 10**9
        os.utime(p, ns=(old, old))
        os.truncate(p, 3)
        assert os.stat(p).st_mtime_ns >= before - 10**9, "truncate must update mtime"
    st(body)


def test_sparse_writes_and_holes(st):
    def body(s):
        p = f"{s}/sparse"
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
        os.pwrite(fd, b"END", 10 * MiB + 5)          # far past EOF
        os.pwrite(fd, b"mid", 3 * MiB + 100)
        os.pwrite(fd, b"start", 0)
        assert os.fstat(fd).st_size == 10 * MiB + 8
        os.close(fd)
        data = _read(p)
        want = bytearray(10 * MiB + 8)
        want[0:5] = b"start"
        want[3 * MiB + 100:3 * MiB + 103] = b"mid"
        want[10 * MiB + 5:] = b"END"
        assert data == want
        _drop_cache(p)
        assert _read(p) == want
        # a hole inside a block that has data, read on its own
        with open(p, "rb") as f:
            f.seek(3 * MiB + 50)
            assert f.read(60) == bytes(50) + b"mid" + bytes(7)
        # seek past EOF and write through a file object
        with open(f"{s}/sparse2", "wb") as f:
            f.seek(5 * MiB)
            f.write(b"x")
        assert _read(f"{s}/sparse2") == bytes(5 * MiB) + b"x"
    st(body)


def test_truncate_grow_and_shrink(st):
    def body(s):
        rnd = random.Random(2)
        p = f"{s}/t"
        data = rnd.randbytes(3 * MiB + 12345)
        _write(p, data)
        os.truncate(p, 2 * MiB + 100)                 # shrink into the middle of block 2
        assert os.stat(p).st_size == 2 * MiB + 100
        assert _read(p) == data[:2 * MiB + 100]
        os.truncate(p, 5 * MiB)                       # grow: the cut data must not come back
        assert _read(p) == data[:2 * MiB + 100] + bytes(5 * MiB - 2 * MiB - 100)
        _drop_cache(p)
        assert _read(p) == data[:2 * MiB + 100] + bytes(5 * MiB - 2 * MiB - 100)
        os.truncate(p, 0)
        assert os.stat(p).st_size == 0 and _read(p) == b""
        os.truncate(p, 700)
        assert _read(p) == bytes(700)
        # ftruncate on an open fd with unflushed partial-block writes
        fd = os.open(p, os.O_RDWR)
        os.pwrite(fd, b"A" * 5000, 0)
        os.ftruncate(fd, 1000)
        os.ftruncate(fd, 3000)
        os.pwrite(fd, b"B", 2999)
        assert _pread_all(fd, 4000) == b"A" * 1000 + bytes(1999) + b"B"
        os.close(fd)
        _drop_cache(p)
        assert _read(p) == b"A" * 1000 + bytes(1999) + b"B"
        # shrink exactly to a block boundary, then grow again
        _write(p, data)
        os.truncate(p, 2 * MiB)
        os.truncate(p, 2 * MiB + 10)
        assert _read(p) == data[:2 * MiB] + bytes(10)
    st(body)


def test_file_spanning_blocks_with_writes_across_boundaries(st):
    def body(s):
        rnd = random.Random(7)
        p = f"{s}/big"
        size = 4 * BLOCK + 777
        model = bytearray(rnd.randbytes(size))
        _write(p, bytes(model))
        fd = os.open(p, os.O_RDWR)
        # writes straddling every block boundary, and one spanning three blocks
        for b in range(1, 5):
            chunk = rnd.randbytes(4096)
            off = b * BLOCK - 1000
            os.pwrite(fd, chunk, off)
            model[off:off + len(chunk)] = chunk
        span = rnd.randbytes(2 * BLOCK + 10)
        os.pwrite(fd, span, BLOCK // 2)
        model[BLOCK // 2:BLOCK // 2 + len(span)] = span
        # reads straddling boundaries
        for b in range(1, 5):
            assert os.pread(fd, 64, b * BLOCK - 32) == model[b * BLOCK - 32:b * BLOCK + 32]
        os.fsync(fd)
        os.close(fd)
        _drop_cache(p)
        got = _read(p)
        assert len(got) == len(model) == 4 * BLOCK + 3096 and got == model
    st(body)


def test_random_writes_against_a_model(st):
    def body(s):
        rnd = random.Random(1234)
        p = f"{s}/model.bin"
        model = bytearray()
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
        fd2 = os.open(p, os.O_RDWR)                   # a second handle on the same file
        for step in range(400):
            r = rnd.random()
            if r < 0.6:
                off = rnd.randrange(0, 6 * MiB)
                n = rnd.choice([1, 17, 4096, 65536, 65537, 200_000, BLOCK, BLOCK + 3])
                data = rnd.randbytes(n)
                os.pwrite(rnd.choice([fd, fd2]), data, off)
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off:off + n] = data
            elif r < 0.7:
                n = rnd.randrange(0, 6 * MiB)
                os.ftruncate(fd, n)
                if n < len(model):
                    del model[n:]
                else:
                    model.extend(bytes(n - len(model)))
            elif r < 0.9:
                off = rnd.randrange(0, len(model) + 10)
                n = rnd.randrange(1, 300_000)
                assert os.pread(fd2, n, off) == model[off:off + n], f"step {step}: read mismatch"
            elif r < 0.95:
                os.fsync(fd)
            else:
                os.close(fd)
                fd = os.open(p, os.O_RDWR)
            assert os.fstat(fd).st_size == len(model), f"step {step}: size"
        os.close(fd)
        os.close(fd2)
        _drop_cache(p)
        assert _read(p) == model
    st(body)


def test_64_gib_sparse_file(st):
    def body(s):
        p = f"{s}/huge"
        size = 64 << 30
        with open(p, "wb") as f:
            f.truncate(size)
            f.seek(size - 5)
            f.write(b"tail!")
            f.seek(size // 2)
            f.write(b"middle")
        assert os.stat(p).st_size == size
        with open(p, "rb") as f:
            f.seek(size // 2 - 3)
            assert f.read(12) == b"\0\0\0middle\0\0\0"
            f.seek(size - 10)
            assert f.read() == bytes(5) + b"tail!"
            f.seek(12345 * BLOCK)
            assert f.read(BLOCK) == bytes(BLOCK)
        os.truncate(p, size + BLOCK + 1)                  # grow past it, then shrink back into it
        os.truncate(p, size - 3)
        with open(p, "rb") as f:
            f.seek(size - 10)
            assert f.read() == bytes(5) + b"ta"
    st(body)


def test_shared_mmap_writes(st):
    import mmap

    def body(s):
        p = f"{s}/mapped"
        data = random.Random(8).randbytes(BLOCK + 5000)
        _write(p, data)
        model = bytearray(data)
        with open(p, "r+b") as f:
            m = mmap.mmap(f.fileno(), 0)
            m[10:20] = b"0123456789"
            m[BLOCK - 3:BLOCK + 3] = b"ABCDEF"
            m.flush()
            m.close()
        model[10:20] = b"0123456789"
        model[BLOCK - 3:BLOCK + 3] = b"ABCDEF"
        assert _read(p) == model
        _drop_cache(p)
        assert _read(p) == model
    st(body)


def _committed_sizes(st) -> list[int]:
    """File sizes in the store's database as committed (what a crash keeps at
    best), read beside the daemon: sizes are not secret, names are sealed."""
    import sqlite3
    db = st.smp.state / "store" / os.path.basename(st.path) / "store.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return sorted(r[0] for r in conn.execute("SELECT size FROM inodes WHERE mode & 61440 = 32768"))
    finally:
        conn.close()


def test_fsync_fdatasync_and_dir_fsync(st):
    """fsync and fdatasync return only when the data and the metadata to read
    it back are committed (the power-cut tests check they are durable too);
    fsync of a directory commits the names in it; fsync of a read-only
    handle works."""
    p = f"{st.path}/f"
    with HeldFile(st.comp, p, os.O_CREAT | os.O_WRONLY, 0o600) as h:
        h.do("write", b"a" * 100_000)
        h.do("fsync")
        assert 100_000 in _committed_sizes(st)
        h.do("write", b"b" * 100_000)
        h.do("fdatasync")
        assert 200_000 in _committed_sizes(st)

    def names(s):
        os.mkdir(f"{s}/d")
        for i in range(3):
            _write(f"{s}/d/n{i}", b"x" * (7000 + i))
        os.rename(f"{s}/d/n0", f"{s}/d/m0")
        dfd = os.open(f"{s}/d", os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        fd = os.open(f"{s}/f", os.O_RDONLY)
        os.fsync(fd)                                  # fsync of a read-only handle is fine too
        os.close(fd)
        return sorted(os.listdir(f"{s}/d")), _read(f"{s}/f")
    listing, content = st(names)
    assert listing == ["m0", "n1", "n2"] and content == b"a" * 100_000 + b"b" * 100_000
    assert {7000, 7001, 7002} <= set(_committed_sizes(st))


# -- directories ------------------------------------------------------------------------

def test_mkdir_rmdir_and_link_counts(st):
    def body(s):
        base = os.stat(s).st_nlink
        os.mkdir(f"{s}/d", 0o755)
        a = os.stat(f"{s}/d")
        assert stat.S_ISDIR(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o755 and a.st_nlink == 2
        assert os.stat(s).st_nlink == base + 1
        os.makedirs(f"{s}/d/e/f")
        os.mkdir(f"{s}/d/g")
        assert os.stat(f"{s}/d").st_nlink == 4
        assert os.stat(f"{s}/d/e/..").st_ino == os.stat(f"{s}/d").st_ino
        assert sorted(os.listdir(f"{s}/d")) == ["e", "g"]
        _raises(errno.EEXIST, os.mkdir, f"{s}/d")
        _raises(errno.ENOTEMPTY, os.rmdir, f"{s}/d")
        _raises(errno.ENOENT, os.rmdir, f"{s}/nope")
        _write(f"{s}/d/file", b"x")
        _raises(errno.ENOTDIR, os.rmdir, f"{s}/d/file")
        _raises(errno.EISDIR, os.unlink, f"{s}/d/g")
        os.rmdir(f"{s}/d/g")
        assert os.stat(f"{s}/d").st_nlink == 3
        _raises(errno.ENOENT, os.stat, f"{s}/d/g")
        os.rmdir(f"{s}/d/e/f")
        os.rmdir(f"{s}/d/e")
        os.unlink(f"{s}/d/file")
        os.rmdir(f"{s}/d")
        assert os.listdir(s) == [] and os.stat(s).st_nlink == base
    st(body)


def test_large_directory_listing(st):
    def body(s):
        os.mkdir(f"{s}/many")
        names = {f"entry-{i:05d}-{'x' * (i % 50)}" for i in range(2500)}
        for n in names:
            os.close(os.open(f"{s}/many/{n}", os.O_CREAT | os.O_WRONLY, 0o600))
        assert set(os.listdir(f"{s}/many")) == names
        seen = {e.name: e.is_file() for e in os.scandir(f"{s}/many")}
        assert set(seen) == names and all(seen.values())
        for n in sorted(names)[::2]:
            os.unlink(f"{s}/many/{n}")
        assert set(os.listdir(f"{s}/many")) == set(sorted(names)[1::2])
        # rm -rf: entries deleted while the directory is being read
        os.makedirs(f"{s}/many/sub/deeper")
        _write(f"{s}/many/sub/deeper/f", b"x")
        shutil.rmtree(f"{s}/many")
        assert os.listdir(s) == []
    st(body)


def test_odd_byte_names(st):
    def body(s):
        names = [b"\xff\xfe not utf-8", b"new\nline", b"-leading-dash", b" spaces ", b"tab\there",
                 "日本語のファイル名".encode(), b"\x01\x7f", b"...", b"a" * 255]
        sb = os.fsencode(s)
        for n in names:
            with open(sb + b"/" + n, "wb") as f:
                f.write(n)
        assert sorted(os.listdir(sb)) == sorted(names)
        for n in names:
            assert _read(sb + b"/" + n) == n
        os.rename(sb + b"/" + names[0], sb + b"/" + names[0] + b"\x80")
        assert _read(sb + b"/" + names[0] + b"\x80") == names[0]
    st(body)


# -- rename --------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100


def _renameat2(a, b, flags):
    if _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), a)


def test_rename(st):
    def body(s):
        _write(f"{s}/a", b"AAA")
        _write(f"{s}/b", b"BBBB")
        ino_a = os.stat(f"{s}/a").st_ino
        os.rename(f"{s}/a", f"{s}/b")                       # over an existing file
        assert not os.path.exists(f"{s}/a")
        assert _read(f"{s}/b") == b"AAA" and os.stat(f"{s}/b").st_ino == ino_a
        assert os.listdir(s) == ["b"]
        # across directories, with the parents' link counts
        os.mkdir(f"{s}/d1")
        os.mkdir(f"{s}/d2")
        os.mkdir(f"{s}/d1/sub")
        _write(f"{s}/d1/sub/f", b"deep")
        os.rename(f"{s}/b", f"{s}/d2/b2")
        assert _read(f"{s}/d2/b2") == b"AAA"
        os.rename(f"{s}/d1/sub", f"{s}/d2/sub")
        assert _read(f"{s}/d2/sub/f") == b"deep"
        assert os.stat(f"{s}/d1").st_nlink == 2 and os.stat(f"{s}/d2").st_nlink == 3
        assert os.stat(f"{s}/d2/sub/..").st_ino == os.stat(f"{s}/d2").st_ino
        # a directory over an empty directory; not over a non-empty one
        os.mkdir(f"{s}/empty")
        os.rename(f"{s}/d2/sub", f"{s}/empty")
        assert _read(f"{s}/empty/f") == b"deep"
        os.mkdir(f"{s}/full")
        _write(f"{s}/full/x", b"")
        _raises(errno.ENOTEMPTY, os.rename, f"{s}/empty", f"{s}/full")
        # type mismatches
        _raises(errno.EISDIR, os.rename, f"{s}/d2/b2", f"{s}/full")
        _raises(errno.ENOTDIR, os.rename, f"{s}/full", f"{s}/d2/b2")
        # into itself
        _raises(errno.EINVAL, os.rename, f"{s}/full", f"{s}/full/inside")
        # missing source
        _raises(errno.ENOENT, os.rename, f"{s}/nope", f"{s}/x")
        # two names of one inode: rename does nothing
        os.link(f"{s}/d2/b2", f"{s}/hl")
        os.rename(f"{s}/d2/b2", f"{s}/hl")
        assert os.path.exists(f"{s}/d2/b2") and os.stat(f"{s}/hl").st_nlink == 2
        # os.replace is rename; the same name stays
        os.replace(f"{s}/hl", f"{s}/hl")
        assert _read(f"{s}/hl") == b"AAA"
    st(body)


def test_rename_noreplace_and_exchange(st):
    def body(s):
        _write(f"{s}/a", b"A")
        _write(f"{s}/b", b"B")
        _raises(errno.EEXIST, _renameat2, f"{s}/a", f"{s}/b", RENAME_NOREPLACE)
        assert _read(f"{s}/a") == b"A" and _read(f"{s}/b") == b"B"
        _renameat2(f"{s}/a", f"{s}/c", RENAME_NOREPLACE)
        assert _read(f"{s}/c") == b"A" and not os.path.exists(f"{s}/a")
        os.mkdir(f"{s}/d")
        _write(f"{s}/d/inner", b"I")
        _renameat2(f"{s}/c", f"{s}/d", RENAME_EXCHANGE)
        assert _read(f"{s}/d") == b"A" and _read(f"{s}/c/inner") == b"I"
        assert os.stat(f"{s}/c/..").st_ino == os.stat(s).st_ino
    st(body)


def test_rename_over_open_file_keeps_old_content_readable(st):
    def body(s):
        _write(f"{s}/target", b"old content")
        _write(f"{s}/new", b"new content")
        fd = os.open(f"{s}/target", os.O_RDONLY)
        os.rename(f"{s}/new", f"{s}/target")
        assert os.pread(fd, 100, 0) == b"old content"
        assert os.fstat(fd).st_nlink == 0
        os.close(fd)
        assert _read(f"{s}/target") == b"new content"
    st(body)


# -- unlink -------------------------------------------------------------------------

def test_unlink_while_open(st):
    def body(s):
        p = f"{s}/tmpfile"
        data = random.Random(3).randbytes(2 * MiB + 10)
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
        os.write(fd, data)
        os.unlink(p)
        assert not os.path.exists(p) and os.listdir(s) == []
        _raises(errno.ENOENT, os.unlink, p)
        assert os.fstat(fd).st_nlink == 0
        assert _pread_all(fd, len(data)) == data       # still readable through the fd
        os.pwrite(fd, b"more", len(data))               # and writable
        os.fsync(fd)
        assert _pread_all(fd, len(data) + 4) == data + b"more"
        # a new file of the same name is a different file
        _write(p, b"other")
        assert _read(p) == b"other"
        assert _pread_all(fd, len(data) + 4) == data + b"more"
        os.close(fd)
        assert _read(p) == b"other"
    st(body)


# -- symlinks and hard links -----------------------------------------------------------

def test_symlinks(st):
    def body(s):
        _write(f"{s}/real", b"real data")
        os.symlink("real", f"{s}/rel")
        os.mkdir(f"{s}/d")
        os.symlink("../real", f"{s}/d/up")
        os.symlink("/nonexistent/ünïcödé target", f"{s}/dangling")
        long_target = "x/" * 1999 + "y"                 # 3999 bytes
        os.symlink(long_target, f"{s}/long")
        assert os.readlink(f"{s}/rel") == "real"
        assert os.readlink(f"{s}/dangling") == "/nonexistent/ünïcödé target"
        assert os.readlink(f"{s}/long") == long_target
        a = os.lstat(f"{s}/dangling")
        assert stat.S_ISLNK(a.st_mode) and a.st_size == len("/nonexistent/ünïcödé target".encode())
        assert _read(f"{s}/rel") == b"real data" and _read(f"{s}/d/up") == b"real data"
        assert os.stat(f"{s}/rel").st_ino == os.stat(f"{s}/real").st_ino
        _raises(errno.ENOENT, os.stat, f"{s}/dangling")
        _raises(errno.EEXIST, os.symlink, "x", f"{s}/rel")
        _raises(errno.EINVAL, os.readlink, f"{s}/real")
        # a symlink to a directory, followed in a path
        os.symlink("d", f"{s}/dlink")
        assert os.listdir(f"{s}/dlink") == ["up"]
        # writing through a symlink writes the target
        _write(f"{s}/rel", b"changed", "ab")
        assert _read(f"{s}/real") == b"real datachanged"
        os.unlink(f"{s}/rel")
        assert os.path.exists(f"{s}/real")
    st(body)


def test_hard_links_and_link_counts(st):
    def body(s):
        _write(f"{s}/a", b"shared")
        os.mkdir(f"{s}/d")
        os.link(f"{s}/a", f"{s}/b")
        os.link(f"{s}/a", f"{s}/d/c")
        for n in ("a", "b", "d/c"):
            assert os.stat(f"{s}/{n}").st_nlink == 3
        assert len({os.stat(f"{s}/{n}").st_ino for n in ("a", "b", "d/c")}) == 1
        _write(f"{s}/d/c", b"SHARED!", "r+b")
        assert _read(f"{s}/a") == b"SHARED!" and _read(f"{s}/b") == b"SHARED!"
        os.unlink(f"{s}/a")
        assert os.stat(f"{s}/b").st_nlink == 2
        assert _read(f"{s}/b") == b"SHARED!"
        _raises(errno.EEXIST, os.link, f"{s}/b", f"{s}/d/c")
        _raises(errno.EPERM, os.link, f"{s}/d", f"{s}/dlink")
        _raises(errno.ENOENT, os.link, f"{s}/nope", f"{s}/x")
        os.unlink(f"{s}/d/c")
        assert os.stat(f"{s}/b").st_nlink == 1
        # a hard link to a symlink is a link to the symlink itself
        os.symlink("b", f"{s}/sym")
        os.link(f"{s}/sym", f"{s}/sym2", follow_symlinks=False)
        assert os.lstat(f"{s}/sym").st_nlink == 2 and os.readlink(f"{s}/sym2") == "b"
    st(body)


def test_special_files(st):
    def body(s):
        os.mkfifo(f"{s}/fifo", 0o640)
        a = os.lstat(f"{s}/fifo")
        assert stat.S_ISFIFO(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o640
    st(body)


# -- attributes ----------------------------------------------------------------------

def test_chmod(st):
    def body(s):
        _write(f"{s}/f", b"x")
        os.mkdir(f"{s}/d")
        for m in (0o640, 0o000, 0o4755, 0o2750, 0o777, 0o400):
            os.chmod(f"{s}/f", m)
            assert stat.S_IMODE(os.stat(f"{s}/f").st_mode) == m, oct(m)
        for m in (0o1777, 0o2755, 0o500, 0o700):
            os.chmod(f"{s}/d", m)
            a = os.stat(f"{s}/d")
            assert stat.S_ISDIR(a.st_mode) and stat.S_IMODE(a.st_mode) == m, oct(m)
        fd = os.open(f"{s}/f", os.O_RDONLY)
        os.fchmod(fd, 0o604)
        os.close(fd)
        assert stat.S_IMODE(os.stat(f"{s}/f").st_mode) == 0o604
        c0 = os.stat(f"{s}/f").st_ctime_ns
        time.sleep(0.01)
        os.chmod(f"{s}/f", 0o600)
        assert os.stat(f"{s}/f").st_ctime_ns > c0
    st(body)


def test_utime_nanoseconds(st):
    def body(s):
        _write(f"{s}/f", b"x")
        os.mkdir(f"{s}/d")
        os.symlink("f", f"{s}/l")
        times = [(1_234_567_890_123_456_789, 1_600_000_000_000_000_001),
                 (1, 999_999_999), (4_102_444_800_000_000_000, 1_500_000_000_500_000_000)]
        for atime, mtime in times:
            for p in ("f", "d"):
                os.utime(f"{s}/{p}", ns=(atime, mtime))
                a = os.stat(f"{s}/{p}")
                assert (a.st_atime_ns, a.st_mtime_ns) == (atime, mtime), p
        # the symlink itself (lutimes), not its target
        os.utime(f"{s}/f", ns=(5, 6))
        os.utime(f"{s}/l", ns=(1_111_111_111_111_111_111, 1_222_222_222_222_222_222), follow_symlinks=False)
        assert os.lstat(f"{s}/l").st_mtime_ns == 1_222_222_222_222_222_222
        assert os.stat(f"{s}/f").st_mtime_ns == 6
        # "now"
        before = time.time_ns()
        os.utime(f"{s}/f")
        assert abs(os.stat(f"{s}/f").st_mtime_ns - before) < 5 * 10**9
        fd = os.open(f"{s}/f", os.O_RDONLY)
        os.utime(fd, ns=(7, 1_700_000_000_987_654_321))
        os.close(fd)
        assert os.stat(f"{s}/f").st_mtime_ns == 1_700_000_000_987_654_321
        # one time only (UTIME_OMIT for the other), as touch -a / touch -m do
        _utimensat(f"{s}/f", (123_000_000_456, None))
        a = os.stat(f"{s}/f")
        assert (a.st_atime_ns, a.st_mtime_ns) == (123_000_000_456, 1_700_000_000_987_654_321)
        _utimensat(f"{s}/f", (None, 987_000_000_001))
        a = os.stat(f"{s}/f")
        assert (a.st_atime_ns, a.st_mtime_ns) == (123_000_000_456, 987_000_000_001)
    st(body)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


UTIME_OMIT = (1 << 30) - 2


def _utimensat(path, times):
    ts = (_Timespec * 2)(*[_Timespec(0, UTIME_OMIT) if t is None else _Timespec(*divmod(t, 10**9))
                           for t in times])
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), ts, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


def test_user_xattrs(st):
    def body(s):
        _write(f"{s}/f", b"x")
        os.mkdir(f"{s}/d")
        for p in (f"{s}/f", f"{s}/d"):
            assert os.listxattr(p) == []
            os.setxattr(p, "user.one", b"1")
            os.setxattr(p, "user.bin", bytes(range(256)))
            os.setxattr(p, "user.empty", b"")
            os.setxattr(p, "user.big", b"v" * 60000)
            assert os.getxattr(p, "user.one") == b"1"
            assert os.getxattr(p, "user.bin") == bytes(range(256))
            assert os.getxattr(p, "user.empty") == b""
            assert os.getxattr(p, "user.big") == b"v" * 60000
            assert sorted(os.listxattr(p)) == ["user.big", "user.bin", "user.empty", "user.one"]
            os.setxattr(p, "user.one", b"uno")
            assert os.getxattr(p, "user.one") == b"uno"
            _raises(errno.EEXIST, os.setxattr, p, "user.one", b"x", os.XATTR_CREATE)
            _raises(errno.ENODATA, os.setxattr, p, "user.none", b"x", os.XATTR_REPLACE)
            os.setxattr(p, "user.one", b"eins", os.XATTR_REPLACE)
            os.setxattr(p, "user.two", b"2", os.XATTR_CREATE)
            assert os.getxattr(p, "user.one") == b"eins"
            _raises(errno.ENODATA, os.getxattr, p, "user.none")
            os.removexattr(p, "user.one")
            _raises(errno.ENODATA, os.getxattr, p, "user.one")
            _raises(errno.ENODATA, os.removexattr, p, "user.one")
            assert sorted(os.listxattr(p)) == ["user.big", "user.bin", "user.empty", "user.two"]
        # xattrs follow the inode through hard links and renames
        os.link(f"{s}/f", f"{s}/g")
        os.rename(f"{s}/f", f"{s}/d/f")
        assert os.getxattr(f"{s}/g", "user.two") == b"2"
        assert os.getxattr(f"{s}/d/f", "user.bin") == bytes(range(256))
        # unlinking one name keeps them
        os.unlink(f"{s}/g")
        assert os.getxattr(f"{s}/d/f", "user.two") == b"2"
    st(body)


def test_statvfs_reports_the_storage_folder(st, msmp):
    folder = msmp.state / "store"
    assert folder.is_dir()
    v = st(lambda s: os.statvfs(s))
    f = os.statvfs(folder)
    assert v.f_namemax == 255
    assert v.f_frsize > 0 and v.f_bsize > 0
    # the same device: total and free space agree (others may write meanwhile: allow slack)
    slack = 256 * MiB
    assert abs(v.f_blocks * v.f_frsize - f.f_blocks * f.f_frsize) <= v.f_frsize
    assert abs(v.f_bfree * v.f_frsize - f.f_bfree * f.f_frsize) <= slack
    # available = the folder's available space less its minimum free space (1MB here)
    assert abs(v.f_bavail * v.f_frsize - (f.f_bavail * f.f_frsize - 1_000_000)) <= slack
    assert v.f_files == f.f_files


# -- errors ---------------------------------------------------------------------------

def test_name_too_long(st):
    def body(s):
        ok, bad = "n" * 255, "n" * 256
        bad_utf8 = "é" * 128                          # 256 bytes in UTF-8
        ok_utf8 = "é" * 127 + "a"                     # 255 bytes
        _write(f"{s}/{ok}", b"fits")
        _write(f"{s}/{ok_utf8}", b"fits too")
        assert sorted(os.listdir(s)) == sorted([ok, ok_utf8])
        for name in (bad, bad_utf8):
            p = f"{s}/{name}"
            _raises(errno.ENAMETOOLONG, os.open, p, os.O_CREAT | os.O_WRONLY, 0o600)
            _raises(errno.ENAMETOOLONG, os.mkdir, p)
            _raises(errno.ENAMETOOLONG, os.symlink, "t", p)
            _raises(errno.ENAMETOOLONG, os.link, f"{s}/{ok}", p)
            _raises(errno.ENAMETOOLONG, os.rename, f"{s}/{ok}", p)
            _raises(errno.ENAMETOOLONG, os.stat, p)
            _raises(errno.ENAMETOOLONG, os.mkfifo, p)
        assert _read(f"{s}/{ok}") == b"fits"
    st(body)


def test_error_codes(st):
    def body(s):
        os.mkdir(f"{s}/d")
        _write(f"{s}/f", b"x")
        # ENOENT
        _raises(errno.ENOENT, os.open, f"{s}/missing", os.O_RDONLY)
        _raises(errno.ENOENT, os.stat, f"{s}/missing/x")
        _raises(errno.ENOENT, os.unlink, f"{s}/missing")
        _raises(errno.ENOENT, os.readlink, f"{s}/missing")
        _raises(errno.ENOENT, os.open, f"{s}/missing/new", os.O_CREAT | os.O_WRONLY)
        _raises(errno.ENOENT, os.getxattr, f"{s}/missing", "user.x")
        _raises(errno.ENOENT, os.chmod, f"{s}/missing", 0o600)
        # EEXIST
        _raises(errno.EEXIST, os.mkdir, f"{s}/f")
        _raises(errno.EEXIST, os.mkdir, f"{s}/d")
        _raises(errno.EEXIST, os.open, f"{s}/d", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        _raises(errno.EEXIST, os.link, f"{s}/f", f"{s}/d")
        # EISDIR
        _raises(errno.EISDIR, os.open, f"{s}/d", os.O_WRONLY)
        _raises(errno.EISDIR, os.open, f"{s}/d", os.O_RDWR)
        _raises(errno.EISDIR, os.unlink, f"{s}/d")
        _raises(errno.EISDIR, os.rename, f"{s}/f", f"{s}/d")
        fd = os.open(f"{s}/d", os.O_RDONLY)
        _raises(errno.EISDIR, os.read, fd, 10)
        os.close(fd)
        # ENOTDIR
        _raises(errno.ENOTDIR, os.listdir, f"{s}/f")
        _raises(errno.ENOTDIR, os.open, f"{s}/f/x", os.O_RDONLY)
        _raises(errno.ENOTDIR, os.mkdir, f"{s}/f/x")
        _raises(errno.ENOTDIR, os.rmdir, f"{s}/f")
        _raises(errno.ENOTDIR, os.rename, f"{s}/d", f"{s}/f")
        _raises(errno.ENOTDIR, os.open, f"{s}/f", os.O_RDONLY | os.O_DIRECTORY)
        # ENOTEMPTY
        _write(f"{s}/d/x", b"")
        _raises(errno.ENOTEMPTY, os.rmdir, f"{s}/d")
        # nothing changed by all of that
        assert sorted(os.listdir(s)) == ["d", "f"] and _read(f"{s}/f") == b"x"
    st(body)


def test_exdev_between_two_stores(msmp, request):
    """A rename or link from one store into another is EXDEV, like two filesystems."""
    request.node._smpfs = msmp
    old, pc = msmp.add_computer(), msmp.add_computer()
    msmp.associate(old, pc)
    old_store = str(msmp.request_capture(old))
    msmp.as_uid(old, lambda: _write(f"{old_store}/migrated.txt", b"from the old computer"))
    msmp.release_capture(old)
    own = str(msmp.request_capture(pc))                  # pc's own capture: writable by pc
    assert own != old_store

    def body():
        assert _read(f"{old_store}/migrated.txt") == b"from the old computer"   # pc may read it
        _write(f"{own}/mine", b"mine")
        _raises(errno.EXDEV, os.rename, f"{old_store}/migrated.txt", f"{own}/migrated.txt")
        _raises(errno.EXDEV, os.rename, f"{own}/mine", f"{old_store}/mine")
        _raises(errno.EXDEV, os.link, f"{old_store}/migrated.txt", f"{own}/hl")
        _raises(errno.EXDEV, os.link, f"{own}/mine", f"{old_store}/hl")
        assert _read(f"{old_store}/migrated.txt") == b"from the old computer"
        assert _read(f"{own}/mine") == b"mine"
        assert os.listdir(own) == ["mine"] and os.listdir(old_store) == ["migrated.txt"]
    msmp.as_uid(pc, body)


def test_many_files_and_concurrent_writers(st):
    """Several processes of the same uid writing different files at once."""
    def body(s):
        pids = []
        for w in range(4):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    rnd = random.Random(w)
                    for i in range(30):
                        data = rnd.randbytes(rnd.randrange(0, 300_000))
                        _write(f"{s}/w{w}-{i}", data)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        for w in range(4):
            rnd = random.Random(w)
            for i in range(30):
                data = rnd.randbytes(rnd.randrange(0, 300_000))
                got = _read(f"{s}/w{w}-{i}")
                assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), f"w{w}-{i}"
    st(body)
