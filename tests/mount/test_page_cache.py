"""The kernel's page cache across opens: kept while a file is unchanged,
dropped when it changes or when its store changes state.

Observed through the daemon's request counters (``ping`` as root): a read
served from the page cache never reaches the daemon.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import time

from smpfs.mount import control
from smpfs.testing import HeldFile


def _reads(smp) -> int:
    return control.call(smp.state, "ping")["requests"].get("read", 0)


def _pushed(smp) -> int:
    return control.call(smp.state, "ping")["pages_pushed_bytes"]


def _read_all(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _patch(path, off: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, off) == len(data)
    finally:
        os.close(fd)


def test_second_open_of_unchanged_file_is_served_from_page_cache(smp):
    comp = smp.add_computer()
    store = smp.request_capture(comp)
    p = store / "f.bin"
    data = os.urandom(300_000)
    smp.as_uid(comp, lambda: p.write_bytes(data))
    assert smp.as_uid(comp, _read_all, p) == data
    before = _reads(smp)
    for _ in range(3):
        assert smp.as_uid(comp, _read_all, p) == data
    assert _reads(smp) == before, "an unchanged file was read from the daemon again"


def test_changed_file_is_read_anew_then_cached_again(smp):
    comp = smp.add_computer()
    store = smp.request_capture(comp)
    p = store / "f.bin"
    data = bytearray(os.urandom(300_000))
    smp.as_uid(comp, lambda: p.write_bytes(data))
    assert smp.as_uid(comp, _read_all, p) == data
    # a change inside a cached page, from another process: the next open sees it
    patch = os.urandom(100)
    smp.as_uid(comp, _patch, p, 5000, patch)
    data[5000:5100] = patch
    assert smp.as_uid(comp, _read_all, p) == data
    # shorter, then longer again: the dropped tail must not come back from the cache
    smp.as_uid(comp, os.truncate, p, 70_000)
    assert smp.as_uid(comp, _read_all, p) == data[:70_000]
    smp.as_uid(comp, os.truncate, p, 200_000)
    assert smp.as_uid(comp, _read_all, p) == bytes(data[:70_000]) + bytes(130_000)
    # unchanged again: cached again
    before = _reads(smp)
    assert smp.as_uid(comp, _read_all, p) == bytes(data[:70_000]) + bytes(130_000)
    assert _reads(smp) == before


def test_release_drops_cached_pages_so_the_access_table_is_asked_again(smp):
    src, dst = smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    store = smp.request_capture(src)
    p = store / "USMT.MIG"
    data = os.urandom(300_000)
    smp.as_uid(src, lambda: p.write_bytes(data))
    assert smp.as_uid(src, _read_all, p) == data              # in the page cache now
    smp.release_capture(src)
    assert smp.request_restore(dst) == store
    before = _reads(smp)
    assert smp.as_uid(dst, _read_all, p) == data
    assert _reads(smp) > before, "pages cached before the release were served after it"
    before = _reads(smp)
    assert smp.as_uid(dst, _read_all, p) == data              # unchanged since: cached
    assert _reads(smp) == before



def _resident(path, off: int, length: int) -> list[bool]:
    """Which pages of ``path`` in [off, off+length) the page cache holds (mincore
    of a mapping that is never touched, so nothing is read in by asking)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    span = off + length
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), span, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        anchor = ctypes.c_char.from_buffer(m)
        vec = ctypes.create_string_buffer((span + page - 1) // page)
        rc = libc.mincore(ctypes.addressof(anchor), span, vec)
        del anchor
        if rc != 0:
            raise OSError(ctypes.get_errno(), "mincore")
    finally:
        m.close()
    return [bool(b & 1) for b in vec.raw[off // page:span // page]]


def _pread(path, off: int, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


def _wait_resident(smp, comp, path, off, length, timeout=10.0) -> list[bool]:
    deadline = time.monotonic() + timeout
    while True:
        pages = smp.as_uid(comp, _resident, path, off, length)
        if all(pages) or time.monotonic() > deadline:
            return pages
        time.sleep(0.05)


CHUNK = 64 << 10         # smpfs's chunk (crypto/chunk.py CHUNK_SIZE)


def test_small_read_puts_the_rest_of_its_chunk_in_the_page_cache(smp):
    comp = smp.add_computer()
    store = smp.request_capture(comp)
    p = store / "f.bin"
    data = os.urandom(1 << 20)
    smp.as_uid(comp, lambda: p.write_bytes(data))
    smp.as_uid(comp, _drop, p)
    assert not any(smp.as_uid(comp, _resident, p, 0, 1 << 20))
    pushed = _pushed(smp)
    assert smp.as_uid(comp, _pread, p, 3 * CHUNK + 8192, 4096) == data[3 * CHUNK + 8192:3 * CHUNK + 12288]
    pages = _wait_resident(smp, comp, p, 3 * CHUNK, CHUNK)
    assert all(pages), f"chunk 3 not all in the page cache: {pages}"
    assert _pushed(smp) - pushed == CHUNK - 4096         # the 15 pages the kernel did not ask for
    elsewhere = smp.as_uid(comp, _resident, p, 5 * CHUNK, CHUNK)
    assert not any(elsewhere), "pages of a chunk nobody read are cached"
    before = _reads(smp)
    for off in range(3 * CHUNK, 4 * CHUNK, 4096):
        assert smp.as_uid(comp, _pread, p, off, 4096) == data[off:off + 4096]
    # 16 pages read, at most one READ (once, on a machine at load 12, one more READ
    # reached the daemon; without the push all 15 pushed pages are READs)
    assert _reads(smp) - before <= 1


def test_no_chunk_is_pushed_while_the_file_is_open_for_writing(smp):
    comp = smp.add_computer()
    store = smp.request_capture(comp)
    p = store / "f.bin"
    data = bytearray(os.urandom(1 << 20))
    smp.as_uid(comp, lambda: p.write_bytes(data))
    smp.as_uid(comp, _drop, p)
    with HeldFile(comp.uid, p, os.O_RDWR) as w:
        assert smp.as_uid(comp, _pread, p, 2 * CHUNK, 4096) == data[2 * CHUNK:2 * CHUNK + 4096]
        time.sleep(0.5)
        assert smp.as_uid(comp, _resident, p, 2 * CHUNK + 4096, CHUNK - 4096) == [False] * 15
        w.do("pwrite", b"new!" * 1024, 2 * CHUNK + 8192)
    data[2 * CHUNK + 8192:2 * CHUNK + 12288] = b"new!" * 1024
    # closed again: pushes resume, with what is there now
    assert smp.as_uid(comp, _pread, p, 2 * CHUNK + 40960, 4096) == data[2 * CHUNK + 40960:2 * CHUNK + 45056]
    assert all(_wait_resident(smp, comp, p, 2 * CHUNK, CHUNK))
    assert smp.as_uid(comp, _read_all, p) == data


def _drop(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
