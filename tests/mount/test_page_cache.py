"""The kernel's page cache across opens: kept while a file is unchanged,
dropped when it changes or when its store changes state.

Observed through the daemon's request counters (``ping`` as root): a read
served from the page cache never reaches the daemon.
"""
from __future__ import annotations

import os

from smpfs.mount import control


def _reads(smp) -> int:
    return control.call(smp.state, "ping")["requests"].get("read", 0)


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
