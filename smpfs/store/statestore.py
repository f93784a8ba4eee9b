"""One state store's content: a small POSIX filesystem kept encrypted on disk.

A state store is a directory in a storage folder::

    FOLDER/<store id>/store.json     format version and id (no secrets)
    FOLDER/<store id>/store.db       sqlite: inodes, directory entries, xattrs, block map
    FOLDER/<store id>/counter        nonce counter high-water mark (fsynced before use)
    FOLDER/<store id>/b/<xx>/<ctr>   encrypted blocks (see chunk.py)

Everything a user wrote is encrypted: file content in the block files, file
names (AES-SIV), symlink targets and xattr names/values in store.db. What
is visible at rest is the shape: sizes, modes, owners, times, link counts.

This module knows nothing of FUSE. It raises ``OSError(errno, message)``
for every refusal, so the FUSE layer only translates. Local inode numbers
start at 1 (the store's root directory) and are never reused.

Durability (see docs/architecture.md):

* Blocks are copy-on-write: a rewritten block goes to a new file named by
  a fresh counter, and the superseded file is only unlinked after a
  *durable* commit, so a crash leaves either the old or the new version.
* Metadata changes go into one open sqlite transaction, committed on a
  timer, on close, on fsync and at unmount (never per write()).
* ``fsync`` writes the inode's dirty blocks, makes those block files
  durable, then commits and fsyncs the WAL.
* Counters (nonces) come from a high-water mark that is made durable
  before any counter under it is used, so none is ever used twice.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import stat
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..crypto import chunk
from ..crypto.chunk import BLOCK_SIZE
from ..crypto.keys import StoreKeys

FORMAT_VERSION = 1
ROOT = 1
NAME_MAX = 255
COUNTER_RESERVE = 1 << 16          # counters reserved per durable high-water-mark bump
DIRTY_MAX = 32 << 20               # plaintext bytes one store buffers before writing its oldest block
DIRTY_TOTAL_MAX = 64 << 20         # ... and all open stores together (the daemon's memory stays flat)
INLINE_MAX = 16 << 10              # blocks this small are sealed into store.db, not a file of their own
SPACE_RECHECK = 0.25               # seconds between statvfs() of the storage folder while writing
SPACE_SLACK = 256 << 20            # ...and at every write within this much of the minimum free space
_XATTR_VALUE = b"xv"
_XATTR_NAME = b"xn"
_LINK_TARGET = b"lt"

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


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


def check_name(name: bytes) -> None:
    """Refuse names the kernel should already have refused (don't trust it)."""
    if len(name) > NAME_MAX:
        raise _err(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name:
        raise _err(errno.EINVAL, "invalid file name")
    if name in (b".", b".."):
        raise _err(errno.EEXIST)


def _connect(path: Path) -> sqlite3.Connection:
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
    conn = _connect(path / "store.db")
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
    _fsync_dir(path)
    ensure_reserve(Path(folder))
    _fsync_dir(Path(folder))
    return path


def destroy_store(folder: Path, store_id: str) -> int:
    """Remove a store's files for good; return the bytes freed.

    Crash-safe and idempotent: the directory is first renamed aside
    (atomically), then removed; a rerun finishes a half-done removal."""
    folder = Path(folder)
    live, dying = folder / store_id, folder / f".deleting-{store_id}"
    if live.exists():
        os.rename(live, dying)
        _fsync_dir(folder)
    if not dying.exists():
        return 0
    freed = tree_bytes(dying)
    shutil.rmtree(dying)
    _fsync_dir(folder)
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- one open store ------------------------------------------------------------

class _Dirty:
    """A block being modified in memory: its whole plaintext."""
    __slots__ = ("data",)

    def __init__(self, data: bytearray):
        self.data = data


class BlockJob:
    """One block on its way to disk: sealed and written by :meth:`run` (any
    thread: pure crypto and file I/O), then recorded by
    :meth:`StateStore.finish_block` (the store's thread)."""
    __slots__ = ("store", "ino", "blkno", "counter", "data")

    def __init__(self, store, ino, blkno, counter, data):
        self.store, self.ino, self.blkno, self.counter, self.data = store, ino, blkno, counter, data

    def run(self) -> None:
        st = self.store
        sealed = chunk.encrypt_block(st.keys.content, st.sid, self.ino, self.blkno, self.counter, self.data)
        write_block_file(st._block_path(self.counter), sealed)


class ReadPart:
    """A piece of a read served from a stored block: see :meth:`StateStore.fetch`."""
    __slots__ = ("ino", "blkno", "counter", "length", "first", "last", "start", "n")

    def __init__(self, ino, blkno, counter, length, first, last, start, n):
        self.ino, self.blkno, self.counter, self.length = ino, blkno, counter, length
        self.first, self.last, self.start, self.n = first, last, start, n


_OPEN = weakref.WeakSet()          # every open StateStore, for the daemon-wide dirty budget


def _dirty_total() -> int:
    return sum(st._dirty_bytes for st in _OPEN)


class StateStore:
    """An open state store. Not thread-safe: use it from one thread (the
    daemon's trio thread); block crypto and I/O are pure functions that can
    run elsewhere."""

    def __init__(self, path: Path, keys: StoreKeys, *, min_free_bytes=lambda: 0,
                 min_counter: int = 0, on_reserve=None):
        self.path = Path(path)
        self.keys = keys
        self.sid = keys.store_id
        self.min_free_bytes = min_free_bytes          # callable: the folder's current rule
        self.read_only = False
        if not (self.path / "store.db").exists():
            raise _err(errno.ENOENT, f"no store at {self.path}")
        self.db = _connect(self.path / "store.db")
        version = int(self._meta("format_version"))
        if version > FORMAT_VERSION:
            raise _err(errno.EPROTO, f"store format {version} is newer than this smpfs ({FORMAT_VERSION})")
        ensure_reserve(self.path.parent)
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(blocks)")}
        if "data" not in cols:                       # stores made before inline blocks
            self.db.execute("ALTER TABLE blocks ADD COLUMN data BLOB")
        self.db.execute("CREATE INDEX IF NOT EXISTS dentries_cursor ON dentries (parent, id)")
        self._in_txn = False
        self._dirty: OrderedDict[tuple[int, int], _Dirty] = OrderedDict()
        self._dirty_bytes = 0
        self._unsynced: dict[int, set[int]] = {}      # ino -> counters written since its last fsync
        self._unsynced_all: set[int] = set()           # counters written since the last durable point
        self._superseded: list[int] = []               # block files to unlink after a durable commit
        self._inflight: dict[tuple[int, int], BlockJob] = {}   # blocks being sealed elsewhere
        self._errors: dict[int, OSError] = {}          # ino -> a write-back error to report
        self._pins: dict[int, int] = {}                # counters a read in flight still needs
        #: ``submit(job)`` hands a BlockJob to a worker and later calls
        #: ``finish_block(job, error)``; None = do it inline (tools, tests, fsck).
        self.submit = None
        _OPEN.add(self)
        # the largest of every record of the high-water mark: the store's own
        # (store.db, counter file) and the SMP's (``min_counter``, from smp.db)
        hwm = max(int(self._meta("counter_hwm")), read_counter_file(self.path), min_counter)
        self.on_reserve = on_reserve                   # durably records a reservation elsewhere too
        # no counter record but blocks sealed: the record was lost; counting from 0 again would reuse nonces
        self._counter_lost = hwm == 0 and self.db.execute("SELECT 1 FROM blocks LIMIT 1").fetchone() is not None
        self._counter = hwm                            # never reuse anything at or under hwm
        self._counter_limit = hwm
        self._wal_fd = None
        self._wal_synced = False                       # every commit so far is durable?
        self._commit_seq = 0
        self._space = (0.0, 0)                         # (when, free bytes) of the last statvfs
        self.changed = False                           # anything to commit?
        self.blocks_written = 0

    # -- transactions ----------------------------------------------------------

    def _meta(self, key: str) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else "0"

    def _w(self):
        """Enter the batch transaction before any change."""
        if not self.db.in_transaction:              # (sqlite rolls a batch back by itself on a full disk)
            self.db.execute("BEGIN IMMEDIATE")
        self._in_txn = True
        self.changed = True

    def commit(self) -> None:
        """Commit the batch (not necessarily durable: WAL, synchronous=NORMAL)."""
        if self._in_txn:
            self._in_txn = False
            if not self.db.in_transaction:
                raise _err(errno.EIO, "sqlite rolled the batch back (disk full?)")
            ensure_commit_room(self.path.parent)
            try:
                self.db.execute("COMMIT")
            except sqlite3.OperationalError:
                # a full disk: if sqlite still holds the batch, spend the reserve
                # and try again; acknowledged changes must not be rolled back
                if not (self.db.in_transaction and release_reserve(self.path.parent)):
                    raise
                self.db.execute("COMMIT")
            self._wal_synced = False
            self._commit_seq += 1

    def sync(self) -> None:
        """A durable point, done here and now: every block and every change so
        far survives a power cut; superseded block files are then unlinked.
        (The daemon does the same without blocking its loop: see prepare_durable.)"""
        self.flush_all()
        if self._inflight:
            raise RuntimeError("sync with blocks in flight: drain them first")
        work, done = self.prepare_durable()
        work()
        unlink_files(done())
        self.changed = False

    def prepare_durable(self, ino: int | None = None):
        """Commit now, and return ``(work, done)``: ``work()`` (any thread) makes
        the inode's blocks (or, with ``ino=None``, every block) and every commit
        so far durable; ``done()`` (this thread) records that and returns the
        superseded block files that may now be unlinked. The caller writes
        dirty blocks and waits for those in flight first."""
        self.commit()
        seq = self._commit_seq
        if ino is None:
            counters = set(self._unsynced_all)
            whole_fs = bool(counters)
        else:
            counters = self._unsynced.pop(ino, set())
            whole_fs = len(counters) > 8
        paths = [self._block_path(c) for c in counters]
        wal_fd = None if self._wal_synced else self._wal_dup()
        n_superseded = len(self._superseded) if ino is None else 0
        root = str(self.path)

        def work() -> None:
            if not (whole_fs or paths or wal_fd is not None):
                return
            try:
                if whole_fs:
                    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        _syncfs(fd)
                    finally:
                        os.close(fd)
                else:
                    for path in paths:
                        try:
                            fd = os.open(path, os.O_RDONLY)
                        except FileNotFoundError:
                            continue                   # superseded meanwhile
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                    for d in {os.path.dirname(p) for p in paths}:
                        _fsync_dir(Path(d))
                if wal_fd is not None:
                    os.fsync(wal_fd)
            finally:
                if wal_fd is not None:
                    os.close(wal_fd)

        def done() -> list[str]:
            if self._commit_seq == seq:
                self._wal_synced = True
            self._unsynced_all -= counters
            for c in counters:
                for rest in self._unsynced.values():
                    rest.discard(c)
            if ino is None:
                self.changed = False
            taken, self._superseded = self._superseded[:n_superseded], self._superseded[n_superseded:]
            keep = [c for c in taken if c in self._pins]     # a read in flight still needs it
            self._superseded[:0] = keep
            gone = [c for c in taken if c not in self._pins]
            return [self._block_path(c) for c in gone]
        work.idle = not (whole_fs or paths or wal_fd is not None)
        return work, done

    def _wal_dup(self) -> int | None:
        if self._wal_fd is None:
            try:
                self._wal_fd = os.open(self.path / "store.db-wal", os.O_RDONLY)
            except FileNotFoundError:
                return None
        return os.dup(self._wal_fd)

    def close(self) -> None:
        """Everything durable, then close. The store can be destroyed after."""
        if self.db is None:
            return
        self.sync()
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            pass
        if self._wal_fd is not None:
            os.close(self._wal_fd)
        self.db.close()
        self.db = None

    def abandon(self) -> None:
        """Drop everything unwritten (the store is being destroyed)."""
        self._dirty.clear()
        self._dirty_bytes = 0
        if self._wal_fd is not None:
            os.close(self._wal_fd)
        if self.db is not None:
            try:
                if self._in_txn:
                    self.db.execute("ROLLBACK")
            finally:
                self.db.close()
        self.db = None

    # -- counters --------------------------------------------------------------

    def _next_counter(self) -> int:
        if self._counter >= self._counter_limit:
            if self._counter_lost:
                raise _err(errno.EIO, f"{self.path}/{COUNTER_FILE} is missing: refusing to risk reusing a nonce")
            # Reserve a range and make the reservation durable *before* using it.
            # It lives in its own small file, not in the batch transaction, so
            # reserving never commits a half-done operation.
            limit = self._counter + COUNTER_RESERVE
            if self.on_reserve is not None:
                self.on_reserve(limit)
            write_counter_file(self.path, limit)
            self._counter_limit = limit
        self._counter += 1
        return self._counter

    # -- attributes --------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        row = self.db.execute(f"SELECT {ATTR_COLS} FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise _err(errno.ENOENT)
        return Attr(*row)

    def setattr(self, ino: int, *, mode=None, uid=None, gid=None, size=None,
                atime_ns=None, mtime_ns=None, ctime_ns=None) -> Attr:
        self._writable()
        a = self.getattr(ino)
        if size is not None and size != a.size:
            if stat.S_ISDIR(a.mode):
                raise _err(errno.EISDIR)
            self.truncate(ino, size)
        sets, args = [], []
        now = time.time_ns()
        if mode is not None:
            sets.append("mode=?")
            args.append(stat.S_IFMT(a.mode) | stat.S_IMODE(mode))
        if uid is not None:
            sets.append("uid=?")
            args.append(uid)
        if gid is not None:
            sets.append("gid=?")
            args.append(gid)
        if (uid is not None or gid is not None) and stat.S_ISREG(a.mode) and mode is None:
            # chown clears setuid/setgid, as on any POSIX filesystem
            sets.append("mode=?")
            args.append(a.mode & ~(stat.S_ISUID | stat.S_ISGID))
        if atime_ns is not None:
            sets.append("atime_ns=?")
            args.append(atime_ns)
        if mtime_ns is not None:
            sets.append("mtime_ns=?")
            args.append(mtime_ns)
        sets.append("ctime_ns=?")
        args.append(ctime_ns if ctime_ns is not None else now)
        self._w()
        self.db.execute(f"UPDATE inodes SET {', '.join(sets)} WHERE ino=?", (*args, ino))
        return self.getattr(ino)

    def _touch(self, ino: int, now: int | None = None) -> None:
        now = now or time.time_ns()
        self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE ino=?", (now, now, ino))

    def _writable(self) -> None:
        if self.read_only:
            raise _err(errno.EROFS)

    # -- directory entries -------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int:
        if name == b".":
            return parent
        if name == b"..":
            row = self.db.execute("SELECT parent FROM dentries WHERE ino=? LIMIT 1", (parent,)).fetchone()
            return row[0] if row else ROOT
        if len(name) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        row = self.db.execute("SELECT ino FROM dentries WHERE parent=? AND name=?",
                              (parent, self.keys.seal_name(parent, name))).fetchone()
        if row is None:
            raise _err(errno.ENOENT)
        return row[0]

    def lookup_attr(self, parent: int, name: bytes) -> Attr:
        """``getattr(lookup(parent, name))`` in one query (the hot path of every open)."""
        if name in (b".", b"..") or len(name) > NAME_MAX:
            return self.getattr(self.lookup(parent, name))
        row = self.db.execute(
            f"SELECT {', '.join('i.' + c.strip() for c in ATTR_COLS.split(','))}"
            " FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent=? AND d.name=?",
            (parent, self.keys.seal_name(parent, name))).fetchone()
        if row is None:
            raise _err(errno.ENOENT)
        return Attr(*row)

    def readdir(self, parent: int, after: int = 0, limit: int = 1000):
        """Entries of ``parent`` after cursor ``after``: (cursor, name, Attr)."""
        rows = self.db.execute(
            f"SELECT d.id, d.name, {', '.join('i.' + c.strip() for c in ATTR_COLS.split(','))}"
            " FROM dentries d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent=? AND d.id>? ORDER BY d.id LIMIT ?", (parent, after, limit)).fetchall()
        return [(r[0], self.keys.open_name(parent, r[1]), Attr(*r[2:])) for r in rows]

    def is_empty_dir(self, ino: int) -> bool:
        return self.db.execute("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (ino,)).fetchone() is None

    def _dir_attr(self, parent: int) -> Attr:
        a = self.getattr(parent)
        if not stat.S_ISDIR(a.mode):
            raise _err(errno.ENOTDIR)
        if a.nlink == 0:
            raise _err(errno.ENOENT, "directory was removed")
        return a

    def mknode(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0, target: bytes | None = None) -> Attr:
        """Create a file, directory, symlink, fifo or device node."""
        self._writable()
        check_name(name)
        pa = self._dir_attr(parent)
        sealed = self.keys.seal_name(parent, name)
        if self.db.execute("SELECT 1 FROM dentries WHERE parent=? AND name=?", (parent, sealed)).fetchone():
            raise _err(errno.EEXIST)
        if pa.mode & stat.S_ISGID:
            gid = pa.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        is_dir = stat.S_ISDIR(mode)
        now = time.time_ns()
        self._w()
        cur = self.db.execute(
            "INSERT INTO inodes (mode, uid, gid, nlink, size, atime_ns, mtime_ns, ctime_ns, rdev)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mode, uid, gid, 2 if is_dir else 1, len(target) if target is not None else 0,
             now, now, now, rdev))
        ino = cur.lastrowid
        if target is not None:
            self.db.execute("UPDATE inodes SET target=? WHERE ino=?",
                            (self.keys.seal_value(ino, _LINK_TARGET, target), ino))
        self.db.execute("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", (parent, sealed, ino))
        if is_dir:
            self.db.execute("UPDATE inodes SET nlink=nlink+1 WHERE ino=?", (parent,))
        self._touch(parent, now)
        return self.getattr(ino)

    def readlink(self, ino: int) -> bytes:
        row = self.db.execute("SELECT mode, target FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise _err(errno.ENOENT)
        if not stat.S_ISLNK(row[0]) or row[1] is None:
            raise _err(errno.EINVAL)
        return self.keys.open_value(ino, _LINK_TARGET, row[1])

    def link(self, ino: int, parent: int, name: bytes) -> Attr:
        self._writable()
        check_name(name)
        self._dir_attr(parent)
        a = self.getattr(ino)
        if stat.S_ISDIR(a.mode):
            raise _err(errno.EPERM, "hard links to directories")
        if a.nlink == 0:
            raise _err(errno.ENOENT)
        sealed = self.keys.seal_name(parent, name)
        if self.db.execute("SELECT 1 FROM dentries WHERE parent=? AND name=?", (parent, sealed)).fetchone():
            raise _err(errno.EEXIST)
        now = time.time_ns()
        self._w()
        self.db.execute("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", (parent, sealed, ino))
        self.db.execute("UPDATE inodes SET nlink=nlink+1, ctime_ns=? WHERE ino=?", (now, ino))
        self._touch(parent, now)
        return self.getattr(ino)

    def unlink(self, parent: int, name: bytes, *, want_dir: bool = False) -> Attr:
        """Remove a name (``want_dir``: rmdir). Returns the inode's new attributes;
        the caller frees it (``free_if_unused``) once nothing refers to it."""
        self._writable()
        ino = self.lookup(parent, name)
        a = self.getattr(ino)
        if want_dir:
            if not stat.S_ISDIR(a.mode):
                raise _err(errno.ENOTDIR)
            if not self.is_empty_dir(ino):
                raise _err(errno.ENOTEMPTY)
        elif stat.S_ISDIR(a.mode):
            raise _err(errno.EISDIR)
        now = time.time_ns()
        self._w()
        self.db.execute("DELETE FROM dentries WHERE parent=? AND name=?",
                        (parent, self.keys.seal_name(parent, name)))
        if want_dir:
            self.db.execute("UPDATE inodes SET nlink=0, ctime_ns=? WHERE ino=?", (now, ino))
            self.db.execute("UPDATE inodes SET nlink=nlink-1 WHERE ino=?", (parent,))
        else:
            self.db.execute("UPDATE inodes SET nlink=nlink-1, ctime_ns=? WHERE ino=?", (now, ino))
        self._touch(parent, now)
        return self.getattr(ino)

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, *,
               noreplace: bool = False, exchange: bool = False) -> Attr | None:
        """Rename; returns the attributes of an inode whose name was replaced
        (the caller frees it when unused), else None."""
        self._writable()
        check_name(n2)
        src = self.lookup(p1, n1)
        sa = self.getattr(src)
        self._dir_attr(p2)
        s1, s2 = self.keys.seal_name(p1, n1), self.keys.seal_name(p2, n2)
        row = self.db.execute("SELECT ino FROM dentries WHERE parent=? AND name=?", (p2, s2)).fetchone()
        dst = row[0] if row else None
        now = time.time_ns()
        if exchange:
            if dst is None:
                raise _err(errno.ENOENT)
            da = self.getattr(dst)
            self._w()
            self.db.execute("UPDATE dentries SET ino=? WHERE parent=? AND name=?", (dst, p1, s1))
            self.db.execute("UPDATE dentries SET ino=? WHERE parent=? AND name=?", (src, p2, s2))
            if p1 != p2 and stat.S_ISDIR(sa.mode) != stat.S_ISDIR(da.mode):
                delta = 1 if stat.S_ISDIR(sa.mode) else -1
                self.db.execute("UPDATE inodes SET nlink=nlink+? WHERE ino=?", (delta, p2))
                self.db.execute("UPDATE inodes SET nlink=nlink-? WHERE ino=?", (delta, p1))
            for i in (src, dst):
                self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (now, i))
            self._touch(p1, now)
            self._touch(p2, now)
            return None
        if dst == src:
            return None                     # same inode (hard links): POSIX says do nothing
        replaced = None
        if dst is not None:
            if noreplace:
                raise _err(errno.EEXIST)
            da = self.getattr(dst)
            if stat.S_ISDIR(sa.mode) and not stat.S_ISDIR(da.mode):
                raise _err(errno.ENOTDIR)
            if not stat.S_ISDIR(sa.mode) and stat.S_ISDIR(da.mode):
                raise _err(errno.EISDIR)
            if stat.S_ISDIR(da.mode) and not self.is_empty_dir(dst):
                raise _err(errno.ENOTEMPTY)
        if stat.S_ISDIR(sa.mode) and self._is_ancestor(src, p2):
            raise _err(errno.EINVAL, "cannot move a directory into itself")
        self._w()
        if dst is not None:
            self.db.execute("DELETE FROM dentries WHERE parent=? AND name=?", (p2, s2))
            if stat.S_ISDIR(da.mode):
                self.db.execute("UPDATE inodes SET nlink=0, ctime_ns=? WHERE ino=?", (now, dst))
                self.db.execute("UPDATE inodes SET nlink=nlink-1 WHERE ino=?", (p2,))
            else:
                self.db.execute("UPDATE inodes SET nlink=nlink-1, ctime_ns=? WHERE ino=?", (now, dst))
            replaced = self.getattr(dst)
        self.db.execute("UPDATE dentries SET parent=?, name=? WHERE parent=? AND name=?", (p2, s2, p1, s1))
        if stat.S_ISDIR(sa.mode) and p1 != p2:
            self.db.execute("UPDATE inodes SET nlink=nlink-1 WHERE ino=?", (p1,))
            self.db.execute("UPDATE inodes SET nlink=nlink+1 WHERE ino=?", (p2,))
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (now, src))
        self._touch(p1, now)
        if p2 != p1:
            self._touch(p2, now)
        return replaced

    def _is_ancestor(self, anc: int, ino: int) -> bool:
        while ino != ROOT:
            if ino == anc:
                return True
            row = self.db.execute("SELECT parent FROM dentries WHERE ino=? LIMIT 1", (ino,)).fetchone()
            if row is None:
                return False
            ino = row[0]
        return anc == ROOT

    def free_if_unlinked(self, ino: int) -> bool:
        """Delete an inode with no names left (call when nothing holds it open)."""
        row = self.db.execute("SELECT nlink FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None or row[0] > 0 or ino == ROOT:
            return False
        self._w()
        for key in [k for k in self._dirty if k[0] == ino]:
            self._dirty_bytes -= len(self._dirty.pop(key).data)
        self._superseded.extend(r[0] for r in self.db.execute(
            "SELECT counter FROM blocks WHERE ino=? AND data IS NULL", (ino,)))
        self.db.execute("DELETE FROM blocks WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM xattrs WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        self._unsynced.pop(ino, None)
        return True

    # -- extended attributes -----------------------------------------------------

    def setxattr(self, ino: int, name: bytes, value: bytes, *, create=False, replace=False) -> None:
        self._writable()
        sealed = self._xname(ino, name)
        exists = self.db.execute("SELECT 1 FROM xattrs WHERE ino=? AND name=?", (ino, sealed)).fetchone()
        if create and exists:
            raise _err(errno.EEXIST)
        if replace and not exists:
            raise _err(errno.ENODATA)
        if not exists:      # every name must fit in one listxattr reply (XATTR_LIST_MAX, 64 KiB)
            used = self.db.execute("SELECT coalesce(sum(length(name) - 15), 0) FROM xattrs WHERE ino=?",
                                   (ino,)).fetchone()[0]     # sealed names carry a 16-byte SIV
            if used + len(name) + 1 > 65536:
                raise _err(errno.ENOSPC, "no room for more extended attribute names on this file")
        self._w()
        self.db.execute("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)",
                        (ino, sealed, self.keys.seal_value(ino, _XATTR_VALUE + name, value)))
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (time.time_ns(), ino))

    def _xname(self, ino: int, name: bytes) -> bytes:
        # xattr names are sealed like file names, under a pseudo-parent that no
        # directory can have (the inode number, negated)
        return self.keys.seal_name(-ino & 0xFFFFFFFFFFFFFFFF, name)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        row = self.db.execute("SELECT value FROM xattrs WHERE ino=? AND name=?",
                              (ino, self._xname(ino, name))).fetchone()
        if row is None:
            raise _err(errno.ENODATA)
        return self.keys.open_value(ino, _XATTR_VALUE + name, row[0])

    def listxattr(self, ino: int) -> list[bytes]:
        return [self.keys.open_name(-ino & 0xFFFFFFFFFFFFFFFF, r[0])
                for r in self.db.execute("SELECT name FROM xattrs WHERE ino=?", (ino,))]

    def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        self._w()
        cur = self.db.execute("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, self._xname(ino, name)))
        if cur.rowcount == 0:
            raise _err(errno.ENODATA)
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (time.time_ns(), ino))

    # -- file content ---------------------------------------------------------------

    def _block_path(self, counter: int) -> str:
        return f"{self.path}/b/{counter & 0xFF:02x}/{counter:016x}"

    def _block_row(self, ino: int, blkno: int):
        return self.db.execute("SELECT counter, length, data FROM blocks WHERE ino=? AND blkno=?",
                               (ino, blkno)).fetchone()

    def _load_block(self, ino: int, blkno: int, row, first: int = 0, last: int | None = None) -> bytes:
        """Decrypt chunks [first, last] of a stored block."""
        counter, length, inline = row
        if inline is not None:
            try:
                plain = chunk.decrypt_chunks(self.keys.content, self.sid, ino, blkno, counter, length, 0, inline)
            except chunk.BlockAuthError as e:
                raise _err(errno.EIO, str(e))
            return plain[first * chunk.CHUNK_SIZE:(last + 1) * chunk.CHUNK_SIZE] if last is not None \
                else plain[first * chunk.CHUNK_SIZE:]
        n = chunk.nchunks(length)
        if last is None or last >= n:
            last = n - 1
        if first > last:
            return b""
        size = min(length, (last + 1) * chunk.CHUNK_SIZE) - first * chunk.CHUNK_SIZE
        return self.fetch([ReadPart(ino, blkno, counter, length, first, last, 0, size)])

    def read_plan(self, ino: int, off: int, size: int) -> list:
        """What a read needs: bytes already in memory, or ReadParts to fetch.
        Counters of the parts are pinned until :meth:`unpin`."""
        fsize = self.getattr(ino).size
        if off >= fsize or size <= 0:
            return []
        size = min(size, fsize - off)
        parts: list = []
        pos, end = off, off + size
        while pos < end:
            blkno, boff = divmod(pos, BLOCK_SIZE)
            n = min(end - pos, BLOCK_SIZE - boff)
            key = (ino, blkno)
            mem = self._dirty.get(key) or self._inflight.get(key)
            if mem is not None:
                piece = bytes(mem.data[boff:boff + n])
                parts.append(piece + bytes(n - len(piece)) if len(piece) < n else piece)
            else:
                row = self._block_row(ino, blkno)
                if row is None or boff >= row[1]:
                    parts.append(bytes(n))               # a hole, or past the block's stored end
                elif row[2] is not None:                 # small and inline: decrypt right here
                    piece = self._load_block(ino, blkno, row)[boff:boff + n]
                    parts.append(piece + bytes(n - len(piece)) if len(piece) < n else piece)
                else:
                    first = boff // chunk.CHUNK_SIZE
                    last = (min(boff + n, row[1]) - 1) // chunk.CHUNK_SIZE
                    parts.append(ReadPart(ino, blkno, row[0], row[1], first, last,
                                          boff - first * chunk.CHUNK_SIZE, n))
                    self._pins[row[0]] = self._pins.get(row[0], 0) + 1
            pos += n
        return parts

    def fetch(self, parts: list) -> bytes:
        """Read and decrypt a plan's parts. Thread-safe: touches no sqlite."""
        out = []
        for p in parts:
            if not isinstance(p, ReadPart):
                out.append(p)
                continue
            start = chunk.chunk_offset(p.first)
            end = chunk.chunk_offset(p.last) + min(chunk.CHUNK_SIZE, p.length - p.last * chunk.CHUNK_SIZE) \
                + chunk.TAG_SIZE
            try:
                fd = os.open(self._block_path(p.counter), os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                raise _err(errno.EIO, f"block file {p.counter:016x} is missing")
            except OSError as e:                 # e.g. ELOOP: a symlink planted in its place
                raise _err(errno.EIO, f"block file {p.counter:016x} cannot be opened: {e.strerror}")
            try:
                if p.first == 0 and p.length > end:
                    # a reader at the start of a block will want the rest of it:
                    # start reading the whole block file from disk now
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                raw = os.pread(fd, end - start, start)
            finally:
                os.close(fd)
            if len(raw) != end - start:              # cut short, maybe on a chunk boundary
                raise _err(errno.EIO, f"block file {p.counter:016x} is truncated")
            try:
                plain = chunk.decrypt_chunks(self.keys.content, self.sid, p.ino, p.blkno, p.counter,
                                             p.length, p.first, raw)
            except chunk.BlockAuthError as e:
                raise _err(errno.EIO, str(e))
            piece = memoryview(plain)[p.start:p.start + p.n]
            out.append(piece if len(piece) == p.n else bytes(piece) + bytes(p.n - len(piece)))
        return out[0] if len(out) == 1 else b"".join(out)

    def unpin(self, parts: list) -> None:
        for p in parts:
            if isinstance(p, ReadPart):
                left = self._pins[p.counter] - 1
                if left:
                    self._pins[p.counter] = left
                else:
                    del self._pins[p.counter]

    def read(self, ino: int, off: int, size: int) -> bytes:
        parts = self.read_plan(ino, off, size)
        try:
            return bytes(self.fetch(parts))
        finally:
            self.unpin(parts)

    def _check_space(self, nbytes: int, retry: bool = True) -> None:
        when, free = self._space
        now = time.monotonic()
        floor = self.min_free_bytes()
        if now - when > SPACE_RECHECK or free - nbytes < floor + SPACE_SLACK:
            st = os.statvfs(self.path)
            free = st.f_bavail * st.f_frsize
            when = now
        # between statvfs calls (at most SPACE_RECHECK s apart, and always near the
        # floor) what this store wrote is subtracted from the last figure
        self._space = (when, free - nbytes)
        # blocks still in memory or in flight land on disk later: count them now
        pending = self._dirty_bytes + len(self._inflight) * BLOCK_SIZE
        if free - nbytes - pending < floor:
            if retry and self._superseded and not self._inflight:
                # deleted or rewritten blocks wait for a durable point to be unlinked:
                # make it now, so space freed by rm is usable at once
                self.sync()
                return self._check_space(nbytes, retry=False)
            raise _err(errno.ENOSPC, "the storage folder is at its minimum free space")

    def write(self, ino: int, off: int, data) -> int:
        self._writable()
        n = len(data)
        if n == 0:
            return 0
        self._check_space(n + chunk.TAG_SIZE * (n // chunk.CHUNK_SIZE + 1))
        mv = memoryview(data)
        pos, end = off, off + n
        self._w()
        now = time.time_ns()                         # a write changes mtime and ctime (POSIX)
        self.db.execute("UPDATE inodes SET size=max(size, ?), mtime_ns=?, ctime_ns=? WHERE ino=?",
                        (end, now, now, ino))
        while pos < end:
            blkno, boff = divmod(pos, BLOCK_SIZE)
            k = min(end - pos, BLOCK_SIZE - boff)
            piece = mv[pos - off:pos - off + k]
            key = (ino, blkno)
            d = self._dirty.get(key)
            if d is None and boff == 0 and k == BLOCK_SIZE:
                self._store_block(ino, blkno, piece)          # a whole block: straight out
            else:
                if d is None:
                    job = self._inflight.get(key)
                    if job is not None:
                        base = bytearray(job.data)
                    else:
                        row = self._block_row(ino, blkno)
                        base = bytearray(self._load_block(ino, blkno, row)) if row else bytearray()
                    d = self._dirty[key] = _Dirty(base)
                    self._dirty_bytes += len(base)
                before = len(d.data)
                if boff > before:
                    d.data.extend(bytes(boff - before))
                d.data[boff:boff + k] = piece
                self._dirty_bytes += len(d.data) - before
                if boff + k == BLOCK_SIZE:                    # the writer reached the block's end
                    self._flush_block(key)
            pos += k
        while self._dirty and (self._dirty_bytes > DIRTY_MAX or _dirty_total() > DIRTY_TOTAL_MAX):
            self._flush_block(next(iter(self._dirty)))
        return n

    def _flush_block(self, key) -> None:
        d = self._dirty.pop(key)
        self._dirty_bytes -= len(d.data)
        try:
            self._store_block(key[0], key[1], d.data)
        except BaseException:
            self._dirty[key] = d                # keep it: nothing written is lost
            self._dirty_bytes += len(d.data)
            raise

    def _store_block(self, ino: int, blkno: int, data) -> None:
        """Seal and write one block to a new file, then point the block map at it
        (through ``submit`` when a worker pool is attached)."""
        job = BlockJob(self, ino, blkno, self._next_counter(), data)
        if len(data) <= INLINE_MAX:
            sealed = chunk.encrypt_block(self.keys.content, self.sid, ino, blkno, job.counter, data)
            self._record_block(job, sealed)
            return
        if self.submit is None:
            try:
                job.run()
            except OSError as e:
                self.finish_block(job, e)
                raise
            self.finish_block(job, None)
            return
        self._inflight[(ino, blkno)] = job
        self.submit(job)

    def finish_block(self, job: BlockJob, error: OSError | None) -> None:
        """Record a written block in the block map (or keep its data dirty on error)."""
        key = (job.ino, job.blkno)
        if self._inflight.get(key) is job:
            del self._inflight[key]
        if self.db is None:
            return                                   # the store was closed or destroyed meanwhile
        row = self.db.execute("SELECT size FROM inodes WHERE ino=?", (job.ino,)).fetchone()
        stale = row is None or job.blkno * BLOCK_SIZE >= row[0]
        if error is not None:
            try:
                os.unlink(self._block_path(job.counter))
            except OSError:
                pass
            if not stale and key not in self._dirty and key not in self._inflight:
                data = bytearray(job.data)           # keep it: nothing written is lost
                self._dirty[key] = _Dirty(data)
                self._dirty_bytes += len(data)
            self._errors[job.ino] = error if isinstance(error, OSError) else _err(errno.EIO, str(error))
            return
        if stale:
            self._superseded.append(job.counter)     # the file shrank or went meanwhile
            return
        self._record_block(job, None)

    def _record_block(self, job: BlockJob, inline: bytes | None) -> None:
        """Point the block map at a new version: ``inline`` ciphertext, or the job's file."""
        old = self._block_row(job.ino, job.blkno)
        if old is not None and old[0] > job.counter:  # a newer version won the race
            if inline is None:
                self._superseded.append(job.counter)
            return
        self._w()
        self.db.execute("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?)",
                        (job.ino, job.blkno, job.counter, len(job.data), inline))
        if old is not None and old[2] is None:
            self._superseded.append(old[0])
        if inline is None:
            self._unsynced.setdefault(job.ino, set()).add(job.counter)
            self._unsynced_all.add(job.counter)
        self.blocks_written += 1

    def inflight(self, ino: int | None = None) -> bool:
        if ino is None:
            return bool(self._inflight)
        return any(k[0] == ino for k in self._inflight)

    def check_error(self, ino: int) -> None:
        """Raise the write-back error of an inode, if any, keeping it for close()/fsync()."""
        e = self._errors.get(ino)
        if e is not None:
            raise e

    def take_error(self, ino: int) -> None:
        """Raise (once) the write-back error of an inode, as close()/fsync() must."""
        e = self._errors.pop(ino, None)
        if e is not None:
            raise e

    def flush_inode(self, ino: int) -> None:
        """Write this inode's dirty blocks (a close() or before an fsync)."""
        for key in [k for k in self._dirty if k[0] == ino]:
            self._flush_block(key)

    def flush_all(self) -> None:
        while self._dirty:
            self._flush_block(next(iter(self._dirty)))

    def fsync(self, ino: int) -> None:
        """Return only when the inode's data and the metadata to read it back are durable."""
        self.flush_inode(ino)
        if self.inflight(ino):
            raise RuntimeError("fsync with blocks in flight: drain them first")
        self.take_error(ino)
        work, done = self.prepare_durable(ino)
        work()
        done()

    def truncate(self, ino: int, size: int) -> None:
        self._writable()
        if self.inflight(ino):
            raise RuntimeError("truncate with blocks in flight: drain them first")
        a = self.getattr(ino)
        if size < a.size:
            keep_blocks = (size + BLOCK_SIZE - 1) // BLOCK_SIZE
            for key in [k for k in self._dirty if k[0] == ino and k[1] >= keep_blocks]:
                self._dirty_bytes -= len(self._dirty.pop(key).data)
            self._w()
            self._superseded.extend(r[0] for r in self.db.execute(
                "SELECT counter FROM blocks WHERE ino=? AND blkno>=? AND data IS NULL", (ino, keep_blocks)))
            self.db.execute("DELETE FROM blocks WHERE ino=? AND blkno>=?", (ino, keep_blocks))
            tail = size % BLOCK_SIZE
            if tail:
                blkno = size // BLOCK_SIZE
                key = (ino, blkno)
                d = self._dirty.get(key)
                if d is not None:
                    if len(d.data) > tail:
                        self._dirty_bytes -= len(d.data) - tail
                        del d.data[tail:]
                else:
                    row = self._block_row(ino, blkno)
                    if row is not None and row[1] > tail:
                        data = self._load_block(ino, blkno, row)[:tail]
                        self._store_block(ino, blkno, data)
        now = time.time_ns()
        self._w()
        self.db.execute("UPDATE inodes SET size=?, mtime_ns=?, ctime_ns=? WHERE ino=?", (size, now, now, ino))
        if stat.S_ISREG(a.mode) and a.mode & (stat.S_ISUID | stat.S_ISGID):
            self.db.execute("UPDATE inodes SET mode=? WHERE ino=?",
                            (a.mode & ~(stat.S_ISUID | stat.S_ISGID), ino))

    def clear_suid(self, ino: int) -> None:
        """A write by the owner clears setuid/setgid (HANDLE_KILLPRIV)."""
        a = self.getattr(ino)
        if stat.S_ISREG(a.mode) and a.mode & (stat.S_ISUID | stat.S_ISGID):
            self._w()
            self.db.execute("UPDATE inodes SET mode=? WHERE ino=?",
                            (a.mode & ~(stat.S_ISUID | stat.S_ISGID), ino))

    # -- statistics -------------------------------------------------------------------

    def counts(self) -> dict:
        files = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM inodes").fetchone()
        return {"inodes": files[0], "bytes": files[1]}


def write_block_file(path: str, data: bytes) -> None:
    """Create a block file (never overwrite one: a counter is used once)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        mv = memoryview(data)
        while mv:
            mv = mv[os.write(fd, mv):]
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


# -- the commit reserve ----------------------------------------------------------
#
# Metadata is committed in batches after the syscalls that made it returned 0.
# If someone else fills the storage folder's disk meanwhile, the COMMIT would
# fail and sqlite would roll the batch back: files and directories the writer
# was told exist would vanish. Each storage folder therefore keeps a small
# preallocated reserve file, released just before a commit that finds the disk
# (nearly) full, and put back when a store is opened with room to spare.

RESERVE_FILE = ".smpfs-reserve"


def reserve_size(folder: Path, v=None) -> int:
    v = v or os.statvfs(folder)
    return min(16 << 20, max(1 << 20, v.f_blocks * v.f_frsize // 20))


def ensure_reserve(folder: Path) -> None:
    """Create the folder's commit reserve if it is missing and there is room."""
    path = Path(folder) / RESERVE_FILE
    if path.exists():
        return
    v = os.statvfs(folder)
    size = reserve_size(folder, v)
    if v.f_bavail * v.f_frsize < 4 * size:
        return
    tmp = Path(folder) / (RESERVE_FILE + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def release_reserve(folder: Path) -> bool:
    try:
        os.unlink(Path(folder) / RESERVE_FILE)
        return True
    except FileNotFoundError:
        return False


def ensure_commit_room(folder: Path) -> None:
    """Before a commit: on a (nearly) full disk, give the reserve back to sqlite."""
    v = os.statvfs(folder)
    if v.f_bavail * v.f_frsize < reserve_size(folder, v) // 2:
        release_reserve(folder)


def unlink_files(paths) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


COUNTER_FILE = "counter"


def read_counter_file(path: Path) -> int:
    try:
        return int((Path(path) / COUNTER_FILE).read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        raise _err(errno.EIO, f"{path}/{COUNTER_FILE} is damaged: refusing to risk reusing a nonce")


def write_counter_file(path: Path, value: int) -> None:
    """Durably record the counter high-water mark (write, fsync, rename, fsync dir)."""
    tmp = Path(path) / (COUNTER_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{value}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, Path(path) / COUNTER_FILE)
    _fsync_dir(Path(path))


def _syncfs(fd: int) -> None:
    import ctypes
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


_libc = None
