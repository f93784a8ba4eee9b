"""Authenticated metadata (store format 4): what decides what a reader gets is MACed.

Names, symlink targets, xattrs and block content were sealed from format 1
on; the rows around them were not, so an edit of ``store.db`` could serve
another file's content, zeros, or a forged mode. From format 4 on:

* every **inode** row carries ``mac`` over its attributes (mode, owner,
  group, link count, size, device, times) and its number of block-map rows
  (``nblocks``); its symlink target is sealed bound to the inode already;
* every **directory entry** carries ``mac`` over (parent, sealed name, inode);
* every **block-map row** carries ``mac`` over (inode, block number, counter,
  length, salt); inline ciphertext is authenticated by the block's own key;
* a **store root** MAC over every row (inodes, entries, block map, xattrs)
  is computed when a released store is closed and kept in smp.db, so a
  store rolled back as a whole is refused when it is opened again.

MACs are keyed BLAKE2b with a 16-byte output (RFC 7693's MAC mode: one
call, about half the cost of an HMAC-SHA256 here, which matters at one MAC
per ``stat``), under a key derived from the store's data key
(``StoreKeys.meta_mac``). Rows are checked as they are
read; a row that fails is an ``EIO``. Changes are not MACed one by one: temp
triggers (in the connection only, never in the file) note which rows a
transaction touched, and :meth:`MetaMacMixin.seal_macs` MACs each once just
before the commit, so a run of writes to one file costs one MAC, not one per
``write()``. Rows touched by the open transaction are trusted as this
process wrote them.
"""
from __future__ import annotations

import hashlib
import hmac
import sqlite3
import struct

from ..errors import AuthenticationFailed
from .parts import StoreParts

MAC_BYTES = 16
_INODE = b"smpfsI4\0"
_DENTRY = b"smpfsD4\0"
_BLOCK = b"smpfsK4\0"
_ROOT = b"smpfsR4\0"
# ino, mode, uid, gid, nlink, size, rdev, atime, mtime, ctime, nblocks
_I = struct.Struct("<QIIIqQQqqqQ")
_D = struct.Struct("<QQ")
_B = struct.Struct("<QQQQ")

#: columns of an inode row that its MAC covers, in MAC order, then the sealed
#: symlink target (not in the MAC: its own AEAD binds it to the inode)
INODE_MAC_COLS = "ino, mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns, nblocks, target"

_TRIGGERS = """
CREATE TEMP TRIGGER IF NOT EXISTS smpfs_mac_ii AFTER INSERT ON main.inodes
    BEGIN SELECT smpfs_touch_inode(NEW.ino); END;
CREATE TEMP TRIGGER IF NOT EXISTS smpfs_mac_iu AFTER UPDATE OF
    ino, mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns ON main.inodes
    BEGIN SELECT smpfs_touch_inode(NEW.ino); END;
CREATE TEMP TRIGGER IF NOT EXISTS smpfs_mac_di AFTER INSERT ON main.dentries
    BEGIN SELECT smpfs_touch_dentry(NEW.id, NEW.parent, NEW.name, NEW.ino); END;
CREATE TEMP TRIGGER IF NOT EXISTS smpfs_mac_du AFTER UPDATE OF id, parent, name, ino ON main.dentries
    BEGIN SELECT smpfs_touch_dentry(NEW.id, NEW.parent, NEW.name, NEW.ino); END;
CREATE TEMP TRIGGER IF NOT EXISTS smpfs_mac_bi AFTER INSERT ON main.blocks
    BEGIN SELECT smpfs_touch_block(NEW.ino, NEW.blkno, NEW.counter, NEW.length, NEW.salt);
          SELECT smpfs_touch_inode(NEW.ino); END;
CREATE TEMP TRIGGER IF NOT EXISTS smpfs_mac_bu AFTER UPDATE OF ino, blkno, counter, length, salt ON main.blocks
    BEGIN SELECT smpfs_touch_block(NEW.ino, NEW.blkno, NEW.counter, NEW.length, NEW.salt);
          SELECT smpfs_touch_inode(NEW.ino); END;
CREATE TEMP TRIGGER IF NOT EXISTS smpfs_mac_bd AFTER DELETE ON main.blocks
    BEGIN SELECT smpfs_touch_inode(OLD.ino); END;
"""


class MetaMac:
    """The MAC functions of one store (pure: no sqlite, any thread)."""

    def __init__(self, key: bytes, store_id: bytes):
        self.key = key
        self.sid = store_id

    def _mac(self, msg: bytes) -> bytes:
        return hashlib.blake2b(msg, key=self.key, digest_size=MAC_BYTES).digest()

    def inode(self, attrs, nblocks: int) -> bytes:
        """``attrs``: the first ten of INODE_MAC_COLS (ino .. ctime_ns)."""
        ino = attrs[0]
        try:
            fields = _I.pack(*attrs, nblocks)
        except (struct.error, TypeError):
            raise AuthenticationFailed(f"the attribute row of inode {ino} fails authentication: out of range")
        return self._mac(_INODE + self.sid + fields)

    def dentry(self, parent: int, name: bytes, ino: int) -> bytes:
        try:
            return self._mac(_DENTRY + self.sid + _D.pack(parent, ino) + name)
        except (struct.error, TypeError):
            raise AuthenticationFailed(f"a directory entry under inode {parent} fails authentication: out of range")

    def block(self, ino: int, blkno: int, counter: int, length: int, salt: bytes | None) -> bytes:
        try:
            return self._mac(_BLOCK + self.sid + _B.pack(ino, blkno, counter, length) + (salt or b""))
        except (struct.error, TypeError):
            raise AuthenticationFailed(f"the block map of inode {ino} (block {blkno}) fails authentication:"
                                       " out of range")

    def root(self, db: sqlite3.Connection) -> bytes:
        """The MAC of the whole store: every row, in a fixed order."""
        h = hashlib.sha256()
        for sql in ("SELECT ino, mac FROM inodes ORDER BY ino",
                    "SELECT parent, name, ino, mac FROM dentries ORDER BY parent, name",
                    "SELECT ino, blkno, counter, length, salt, mac, data FROM blocks ORDER BY ino, blkno",
                    "SELECT ino, name, value FROM xattrs ORDER BY ino, name"):
            h.update(sql.encode())
            for row in db.execute(sql):
                for v in row:
                    b = v if isinstance(v, bytes) else b"" if v is None else str(v).encode()
                    h.update(len(b).to_bytes(4, "little") + b)
        return self._mac(_ROOT + self.sid + h.digest())


def seal_all(db: sqlite3.Connection, macs: MetaMac) -> None:
    """MAC every row (a new store, or a store migrated to format 4), inside the caller's transaction."""
    counts = dict(db.execute("SELECT ino, count(*) FROM blocks GROUP BY ino").fetchall())
    for row in db.execute(f"SELECT {INODE_MAC_COLS} FROM inodes").fetchall():
        ino = row[0]
        n = counts.get(ino, 0)
        db.execute("UPDATE inodes SET nblocks=?, mac=? WHERE ino=?",
                   (n, macs.inode(row[:10], n), ino))
    for did, parent, name, ino in db.execute("SELECT id, parent, name, ino FROM dentries").fetchall():
        db.execute("UPDATE dentries SET mac=? WHERE id=?", (macs.dentry(parent, name, ino), did))
    for ino, blkno, ctr, length, salt in db.execute(
            "SELECT ino, blkno, counter, length, salt FROM blocks").fetchall():
        db.execute("UPDATE blocks SET mac=? WHERE ino=? AND blkno=?",
                   (macs.block(ino, blkno, ctr, length, salt), ino, blkno))


class MetaMacMixin(StoreParts):
    """Part of :class:`~smpfs.store.statestore.StateStore`: row MACs, checked and kept."""

    def init_macs(self, enabled: bool, writable: bool) -> None:
        self.macs = MetaMac(self.keys.meta_mac, self.sid) if enabled else None
        # what to select: the MACed columns (stores of formats 1-3 opened
        # without migrating them have none: nothing to check)
        self.icols = INODE_MAC_COLS + ", mac" if enabled else \
            "ino, mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns, 0, target, NULL"
        self.icols_i = ", ".join(c if c in ("0", "NULL") else "i." + c
                                 for c in (c.strip() for c in self.icols.split(",")))
        self.mac_col = "mac" if enabled else "NULL"
        # rows the open batch touched: inodes by number (their MAC needs the
        # row as it is at the commit); entries and block-map rows with their
        # latest values, as the triggers saw them
        self._touched_inodes: set[int] = set()
        self._touched_dentries: dict[int, tuple] = {}
        self._touched_blocks: dict[tuple[int, int], tuple] = {}
        if self.macs is not None and writable:
            dentries, blocks = self._touched_dentries, self._touched_blocks

            def touch_dentry(did, parent, name, ino):
                dentries[did] = (parent, name, ino)

            def touch_block(ino, blkno, counter, length, salt):
                blocks[(ino, blkno)] = (counter, length, salt)
            self.db.create_function("smpfs_touch_inode", 1, self._touched_inodes.add)
            self.db.create_function("smpfs_touch_dentry", 4, touch_dentry)
            self.db.create_function("smpfs_touch_block", 5, touch_block)
            self.db.executescript(_TRIGGERS)

    def seal_macs(self) -> None:
        """MAC every row the open transaction touched (call just before COMMIT)."""
        m = self.macs
        if m is None:
            return
        db = self.db
        for ino in self._touched_inodes:
            row = db.execute(f"SELECT {INODE_MAC_COLS}, (SELECT count(*) FROM blocks WHERE ino=?1)"
                             " FROM inodes WHERE ino=?1", (ino,)).fetchone()
            if row is None:
                continue
            n = row[12]
            db.execute("UPDATE inodes SET nblocks=?, mac=? WHERE ino=?", (n, m.inode(row[:10], n), ino))
        # (a row deleted since it was touched: the UPDATE finds nothing)
        db.executemany("UPDATE dentries SET mac=? WHERE id=?",
                       [(m.dentry(*v), did) for did, v in self._touched_dentries.items()])
        db.executemany("UPDATE blocks SET mac=? WHERE ino=? AND blkno=?",
                       [(m.block(ino, blkno, *v), ino, blkno) for (ino, blkno), v in self._touched_blocks.items()])
        self.forget_touched()

    def forget_touched(self) -> None:
        self._touched_inodes.clear()
        self._touched_dentries.clear()
        self._touched_blocks.clear()

    # -- checks, as rows are read ---------------------------------------------------

    def check_inode_row(self, row) -> None:
        """``row``: INODE_MAC_COLS then mac."""
        m = self.macs
        if m is None or row[0] in self._touched_inodes:
            return
        if row[12] is None or not hmac.compare_digest(m.inode(row[:10], row[10]), row[12]):
            raise AuthenticationFailed(f"the attribute row of inode {row[0]} fails authentication")

    def check_dentry(self, parent: int, name: bytes, ino: int, did: int, mac) -> None:
        m = self.macs
        if m is None or did in self._touched_dentries:
            return
        if mac is None or not hmac.compare_digest(m.dentry(parent, name, ino), mac):
            raise AuthenticationFailed(f"a directory entry under inode {parent} fails authentication")

    def check_block_row(self, ino: int, blkno: int, counter, length, salt, mac) -> None:
        m = self.macs
        if m is None or (ino, blkno) in self._touched_blocks:
            return
        if mac is None or not hmac.compare_digest(m.block(ino, blkno, counter, length, salt), mac):
            raise AuthenticationFailed(f"the block map of inode {ino} (block {blkno}) fails authentication")

    def check_block_count(self, ino: int) -> None:
        """A hole inside a file: make sure no block-map row of it was deleted."""
        if self.macs is None or ino in self._touched_inodes:
            return
        row = self.db.execute(f"SELECT {INODE_MAC_COLS}, mac FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None:
            return
        self.check_inode_row(row)
        n = self.db.execute("SELECT count(*) FROM blocks WHERE ino=?", (ino,)).fetchone()[0]
        if n != row[10]:
            raise AuthenticationFailed(f"the block map of inode {ino} fails authentication:"
                                       f" {n} rows of {row[10]}")

    def root_mac(self) -> bytes | None:
        return None if self.macs is None else self.macs.root(self.db)
