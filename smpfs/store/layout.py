"""A state store's on-disk layout: its files, its sqlite schema, its version.

A state store is a directory in a storage folder::

    FOLDER/<store id>/store.json     format version and id (no secrets)
    FOLDER/<store id>/store.db       sqlite: inodes, directory entries, xattrs, block map
    FOLDER/<store id>/counter        nonce counter high-water mark (see counter.py)
    FOLDER/<store id>/b/<xx>/<ctr>   encrypted blocks (see blocks.py and chunk.py)

and the storage folder holds the commit reserve (see reserve.py). This module
creates and destroys stores and holds what every other module of the store
shares: the root inode, the name rules, the attribute row, ``err``.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..crypto import chunk
from ..crypto.chunk import BLOCK_SIZE
from ..crypto.keys import StoreKeys
from .diskio import fsync_dir
from .reserve import ensure_reserve

FORMAT_VERSION = 1
ROOT = 1
NAME_MAX = 255

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    nlink INTEGER NOT NULL, size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0, target BLOB);
CREATE TABLE IF NOT EXISTS dentries (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
    UNIQUE (parent, name));
CREATE INDEX IF NOT EXISTS dentries_ino ON dentries (ino);
CREATE INDEX IF NOT EXISTS dentries_cursor ON dentries (parent, id);
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ino, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    ino INTEGER NOT NULL, blkno INTEGER NOT NULL,
    counter INTEGER NOT NULL, length INTEGER NOT NULL,
    data BLOB,                      -- sealed block kept inline (small blocks), else NULL: in b/
    PRIMARY KEY (ino, blkno)) WITHOUT ROWID;
"""

ATTR_COLS = "ino, mode, uid, gid, nlink, size, atime_ns, mtime_ns, ctime_ns, rdev"


@dataclass(slots=True)
class Attr:
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int


def err(code: int, what: str = "") -> OSError:
    """The ``OSError(errno, message)`` every refusal of the store raises."""
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


def check_name(name: bytes) -> None:
    """Refuse names the kernel should already have refused (don't trust it)."""
    if len(name) > NAME_MAX:
        raise err(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name:
        raise err(errno.EINVAL, "invalid file name")
    if name in (b".", b".."):
        raise err(errno.EEXIST)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           cached_statements=256)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=10000")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA cache_size=-2048")          # 2 MiB page cache per open store
    return conn


# -- creating and destroying stores -------------------------------------------

def store_dir(folder: Path, store_id: str) -> Path:
    return Path(folder) / store_id


def create_store(folder: Path, store_id: str, keys: StoreKeys, owner_uid: int,
                 owner_gid: int | None = None) -> Path:
    """Create an empty store (root dir owned by ``owner_uid``) and return its path."""
    path = store_dir(folder, store_id)
    path.mkdir(mode=0o700)
    (path / "b").mkdir(mode=0o700)
    for i in range(256):
        (path / "b" / f"{i:02x}").mkdir(mode=0o700)
    (path / "store.json").write_text(json.dumps(
        {"format": "smpfs-store", "version": FORMAT_VERSION, "store_id": store_id,
         "block_size": BLOCK_SIZE, "chunk_size": chunk.CHUNK_SIZE,
         "cipher": "AES-256-GCM", "names": "AES-SIV"}, indent=1) + "\n")
    conn = connect(path / "store.db")
    with conn:
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO meta VALUES (?, ?)",
                         [("format_version", str(FORMAT_VERSION)), ("store_id", store_id),
                          ("counter_hwm", "0")])
        now = time.time_ns()
        gid = owner_uid if owner_gid is None else owner_gid
        conn.execute("INSERT INTO inodes (ino, mode, uid, gid, nlink, size, atime_ns, mtime_ns, ctime_ns)"
                     " VALUES (?, ?, ?, ?, 2, 0, ?, ?, ?)",
                     (ROOT, stat.S_IFDIR | 0o700, owner_uid, gid, now, now, now))
    conn.close()
    fsync_dir(path)
    ensure_reserve(Path(folder))
    fsync_dir(Path(folder))
    return path


def destroy_store(folder: Path, store_id: str) -> int:
    """Remove a store's files for good; return the bytes freed.

    Crash-safe and idempotent: the directory is first renamed aside
    (atomically), then removed; a rerun finishes a half-done removal."""
    folder = Path(folder)
    live, dying = folder / store_id, folder / f".deleting-{store_id}"
    if live.exists():
        os.rename(live, dying)
        fsync_dir(folder)
    if not dying.exists():
        return 0
    freed = tree_bytes(dying)
    shutil.rmtree(dying)
    fsync_dir(folder)
    return freed


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total
