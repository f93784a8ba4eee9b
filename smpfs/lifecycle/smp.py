"""The SMP itself: its state directory and the ``smp.db`` database.

An :class:`Smp` is opened on a state directory (``--state``, ``$SMPFS_STATE``
or ``/var/lib/smpfs``) that holds::

    smp.db       settings, storage folders, computers, associations, stores,
                 audit log (sqlite, WAL, mode 0600)
    master.key   the key that wraps every store's data key (mode 0600)
    store/       the default storage folder

The schema is created by :data:`MIGRATIONS`; ``meta.schema_version`` says how
far a database has been migrated. A database newer than this code is refused
rather than half-understood.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils
from sqlite_utils.db import NotFoundError

from ..crypto import keys as keymod
from ..errors import KeyFileError, NotFound, StateDirError, UsageError
from ..units import parse_free
from . import audit
from . import folder as foldermod
from .placement import check_absolute, fuse_mounts
from .rows import StoreRow
from .rows import share_name as share_of
from .status import LIVE_SQL

if TYPE_CHECKING:
    from ..store.readonly import ReadOnlyDb

DEFAULT_STATE_DIR = "/var/lib/smpfs"
DB_FILE = "smp.db"
DAEMON_FILE = "daemon.json"
#: Held (flock, exclusive) by the daemon serving this SMP for its whole life; the
#: kernel drops it when that process dies, however it dies (a zombie holds none).
LOCK_FILE = "daemon.lock"


def daemon_alive(state_dir) -> bool:
    """Whether a daemon serves this SMP: whether STATE/daemon.lock is locked.
    No pid check: a pid can be a zombie, or reused."""
    import fcntl
    try:
        fd = os.open(Path(state_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def hold_daemon_lock(state_dir) -> int:
    """Take STATE/daemon.lock for this process's life (the daemon); non-blocking:
    BlockingIOError if another daemon holds it. Returns the fd to keep open."""
    import fcntl
    fd = os.open(Path(state_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Settings kept in ``meta`` and their defaults (None = computed, see :meth:`Smp.setting`).
DEFAULTS = {"server": None, "restore_only": "0", "delete_after_s": "86400"}

# Store statuses: lifecycle/status.py.

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE folders (
    id INTEGER PRIMARY KEY,
    share TEXT UNIQUE NOT NULL,
    path TEXT UNIQUE NOT NULL,
    max_clients INTEGER NOT NULL,
    min_free TEXT NOT NULL,
    created_at REAL NOT NULL,
    removed_at REAL);
CREATE TABLE computers (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    uid INTEGER UNIQUE NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE associations (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL COLLATE NOCASE,
    dest TEXT NOT NULL COLLATE NOCASE,
    migration_type TEXT NOT NULL,
    created_at REAL NOT NULL,
    removed_at REAL);
CREATE TABLE stores (
    id INTEGER PRIMARY KEY,
    store_id TEXT UNIQUE NOT NULL,
    association_id INTEGER NOT NULL REFERENCES associations(id),
    folder_id INTEGER NOT NULL REFERENCES folders(id),
    status TEXT NOT NULL,
    source_uid INTEGER, dest_uid INTEGER,
    wrapped_key BLOB,
    created_at REAL, capture_released_at REAL,
    restore_requested_at REAL, restore_released_at REAL,
    retention_s INTEGER,
    delete_at REAL, deleted_at REAL, bytes_freed INTEGER);
CREATE INDEX stores_status ON stores(status);
CREATE INDEX stores_assoc ON stores(association_id);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL, uid INTEGER, computer TEXT, action TEXT NOT NULL,
    store_id TEXT, outcome TEXT NOT NULL, detail TEXT);
"""

#: (version, SQL) pairs; each brings the database from version-1 to version.
#: v2: each store's nonce high-water mark is also kept here, apart from the
#: storage folder, so rolling back a store's files cannot make nonces repeat.
_SCHEMA_V2 = """
ALTER TABLE stores ADD COLUMN nonce_hwm INTEGER NOT NULL DEFAULT 0;
"""

#: v3: each computer's secret, wrapped under the master key (so an admin can
#: show it again), and its HTTPS verifier (see smpfs.crypto.secrets).
_SCHEMA_V3 = """
ALTER TABLE computers ADD COLUMN secret_wrapped BLOB;
ALTER TABLE computers ADD COLUMN secret_verifier TEXT;
ALTER TABLE computers ADD COLUMN secret_set_at REAL;
"""

#: v4: the MAC of each released store as a whole (``root_mac``, recorded when it
#: is frozen), so a store put back from an older copy is refused.
_SCHEMA_V4 = """
ALTER TABLE stores ADD COLUMN root_mac BLOB;
"""

MIGRATIONS: list[tuple[int, str]] = [(1, _SCHEMA_V1), (2, _SCHEMA_V2), (3, _SCHEMA_V3), (4, _SCHEMA_V4)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def resolve_state_dir(opt: str | os.PathLike | None = None) -> Path:
    """``--state`` if given, else ``$SMPFS_STATE``, else ``/var/lib/smpfs``."""
    return Path(opt or os.environ.get("SMPFS_STATE") or DEFAULT_STATE_DIR)


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (Smp.tx), never implicit.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # Freed content (e.g. a shredded wrapped key) is overwritten with zeros.
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class Smp:
    """An opened SMP state directory. Use :meth:`init` or :meth:`open`."""

    def __init__(self, state_dir: Path, conn: sqlite3.Connection,
                 before_delete: Callable[[StoreRow], None] | None = None):
        self.state_dir = Path(state_dir)
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._master: bytes | None = None
        self._lock = threading.RLock()
        self._depth = 0
        #: Called with a store row just before that store is deleted (any reason:
        #: retention, association/folder removal, retire). The daemon passes it to
        #: stop serving the store (close it, invalidate the kernel's caches).
        self.before_delete = before_delete
        #: Added to every audit entry made through this connection: the network
        #: layer sets e.g. {"via": "https", "address": "10.0.0.7"} on the
        #: connection it runs one remote call on.
        self.audit_context: dict = {}
        self._read_only_db: ReadOnlyDb | None = None           # see open_read_only

    # -- creating and opening ------------------------------------------------

    @classmethod
    def init(cls, state_dir, server: str | None = None, folder=None,
             max_clients: int = 100, min_free: str = "500MB") -> Smp:
        """Create a new SMP in ``state_dir``: database, master key, one storage folder."""
        state_dir = Path(state_dir).absolute()
        if state_dir.exists() and not state_dir.is_dir() or any(
                p.exists() and not p.is_dir() for p in state_dir.parents):
            raise StateDirError(f"cannot create the state directory {state_dir}: a file is in the way",
                                "choose a --state path whose every component is a directory")
        if (state_dir / DB_FILE).exists() or (state_dir / keymod.MASTER_KEY_FILE).exists():
            raise StateDirError(f"{state_dir} already holds an SMP",
                                "use it as it is, or choose another --state directory")
        parse_free(min_free)                 # validate before creating anything
        if folder is not None:
            folder = check_absolute(folder)
        foldermod.check_max_clients(max_clients)
        if server:
            check_server_name(server)
        try:
            state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
            os.chmod(state_dir, 0o711)
        except OSError as e:
            raise StateDirError(f"cannot create the state directory {state_dir}: {e.strerror}",
                                "choose a --state path this user may create")
        fd = os.open(state_dir / DB_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        smp = cls(state_dir, _connect(state_dir / DB_FILE))
        smp._migrate(0)
        keymod.create_master_key(state_dir / keymod.MASTER_KEY_FILE)
        if server:
            smp.set_setting("server", server)
        foldermod.add_folder(smp, folder or state_dir / "store",
                             max_clients=max_clients, min_free=min_free)
        audit.record(smp, os.geteuid(), "init", server=smp.setting("server"))
        return smp

    @classmethod
    def open(cls, state_dir=None, before_delete: Callable[[StoreRow], None] | None = None) -> Smp:
        """Open an existing SMP; :class:`StateDirError` if there is none."""
        state_dir = resolve_state_dir(state_dir).absolute()
        db_path = state_dir / DB_FILE
        if not state_dir.is_dir():
            raise StateDirError(f"state directory {state_dir} does not exist",
                                "create an SMP with `smpfs init`, or point --state / SMPFS_STATE at one")
        if not db_path.is_file():
            raise StateDirError(f"{state_dir} is not an SMP state directory (no {DB_FILE})",
                                "create one with `smpfs --state DIR init`")
        if not os.access(db_path, os.R_OK | os.W_OK):
            raise StateDirError(f"cannot open {db_path}: permission denied",
                                "SMP administration needs root; other users go through the mounted SMP")
        try:
            conn = _connect(db_path)
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise StateDirError(f"{db_path} is not a readable SMP database: {e}")
        version = int(version[0]) if version else 0
        if version > SCHEMA_VERSION:
            raise StateDirError(f"{db_path} has schema version {version}; this smpfs knows up to {SCHEMA_VERSION}",
                                "upgrade smpfs to a version that created it")
        if version < 1:
            raise StateDirError(f"{db_path} is not an initialised SMP database")
        smp = cls(state_dir, conn, before_delete)
        smp._migrate(version)
        return smp

    @classmethod
    def open_read_only(cls, state_dir=None) -> Smp:
        """Open an SMP only to read it, changing not a byte of its state dir
        (``fsck --no-repair``): smp.db is opened as store.db is by ``recover``."""
        from ..store.readonly import ReadOnlyDb
        state_dir = resolve_state_dir(state_dir).absolute()
        db_path = state_dir / DB_FILE
        if not db_path.is_file():
            raise StateDirError(f"{state_dir} is not an SMP state directory (no {DB_FILE})",
                                "create one with `smpfs --state DIR init`")
        try:
            ro = ReadOnlyDb(db_path)
            version = ro.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except (sqlite3.DatabaseError, OSError) as e:
            raise StateDirError(f"{db_path} is not a readable SMP database: {e}")
        if not version or int(version[0]) != SCHEMA_VERSION:
            ro.close()
            raise StateDirError(f"{db_path} has schema version {version[0] if version else 0}, not "
                                f"{SCHEMA_VERSION}", "open it once without --no-repair to migrate it")
        ro.conn.row_factory = sqlite3.Row
        smp = cls(state_dir, ro.conn)
        smp._read_only_db = ro
        return smp

    def _migrate(self, version: int) -> None:
        for target, sql in MIGRATIONS:
            if target > version:
                with self.tx():
                    for stmt in sql.split(";"):
                        if stmt.strip():
                            self.conn.execute(stmt)
                    self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                                      (str(target),))

    def close(self) -> None:
        if self._read_only_db is not None:
            self._read_only_db.close()
        else:
            self.conn.close()

    # -- transactions --------------------------------------------------------

    @contextlib.contextmanager
    def tx(self):
        """One write transaction (BEGIN IMMEDIATE); nested uses join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK")
                raise
            else:
                self._depth = 0
                self.conn.execute("COMMIT")

    def query(self, sql: str, params=()) -> list[dict]:
        with self._lock:          # one connection may be shared by the daemon's threads
            return [dict(r) for r in self.conn.execute(sql, params)]

    def query_one(self, sql: str, params=()) -> dict | None:
        with self._lock:
            r = self.conn.execute(sql, params).fetchone()
            return dict(r) if r else None

    def rows_where(self, table: str, where: str | None = None, params: Sequence[Any] = (), *,
                   select: str = "*", order_by: str | None = None, limit: int | None = None
                   ) -> list[dict[str, Any]]:
        """sqlite-utils' ``rows_where`` on ``table``, read whole under the connection's lock."""
        with self._lock:
            return list(self.db.table(table).rows_where(where, params, select=select, order_by=order_by,
                                                        limit=limit))

    def get_row(self, table: str, pk: Any) -> dict[str, Any] | None:
        """The row of ``table`` with primary key ``pk`` (sqlite-utils' ``get``), or None."""
        with self._lock:
            try:
                return self.db.table(table).get(pk)
            except NotFoundError:
                return None

    # -- settings --------------------------------------------------------------

    def setting(self, name: str) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
        if row is not None:
            return row[0]
        if name == "server":
            return socket.gethostname().split(".")[0].upper()
        default = DEFAULTS.get(name)          # (server's None is computed above)
        if default is not None:
            return default
        raise KeyError(name)

    def set_setting(self, name: str, value) -> None:
        with self.tx():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, str(value)))

    def settings(self) -> dict:
        return {"server": self.setting("server"),
                "restore_only": self.restore_only,
                "delete_after_s": self.delete_after_s}

    # -- the mount's dirty flag ----------------------------------------------

    @property
    def dirty(self) -> bool:
        """Set while mounted; still set after a mount that did not end cleanly
        (the next mount checks every store first, see smpfs.store.fsck)."""
        row = self.query_one("SELECT value FROM meta WHERE key='dirty'")
        return row is not None and row["value"] == "1"

    def set_dirty(self, dirty: bool) -> None:
        with self.tx():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('dirty', ?)", ("1" if dirty else "0",))

    @property
    def restore_only(self) -> bool:
        return self.setting("restore_only") == "1"

    @property
    def delete_after_s(self) -> int:
        return int(self.setting("delete_after_s"))

    # -- keys --------------------------------------------------------------------

    def master_key(self) -> bytes:
        if self._master is None:
            from . import masterkey
            masterkey.finish_interrupted(self.state_dir, self.conn)   # a rotation a kill cut short
            self._master = keymod.load_master_key(self.state_dir / keymod.MASTER_KEY_FILE)
        return self._master

    def forget_master_key(self) -> None:
        """Drop the cached master key (it was rotated): the next use reads the file."""
        self._master = None

    def scrub_freed_pages(self) -> str:
        """After a key was destroyed or rewrapped: no old copy of it left in the
        WAL or in free pages of smp.db. ``secure_delete`` zeroes what a change
        frees; the WAL is checkpointed into the database and truncated, and a
        database with free pages is vacuumed. Returns "ok", or "busy" when
        another connection held the WAL (the next checkpoint overwrites it)."""
        def checkpoint() -> str:
            for _ in range(5):
                busy, _log, _done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return "ok"
                time.sleep(0.1)
            return "busy"
        with self._lock:
            if self.conn.in_transaction:
                return "busy"
            result = checkpoint()
            if self.conn.execute("PRAGMA freelist_count").fetchone()[0]:
                try:
                    self.conn.execute("VACUUM")
                except sqlite3.OperationalError:
                    return "busy"
                result = checkpoint()
        return result

    def data_key(self, store_row: StoreRow | Mapping[str, Any]) -> bytes:
        """The store's data key (unwrapped); refused once the store was shredded."""
        if isinstance(store_row, StoreRow):
            store_id, wrapped = store_row.store_id, store_row.wrapped_key
        else:
            store_id, wrapped = store_row["store_id"], store_row.get("wrapped_key")
        if wrapped is None:
            raise KeyFileError(f"store {store_id[:12]}… has been deleted; its key is destroyed")
        return keymod.unwrap(self.master_key(), store_id, wrapped)

    # -- stores and paths --------------------------------------------------------

    def folder(self, folder_id: int) -> dict:
        row = self.query_one("SELECT * FROM folders WHERE id=?", (folder_id,))
        if row is None:
            raise NotFound(f"storage folder #{folder_id} does not exist")
        return row

    def store_path(self, store_row: dict) -> Path:
        """Where the store's encrypted files live: FOLDER/<store id>."""
        return Path(self.folder(store_row["folder_id"])["path"]) / store_row["store_id"]

    @staticmethod
    def share_name(folder_row: Mapping[str, Any]) -> str:
        return share_of(folder_row["share"])

    def unc(self, store_row: dict) -> str:
        share = self.share_name(self.folder(store_row["folder_id"]))
        return f"\\\\{self.setting('server')}\\{share}\\{store_row['store_id']}"

    def mount_path(self, store_row: dict, mountpoint) -> Path:
        share = self.share_name(self.folder(store_row["folder_id"]))
        return Path(mountpoint) / share / store_row["store_id"]

    def mountpoint(self) -> Path | None:
        """The mountpoint named in daemon.json, if a daemon serves this SMP."""
        if not daemon_alive(self.state_dir):
            return None
        return self._daemon_mountpoint()

    def _daemon_mountpoint(self) -> Path | None:
        try:
            info = json.loads((self.state_dir / DAEMON_FILE).read_text())
            return Path(info["mountpoint"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def dead_mount(self) -> Path | None:
        """The mount a daemon of this SMP left behind when it died (still in the
        mount table, answering ENOTCONN), if there is one."""
        if daemon_alive(self.state_dir):
            return None
        mnt = self._daemon_mountpoint()
        return mnt if mnt is not None and str(mnt) in fuse_mounts() else None

    def stores(self, include_deleted: bool = False) -> list[dict]:
        """Store rows joined with their association's computers, oldest first.

        ``include_deleted=False`` leaves out stores being or already deleted.
        """
        where = "" if include_deleted else f"WHERE s.{LIVE_SQL}"
        return self.query(
            "SELECT s.*, a.source, a.dest, a.migration_type FROM stores s "
            f"JOIN associations a ON a.id = s.association_id {where} ORDER BY s.id")

    def store(self, store_id: str) -> dict:
        row = self.query_one(
            "SELECT s.*, a.source, a.dest, a.migration_type FROM stores s "
            "JOIN associations a ON a.id = s.association_id WHERE s.store_id=?", (store_id,))
        if row is None:
            raise NotFound(f"no state store {store_id}")
        return row


_SERVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def check_server_name(name) -> str:
    """A server name for UNC paths: a host name (no spaces, backslashes or shell characters)."""
    if not _SERVER.fullmatch(str(name or "").strip()):
        raise UsageError("invalid server name",
                         "use the host name clients reach: letters, digits, '.', '-', '_', e.g. SMP01")
    return str(name).strip()

