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
import logging
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..crypto import chunk
from ..crypto.chunk import BLOCK_SIZE
from ..crypto.keys import StoreKeys
from . import diskio
from .diskio import fsync_dir
from .metamac import MetaMac, seal_all
from .reserve import ensure_reserve

log = logging.getLogger("smpfs.store")

#: The store format this code writes. Every change of what is on disk bumps it
#: and adds a step to :data:`MIGRATIONS` (and a name to :data:`FEATURES`).
FORMAT_VERSION = 4
#: What each format added, as ``store.json`` lists it in ``features``.
FEATURES = {2: "inline-blocks", 3: "block-keys", 4: "metadata-mac"}
ROOT = 1
NAME_MAX = 255

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    nlink INTEGER NOT NULL, size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0, target BLOB,
    nblocks INTEGER NOT NULL DEFAULT 0,   -- its block-map rows (format 4: in its MAC)
    mac BLOB);                            -- format 4: see metamac.py
CREATE TABLE IF NOT EXISTS dentries (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
    mac BLOB,
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
    salt BLOB,                      -- 16 random bytes: this version's own key (NULL: sealed by format 1-2)
    mac BLOB,
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
    stored: int = 0          # plaintext bytes of content actually stored (holes are not): st_blocks


#: ``stored`` of the inode aliased ``i``, as a column of the same query (the block map's primary key)
STORED_COL = "(SELECT coalesce(sum(b.length), 0) FROM blocks b WHERE b.ino = i.ino)"


def killed_mode(mode: int) -> int:
    """A regular file's mode after a write, truncate or chown: setuid goes, and
    setgid when group-execute is set (without it, setgid marks mandatory locking)."""
    if not stat.S_ISREG(mode):
        return mode
    return mode & ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))


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


# -- the format: store.json, versions, migrations -------------------------------------

STORE_JSON = "store.json"


def features(version: int) -> list[str]:
    """The features a store of ``version`` has (``store.json`` ``features``)."""
    return [FEATURES[v] for v in sorted(FEATURES) if v <= version]


def write_store_json(path: Path, store_id: str, version: int) -> None:
    """Write ``store.json`` atomically (temp file, fsync, rename)."""
    text = json.dumps({"format": "smpfs-store", "version": version, "store_id": store_id,
                       "block_size": BLOCK_SIZE, "chunk_size": chunk.CHUNK_SIZE,
                       "cipher": "AES-256-GCM", "names": "AES-SIV",
                       "features": features(version)}, indent=1) + "\n"
    tmp = Path(path) / (STORE_JSON + ".tmp")
    io = diskio.io
    fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        io.write(fd, text.encode())
        io.fsync(fd)
    finally:
        io.close(fd)
    io.rename(tmp, Path(path) / STORE_JSON)


def _refuse(path: Path, why: str) -> OSError:
    return err(errno.EPROTO, f"store {Path(path).name[:12]}… {why}")


def check_format(path: Path, store_id: str, db: sqlite3.Connection) -> int:
    """Read ``store.json`` and ``store.db``'s ``meta.format_version``, refuse
    what this code does not know (a newer version, an unknown feature, another
    store's files, other block or chunk sizes) and return the store's version.

    ``store.db`` says what its tables hold; ``store.json`` may lag one
    migration behind it (a crash between the two writes), never lead."""
    row = db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
    try:
        version = int(row[0]) if row else 0
    except ValueError:
        raise _refuse(path, f"has a damaged format version {row[0]!r} in store.db")
    if version < 1:
        raise _refuse(path, "has no format version in store.db: not a state store")
    if version > FORMAT_VERSION:
        raise _refuse(path, f"has store format {version}; this smpfs reads formats 1 to {FORMAT_VERSION}:"
                            " upgrade smpfs to open it")
    try:
        meta = json.loads((Path(path) / STORE_JSON).read_text())
    except FileNotFoundError:
        raise _refuse(path, f"has no {STORE_JSON}")
    except (ValueError, UnicodeDecodeError):
        raise _refuse(path, f"has a damaged {STORE_JSON}")
    if not isinstance(meta, dict) or meta.get("format") != "smpfs-store":
        raise _refuse(path, f"has a {STORE_JSON} that is not an smpfs store's")
    jv = meta.get("version")
    if not isinstance(jv, int) or jv < 1:
        raise _refuse(path, f"has a damaged version {jv!r} in {STORE_JSON}")
    if jv > FORMAT_VERSION:
        raise _refuse(path, f"has store format {jv}; this smpfs reads formats 1 to {FORMAT_VERSION}:"
                            " upgrade smpfs to open it")
    if jv > version:
        raise _refuse(path, f"says format {jv} in {STORE_JSON} but store.db holds format {version}")
    unknown = [f for f in meta.get("features", []) if f not in FEATURES.values()]
    if unknown:
        raise _refuse(path, f"(format {jv}) uses features this smpfs does not know: {', '.join(map(str, unknown))}")
    if meta.get("store_id") != store_id:
        raise _refuse(path, f"has the {STORE_JSON} of another store ({str(meta.get('store_id'))[:12]}…)")
    if meta.get("block_size") != BLOCK_SIZE or meta.get("chunk_size") != chunk.CHUNK_SIZE:
        raise _refuse(path, f"has block size {meta.get('block_size')} / chunk size {meta.get('chunk_size')};"
                            f" this smpfs uses {BLOCK_SIZE} / {chunk.CHUNK_SIZE}")
    return version


def _to_v2(db: sqlite3.Connection, keys: StoreKeys) -> None:
    """Format 2: small blocks sealed into ``blocks.data`` (inline blocks).
    Some format-1 stores already have the column (it was once added without
    a version change)."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(blocks)")}
    if "data" not in cols:
        db.execute("ALTER TABLE blocks ADD COLUMN data BLOB")
    db.execute("CREATE INDEX IF NOT EXISTS dentries_cursor ON dentries (parent, id)")


def _to_v3(db: sqlite3.Connection, keys: StoreKeys) -> None:
    """Format 3: each block version sealed under a key of its own, from a random
    salt in ``blocks.salt``; blocks sealed before keep NULL (counter nonces)."""
    db.execute("ALTER TABLE blocks ADD COLUMN salt BLOB")


#: (version, step): each step brings a store from version-1 to version, in one
#: transaction of store.db that also records the new version.
def _to_v4(db: sqlite3.Connection, keys: StoreKeys) -> None:
    """Format 4: inode rows, directory entries and block-map rows MACed
    (metamac.py). What the store holds at the migration is taken as it is."""
    db.execute("ALTER TABLE inodes ADD COLUMN nblocks INTEGER NOT NULL DEFAULT 0")
    for table in ("inodes", "dentries", "blocks"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN mac BLOB")
    seal_all(db, MetaMac(keys.meta_mac, keys.store_id))


MIGRATIONS = [(2, _to_v2), (3, _to_v3), (4, _to_v4)]


def migrate(path: Path, keys: StoreKeys, db: sqlite3.Connection, version: int) -> int:
    """Bring a store from ``version`` to :data:`FORMAT_VERSION`, one recorded
    step at a time (each its own transaction), then rewrite ``store.json``.
    A crash between steps leaves a store of the last finished step's version."""
    for target, step in MIGRATIONS:
        if target <= version:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db, keys)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('format_version', ?)", (str(target),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("store %s…: migrated from format %d to %d", keys.store_id.hex()[:12], version, target)
        version = target
    return version


def sync_store_json(path: Path, store_id: str, version: int) -> None:
    """Make ``store.json`` say ``version`` (after a migration, or one a crash cut short)."""
    try:
        current = json.loads((Path(path) / STORE_JSON).read_text())
    except (OSError, ValueError):
        current = {}
    if current.get("version") != version or current.get("features") != features(version):
        write_store_json(path, store_id, version)
        fsync_dir(Path(path))


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
    write_store_json(path, store_id, FORMAT_VERSION)
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
        seal_all(conn, MetaMac(keys.meta_mac, keys.store_id))
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
        diskio.io.rename(live, dying)
        fsync_dir(folder)
    if not dying.exists():
        return 0
    freed = tree_bytes(dying)
    diskio.io.rmtree(dying)
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
