"""One state store's content: a small POSIX filesystem kept encrypted on disk.

Everything a user wrote is encrypted: file content in the block files, file
names (AES-SIV), symlink targets and xattr names/values in store.db. What
is visible at rest is the shape: sizes, modes, owners, times, link counts.

This package knows nothing of FUSE. It raises ``OSError(errno, message)``
for every refusal, so the FUSE layer only translates. Local inode numbers
start at 1 (the store's root directory) and are never reused.

:class:`StateStore` is built from one module per concern: ``layout`` (files,
schema, creating and destroying stores), ``counter`` (nonces), ``tree``
(inodes and names), ``xattrs``, ``blocks`` (file content, the dirty buffer,
free space while writing), ``reserve`` (the commit reserve). This module
holds what ties them together: opening, transactions and durability.

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
import os
import sqlite3
from pathlib import Path

from ..crypto.keys import StoreKeys
from ..errors import AuthenticationFailed
from . import diskio
from .blocks import PROCESS_BUDGET, BlocksMixin, DirtyBudget
from .counter import NonceCounter, read_counter_file
from .diskio import unlink_files
from .layout import check_format, connect, err, migrate, sync_store_json
from .metamac import MetaMacMixin
from .readonly import ReadOnlyDb, add_blocks_data
from .reserve import ensure_commit_room, ensure_reserve, release_reserve
from .tree import TreeMixin
from .xattrs import XattrsMixin


class StateStore(TreeMixin, XattrsMixin, BlocksMixin, MetaMacMixin):
    """An open state store. Not thread-safe: use it from one thread (the
    daemon's trio thread); block crypto and I/O are pure functions that can
    run elsewhere."""

    def __init__(self, path: Path, keys: StoreKeys, *, min_free_bytes=lambda: 0,
                 min_counter: int = 0, on_reserve=None, budget: DirtyBudget | None = None,
                 read_only: bool = False, expect_root: bytes | None = None):
        self.path = Path(path)
        self.keys = keys
        self.sid = keys.store_id
        self.min_free_bytes = min_free_bytes          # callable: the folder's current rule
        #: read_only (at open): nothing of the store is ever written, not even
        #: sqlite's own files (recover, fsck --no-repair and --scrub; see
        #: readonly.py). The daemon also sets it on captured stores it opened
        #: read-write (changes refused with EROFS).
        self.read_only = read_only
        if not (self.path / "store.db").exists():
            raise err(errno.ENOENT, f"no store at {self.path}")
        self._ro_db = ReadOnlyDb(self.path / "store.db", add_blocks_data) if read_only else None
        self.db = self._ro_db.conn if self._ro_db is not None else connect(self.path / "store.db")
        try:
            # a store of another format is refused, not half-understood;
            # an older one is migrated, one recorded step at a time (not when
            # opened read-only: a format-1 store is read as it is)
            sid_hex = self.sid.hex()
            self.format = check_format(self.path, sid_hex, self.db)
            if not read_only:
                self.format = migrate(self.path, keys, self.db, self.format)
                sync_store_json(self.path, sid_hex, self.format)
            # (a store of formats 1-3 opened read-only has no MACs to check)
            self.init_macs(self.format >= 4, writable=not read_only)
            # a released store never changes: its root MAC, kept in smp.db at
            # release, finds a store put back whole from an older copy
            if expect_root is not None and self.root_mac() != expect_root:
                raise AuthenticationFailed(f"store {sid_hex[:12]}… fails authentication as a whole:"
                                           " rolled back or edited since its release")
        except BaseException:
            self._close_db()
            raise
        if not read_only:
            ensure_reserve(self.path.parent)
        self._in_txn = False
        self.init_blocks(PROCESS_BUDGET if budget is None else budget)
        # the largest of every record of the high-water mark: the store's own
        # (store.db, counter file) and the SMP's (``min_counter``, from smp.db)
        # and the block map's own largest counter (block files are named by
        # counters: a new one never names a file the block map points to)
        hwm = max(int(self._meta("counter_hwm")), read_counter_file(self.path), min_counter,
                  self.db.execute("SELECT coalesce(max(counter), 0) FROM blocks").fetchone()[0])
        self.counter = NonceCounter(self.path, hwm, on_reserve=on_reserve)
        self._wal_fd: int | None = None
        self._wal_tight = False                        # see near_floor
        self._wal_synced = False                       # every commit so far is durable?
        self._commit_seq = 0
        self.changed = False                           # anything to commit?

    # -- transactions ----------------------------------------------------------

    def _meta(self, key: str) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else "0"

    def begin_change(self) -> None:
        """Enter the batch transaction before any change."""
        if not self.db.in_transaction:              # (sqlite rolls a batch back by itself on a full disk)
            self.db.execute("BEGIN IMMEDIATE")
        self._in_txn = True
        self.changed = True

    def commit(self) -> None:
        """Commit the batch (not necessarily durable: WAL, synchronous=NORMAL)."""
        if not self._in_txn:
            self.meta_pending = 0
        else:
            self._in_txn = False
            if not self.db.in_transaction:
                self.forget_touched()
                raise err(errno.EIO, "sqlite rolled the batch back (disk full?)")
            self.seal_macs()
            ensure_commit_room(self.path.parent)
            try:
                self.db.execute("COMMIT")
            except sqlite3.OperationalError:
                # a full disk: if sqlite still holds the batch, spend the reserve
                # and try again; acknowledged changes must not be rolled back
                if not (self.db.in_transaction and release_reserve(self.path.parent)):
                    self._commit_failed()
                try:
                    self.db.execute("COMMIT")
                except sqlite3.OperationalError:
                    self._commit_failed()
            self.meta_pending = 0
            self._wal_synced = False
            self._commit_seq += 1

    def _commit_failed(self):
        """A COMMIT the disk had no room for (someone else filled it, and the
        commit reserve is spent): ENOSPC, not a traceback. sqlite still holding
        the batch means nothing is lost: it stays open and the next commit,
        once there is room, writes it. Otherwise sqlite rolled it back: EIO."""
        if self.db.in_transaction:
            self._in_txn = True
            raise err(errno.ENOSPC, "no room to commit; the changes are kept and committed when there is room")
        raise err(errno.EIO, "sqlite rolled the batch back (disk full)")

    # -- room on disk for store.db ------------------------------------------------------

    #: near the minimum free space, the WAL is checkpointed every this many
    #: pages and cut back to ``WAL_TIGHT_LIMIT`` after (far from it: every
    #: 10000 pages, see layout.connect): a checkpoint copies WAL pages into
    #: store.db, so a big WAL is room the floor checks cannot see yet
    WAL_TIGHT_PAGES = 256
    WAL_TIGHT_LIMIT = 1 << 20

    def near_floor(self) -> None:
        if not self._wal_tight and self._ro_db is None:
            self.db.execute(f"PRAGMA wal_autocheckpoint={self.WAL_TIGHT_PAGES}")
            self.db.execute(f"PRAGMA journal_size_limit={self.WAL_TIGHT_LIMIT}")
            self._wal_tight = True

    def wal_owed(self) -> int:
        """What checkpointing the WAL may still add to store.db (at most its size)."""
        try:
            return os.stat(self.path / "store.db-wal").st_size
        except FileNotFoundError:
            return 0

    def sync(self) -> None:
        """A durable point, done here and now: every block and every change so
        far survives a power cut; superseded block files are then unlinked.
        (The daemon does the same without blocking its loop: see prepare_durable.)"""
        self.flush_all()
        if self.inflight():
            raise RuntimeError("sync with blocks in flight: drain them first")
        work, done = self.prepare_durable()
        work()
        unlink_files(done())
        self.changed = False

    def prepare_durable(self, ino: int | None = None):
        """Commit now, and return ``(work, done)``: ``work()`` (any thread) makes
        every block file written so far and every commit so far durable (the
        caller wrote the inode's dirty blocks, or with ``ino=None`` all of them);
        ``done()`` (this thread) records that and returns the superseded block
        files that may now be unlinked. The caller writes dirty blocks and waits
        for those in flight first."""
        self.commit()
        seq = self._commit_seq
        # the WAL fsync below makes every committed block-map row durable, not
        # only this inode's: every block file written so far must be durable
        # first, or a power cut leaves rows naming files that never reached the
        # disk (missing blocks: EIO for good)
        counters = self.take_unsynced(None)
        whole_fs = bool(counters) if ino is None else len(counters) > 8
        paths = [self.block_path(c) for c in counters]
        wal_fd = None if self._wal_synced else self._wal_dup()
        n_superseded = self.superseded_count() if ino is None else 0
        root = str(self.path)

        def work() -> None:
            if not (whole_fs or paths or wal_fd is not None):
                return
            io = diskio.io
            try:
                if whole_fs:
                    fd = io.open(root, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        io.syncfs(fd)
                    finally:
                        io.close(fd)
                else:
                    for path in paths:
                        try:
                            fd = io.open(path, os.O_RDONLY)
                        except FileNotFoundError:
                            continue                   # superseded meanwhile
                        try:
                            io.fsync(fd)
                        finally:
                            io.close(fd)
                    for d in {os.path.dirname(p) for p in paths}:
                        io.fsync_dir(d)
                if wal_fd is not None:
                    io.fsync(wal_fd)
            finally:
                if wal_fd is not None:
                    io.close(wal_fd)

        def done() -> list[str]:
            if self._commit_seq == seq:
                self._wal_synced = True
            gone = self.blocks_durable(counters, n_superseded)
            if ino is None:
                self.changed = False
            return gone
        work.idle = not (whole_fs or paths or wal_fd is not None)  # type: ignore[attr-defined]
        return work, done

    def _wal_dup(self) -> int | None:
        if self._wal_fd is None:
            try:
                self._wal_fd = os.open(self.path / "store.db-wal", os.O_RDONLY)
            except FileNotFoundError:
                return None
        return os.dup(self._wal_fd)

    def _close_db(self) -> None:
        if self._ro_db is not None:
            self._ro_db.close()
        else:
            self.db.close()
        self.db = None  # type: ignore[assignment]  # closed: every use checks

    def close(self) -> None:
        """Everything durable, then close. The store can be destroyed after."""
        if self.db is None:
            return
        if self._ro_db is not None:               # opened read-only: nothing to make durable
            self._close_db()
            return
        self.sync()
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            pass
        if self._wal_fd is not None:
            os.close(self._wal_fd)
        self.db.close()
        self.db = None  # type: ignore[assignment]  # closed: every use checks

    def abandon(self) -> None:
        """Drop everything unwritten (the store is being destroyed)."""
        self.discard_dirty()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
        if self.db is not None:
            try:
                if self._in_txn:
                    self.db.execute("ROLLBACK")
                    self.forget_touched()
            finally:
                self._close_db()
        self.db = None  # type: ignore[assignment]  # closed: every use checks

    def check_writable(self) -> None:
        if self.read_only:
            raise err(errno.EROFS)

    # -- statistics -------------------------------------------------------------------

    def counts(self) -> dict:
        files = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM inodes").fetchone()
        return {"inodes": files[0], "bytes": files[1]}
