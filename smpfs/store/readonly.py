"""Opening a store's database without changing a byte of the store.

``smpfs recover`` and ``smpfs fsck --no-repair``/``--scrub`` must work from
read-only media (a backup disk) and must leave what they read exactly as it
was. A WAL-mode sqlite database opened the ordinary way writes: it creates
``-wal`` and ``-shm`` files, rebuilds the WAL index, checkpoints on close. So:

* no WAL content (a store closed cleanly): the database file is opened
  ``immutable=1``: sqlite reads it and creates, locks and writes nothing;
* a WAL with committed changes in it (a store whose SMP crashed): those
  changes are part of the store, so ``store.db`` and its WAL are copied into
  a private temporary directory and the copy is opened (it costs the size of
  store.db in $TMPDIR, and leaves the original untouched).

Either way the connection is ``query_only``. ``setup(conn)`` runs before
that, for temporary objects (they live in memory, not in the file): stores
made before inline blocks lack ``blocks.data``, and :func:`add_blocks_data`
supplies it as a view. The SMP's own smp.db is opened the same way by
``fsck --no-repair``.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from pathlib import Path


class ReadOnlyDb:
    """``conn``: a query-only connection to ``path``'s database; :meth:`close` ends it."""

    def __init__(self, path: Path, setup=None):
        path = Path(path)
        self._tmp: str | None = None
        wal = path.with_name(path.name + "-wal")
        try:
            has_wal = wal.stat().st_size > 0
        except FileNotFoundError:
            has_wal = False
        if has_wal:
            self._tmp = tempfile.mkdtemp(prefix="smpfs-ro-")
            try:
                copy = Path(self._tmp) / path.name
                shutil.copyfile(path, copy)
                shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
                self.conn = sqlite3.connect(copy, isolation_level=None, check_same_thread=False)
            except BaseException:
                shutil.rmtree(self._tmp, ignore_errors=True)
                raise
        else:
            uri = "file:" + urllib.parse.quote(os.fsdecode(path.absolute())) + "?immutable=1"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if setup is not None:
            setup(self.conn)
        self.conn.execute("PRAGMA query_only=1")

    def close(self) -> None:
        """Close the connection and remove the private copy, if any."""
        self.conn.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def add_blocks_data(conn: sqlite3.Connection) -> None:
    """A store made before inline blocks: ``blocks.data`` as a temporary view."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(blocks)")}
    if "data" not in cols:
        conn.execute("CREATE TEMP VIEW blocks AS SELECT ino, blkno, counter, length, NULL AS data FROM main.blocks")
