"""Rotating the master key: every live wrapped key rewrapped, the old key destroyed.

``smpfs key rotate`` (root; while mounted it runs in the daemon) does, in
this order, each step durable before the next:

1. a new key is written to ``STATE/master.key.new`` (created exclusively, fsynced);
2. one smp.db transaction rewraps every live store's data key and every
   computer secret under the new key and records the new key's fingerprint
   (``meta.master_key_id``);
3. ``master.key.new`` is renamed over ``master.key``, the directory fsynced,
   and the old key's file (still open) overwritten with zeros and fsynced.

A kill at any point leaves a usable SMP: the next use of the master key
(:func:`finish_interrupted`) finds ``master.key.new`` and, if smp.db already
names it (step 2 committed), finishes step 3; otherwise it removes it (the
rotation never happened). Data keys do not change, so recovery keys shown
before stay valid. What rotation buys: a wrapped key that survives somewhere
(a freed disk block, a WAL frame, a backup of smp.db) is useless once the key
that wrapped it is gone.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..crypto import keys as keymod
from ..crypto import secrets as secretmod
from ..errors import KeyFileError
from . import audit

NEW_KEY_FILE = keymod.MASTER_KEY_FILE + ".new"


class Interrupted(Exception):
    """Raised by :func:`rotate` at ``stop_after`` (tests: a kill between steps)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(state: Path) -> None:
    """Step 3: the new key file replaces the old one, whose bytes are then zeroed."""
    old_fd = os.open(state / keymod.MASTER_KEY_FILE, os.O_RDWR | os.O_NOFOLLOW)
    try:
        os.rename(state / NEW_KEY_FILE, state / keymod.MASTER_KEY_FILE)
        _fsync_dir(state)
        os.pwrite(old_fd, bytes(keymod.KEY_BYTES), 0)
        os.fsync(old_fd)
    finally:
        os.close(old_fd)


def recorded_id(conn) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key='master_key_id'").fetchone()
    return row[0] if row else None


def finish_interrupted(state: Path, conn) -> str | None:
    """Finish or undo a rotation a kill interrupted; say which (None: there was none)."""
    state = Path(state)
    new_path = state / NEW_KEY_FILE
    if not os.path.lexists(new_path):
        return None
    try:
        new = keymod.load_master_key(new_path)
    except KeyFileError:
        new = None                                 # cut short while written: never used
    if new is not None and recorded_id(conn) == keymod.key_id(new):
        _swap_in(state)                            # smp.db is wrapped under it: step 3
        return "finished"
    os.unlink(new_path)                            # smp.db never used it
    _fsync_dir(state)
    return "undone"


def rotate(smp, uid: int, *, stop_after: str | None = None) -> dict:
    """Rotate the master key of ``smp`` (see the module doc)."""
    state = smp.state_dir
    old = smp.master_key()                         # (finishes an interrupted rotation first)
    keymod.create_master_key(state / NEW_KEY_FILE)
    _fsync_dir(state)
    if stop_after == "new-key-written":
        raise Interrupted(stop_after)
    new = keymod.load_master_key(state / NEW_KEY_FILE)
    with smp.tx():
        stores = smp.conn.execute("SELECT id, store_id, wrapped_key FROM stores"
                                  " WHERE wrapped_key IS NOT NULL").fetchall()
        for rowid, store_id, wrapped in stores:
            data_key = keymod.unwrap(old, store_id, wrapped)
            smp.conn.execute("UPDATE stores SET wrapped_key=? WHERE id=?",
                             (keymod.wrap(new, store_id, data_key), rowid))
        comps = smp.conn.execute("SELECT name, secret_wrapped FROM computers"
                                 " WHERE secret_wrapped IS NOT NULL").fetchall()
        for name, wrapped in comps:
            secret = secretmod.unwrap_secret(old, name, wrapped)
            smp.conn.execute("UPDATE computers SET secret_wrapped=? WHERE name=?",
                             (secretmod.wrap_secret(new, name, secret), name))
        smp.conn.execute("INSERT OR REPLACE INTO meta VALUES ('master_key_id', ?)", (keymod.key_id(new),))
    if stop_after == "db-rewrapped":
        raise Interrupted(stop_after)
    _swap_in(state)
    smp.forget_master_key()
    smp.scrub_freed_pages()                       # the old wrapped copies: out of the WAL and free pages
    audit.record(smp, uid, "key_rotate", stores=len(stores), computers=len(comps))
    return {"stores_rewrapped": len(stores), "computer_secrets_rewrapped": len(comps),
            "master_key_id": keymod.key_id(new)}
