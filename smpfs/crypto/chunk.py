"""Content encryption: how one block of a file becomes ciphertext.

A file's content is cut into **blocks** of ``BLOCK_SIZE`` (1 MiB, the size
of the kernel's write requests). Each block is stored as one file holding
its **chunks** of ``CHUNK_SIZE`` (64 KiB) plaintext, each sealed with
AES-256-GCM and followed by its 16-byte tag, so a 4 KiB random read
decrypts 64 KiB, not a whole MiB.

Nonces: every time a block is written it gets a fresh **counter** from the
store (see ``smpfs.store.counter``: a persisted high-water mark makes counters
unique across restarts and crashes). The nonce of chunk *i* is
``counter (8 bytes) || i (4 bytes)``, so no nonce repeats under one key,
rewrites of the same block included.

Associated data binds each chunk to store, inode, block number, chunk
index and whether it is the block's last chunk: a chunk cannot be moved to
another place, file or store, and a block cut short is detected. The
current counter of each block lives in the store's database, so an older
version of a block put back in place fails to authenticate (replay).
"""
from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

BLOCK_SIZE = 1 << 20
CHUNK_SIZE = 64 << 10
TAG_SIZE = 16
CHUNKS_PER_BLOCK = BLOCK_SIZE // CHUNK_SIZE
_AD = struct.Struct("<8s32sQQIB")
_NONCE = struct.Struct(">QI")
_MAGIC = b"smpfsB1\0"


class BlockAuthError(Exception):
    """A chunk failed authentication: tampered, truncated or replayed."""


def nchunks(length: int) -> int:
    return (length + CHUNK_SIZE - 1) // CHUNK_SIZE


def stored_size(length: int) -> int:
    """Bytes on disk for a block holding ``length`` plaintext bytes."""
    return length + nchunks(length) * TAG_SIZE


def chunk_offset(i: int) -> int:
    return i * (CHUNK_SIZE + TAG_SIZE)


def _ad(store_id: bytes, ino: int, blkno: int, i: int, last: bool) -> bytes:
    return _AD.pack(_MAGIC, store_id, ino, blkno, i, last)


def encrypt_block(aead: AESGCM, store_id: bytes, ino: int, blkno: int,
                  counter: int, data) -> bytearray:
    """Seal ``data`` (at most BLOCK_SIZE bytes) as the block's on-disk form."""
    n = len(data)
    mv = memoryview(data)
    count = nchunks(n)
    out = bytearray(stored_size(n))          # sealed in place: no copies under the GIL
    view = memoryview(out)
    pos = 0
    for i in range(count):
        piece = mv[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE]
        end = pos + len(piece) + TAG_SIZE
        aead.encrypt_into(_NONCE.pack(counter, i), piece,
                          _ad(store_id, ino, blkno, i, i == count - 1), view[pos:end])
        pos = end
    return out


def decrypt_chunks(aead: AESGCM, store_id: bytes, ino: int, blkno: int, counter: int,
                   length: int, first: int, raw) -> bytearray:
    """Open chunks ``first``.. of a block of plaintext ``length`` from ``raw``
    (the bytes on disk starting at ``chunk_offset(first)``)."""
    count = nchunks(length)
    mv = memoryview(raw)
    # how much plaintext the raw bytes hold: whole chunks from ``first``
    size, pos, i = 0, 0, first
    while pos < len(mv) and i < count:
        plain_len = min(CHUNK_SIZE, length - i * CHUNK_SIZE)
        size += plain_len
        pos += plain_len + TAG_SIZE
        i += 1
    out = bytearray(size)                    # opened in place: no copies under the GIL
    view = memoryview(out)
    pos, opos, i = 0, 0, first
    while opos < size:
        plain_len = min(CHUNK_SIZE, length - i * CHUNK_SIZE)
        piece = mv[pos:pos + plain_len + TAG_SIZE]
        if len(piece) != plain_len + TAG_SIZE:
            raise BlockAuthError(f"block {blkno} of inode {ino} is truncated")
        try:
            aead.decrypt_into(_NONCE.pack(counter, i), piece,
                              _ad(store_id, ino, blkno, i, i == count - 1), view[opos:opos + plain_len])
        except InvalidTag:
            raise BlockAuthError(f"chunk {i} of block {blkno} of inode {ino} fails authentication")
        pos += plain_len + TAG_SIZE
        opos += plain_len
        i += 1
    return out
