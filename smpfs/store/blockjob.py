"""A block on its way to disk or back: the dirty plaintext kept in memory,
the job that seals and writes a block file (any thread), and the pieces of a
read served from stored blocks. Used by blocks.py."""
from __future__ import annotations

import os

from ..crypto import chunk
from ..crypto.keys import BLOCK_SALT_BYTES
from . import diskio


class Dirty:
    """A block being modified in memory: its whole plaintext."""
    __slots__ = ("data",)

    def __init__(self, data: bytearray):
        self.data = data


class BlockJob:
    """One block on its way to disk: sealed and written by :meth:`run` (any
    thread: pure crypto and file I/O), then recorded by
    :meth:`StateStore.finish_block` (the store's thread)."""
    __slots__ = ("store", "ino", "blkno", "counter", "data", "salt")

    def __init__(self, store, ino, blkno, counter, data):
        self.store, self.ino, self.blkno, self.counter, self.data = store, ino, blkno, counter, data
        self.salt = os.urandom(BLOCK_SALT_BYTES)      # this version's own key (format 3)

    def seal(self) -> bytearray:
        st = self.store
        aead, nonce_ctr = st.block_cipher(self.salt, self.counter)
        return chunk.encrypt_block(aead, st.sid, self.ino, self.blkno, nonce_ctr, self.data)

    def run(self) -> None:
        write_block_file(self.store.block_path(self.counter), self.seal())


class ReadPart:
    """A piece of a read served from a stored block: see :meth:`StateStore.fetch`."""
    __slots__ = ("ino", "blkno", "counter", "length", "first", "last", "start", "n", "salt")

    def __init__(self, ino, blkno, counter, length, first, last, start, n, salt=None):
        self.ino, self.blkno, self.counter, self.length = ino, blkno, counter, length
        self.first, self.last, self.start, self.n, self.salt = first, last, start, n, salt


def write_block_file(path: str, data) -> None:
    """Create a block file. A file already of that name can only be an orphan
    that a rolled-back store left (the store's counter starts above every
    counter its block map points to): it is replaced."""
    io = diskio.io
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = io.open(path, flags, 0o600)
    except FileExistsError:
        io.unlink(path)
        fd = io.open(path, flags, 0o600)
    try:
        mv = memoryview(data)
        while mv:
            mv = mv[io.write(fd, mv):]
    except BaseException:
        io.close(fd)
        io.unlink(path)
        raise
    io.close(fd)
