"""Block counters: a high-water mark made durable before any counter under it is used.

Every sealed block takes a fresh counter: its file name, and the order of two
versions of one block written by one process. (Up to store format 2 it was
also the block's nonce; from format 3 on each block has a key of its own from
a random salt, so no nonce depends on a counter surviving: see
``smpfs.crypto.keys.StoreKeys.block_aead``.) The store reserves counters in
ranges of ``COUNTER_RESERVE`` and records the end of each range in the
``counter`` file (and, through ``on_reserve``, in smp.db) *before* using any
of it, and opens above every record and every counter its block map holds.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import diskio

COUNTER_RESERVE = 1 << 16          # counters reserved per durable high-water-mark bump

COUNTER_FILE = "counter"


def read_counter_file(path: Path) -> int:
    try:
        return int((Path(path) / COUNTER_FILE).read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        return 0               # damaged: the block map and smp.db's record still bound it


def write_counter_file(path: Path, value: int) -> None:
    """Durably record the counter high-water mark (write, fsync, rename, fsync dir)."""
    tmp = Path(path) / (COUNTER_FILE + ".tmp")
    io = diskio.io
    fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        io.write(fd, f"{value}\n".encode())
        io.fsync(fd)
    finally:
        io.close(fd)
    io.rename(tmp, Path(path) / COUNTER_FILE)
    io.fsync_dir(Path(path))


class NonceCounter:
    """A store's counter source. ``hwm``: the largest record of the high-water
    mark; ``on_reserve(limit)``: durably records a reservation elsewhere too
    (called before the counter file is written)."""
    __slots__ = ("path", "on_reserve", "_counter", "_limit")

    def __init__(self, path: Path, hwm: int, *, on_reserve=None):
        self.path = Path(path)
        self.on_reserve = on_reserve
        self._counter = hwm                            # never reuse anything at or under hwm
        self._limit = hwm

    def next(self) -> int:
        if self._counter >= self._limit:
            # Reserve a range and make the reservation durable *before* using it.
            # It lives in its own small file, not in the batch transaction, so
            # reserving never commits a half-done operation.
            limit = self._counter + COUNTER_RESERVE
            if self.on_reserve is not None:
                self.on_reserve(limit)
            write_counter_file(self.path, limit)
            self._limit = limit
        self._counter += 1
        return self._counter
