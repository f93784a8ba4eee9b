"""Retention: the deletion policy, deadlines, and deletion that is final.

* Policy: ``delete_after_s`` in settings (default 86400 = one day, ConfigMgr's
  default; 0 = delete immediately). The policy in force when the restore is
  *released* is recorded on the store (``retention_s``, ``delete_at``); a later
  change does not move deadlines already set. :func:`reapply_retention` moves
  them on purpose, audited.
* :func:`sweep` deletes every store whose ``delete_at`` has passed, and first
  finishes any deletion a crash interrupted (status ``deleting``).
* :func:`delete_store` is crash-safe crypto-shredding (``smp.before_delete``,
  if set, is called first so a daemon stops serving the store):

  1. one transaction: ``wrapped_key = NULL``, ``status = 'deleting'``
     (from here on the store is gone from the mount and its blocks can never
     be decrypted again, backups included; ``secure_delete`` zeroes the bytes);
  2. ``Smp.scrub_freed_pages``: the WAL checkpointed and truncated, free pages
     vacuumed, so no old copy of the key stays in the WAL or the freelist;
  3. ``layout.destroy_store`` removes the blocks and metadata (idempotent);
  4. ``status = 'deleted'``, ``deleted_at``, ``bytes_freed``; audited.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

from ..errors import UsageError
from ..units import parse_duration
from . import audit
from .rows import StoreRow
from .status import GONE, Status, sql_in, transition


def policy(smp) -> int:
    """Seconds a restored store is kept after its restore is released (0 = immediately)."""
    return smp.delete_after_s


def set_policy(smp, seconds: int, uid: int = 0) -> int:
    seconds = int(seconds)
    if seconds < 0:
        raise UsageError("a retention time cannot be negative")
    old = policy(smp)
    smp.set_setting("delete_after_s", seconds)
    audit.record(smp, uid, "config", setting="delete_after_s", old=old, new=seconds)
    return seconds


def next_deadline(smp) -> float | None:
    """When the next sweep is due (epoch), or None if nothing is scheduled.

    A store left in ``deleting`` by a crash is due at once (0.0).
    """
    if smp.query_one("SELECT 1 AS x FROM stores WHERE status=?", (Status.DELETING.value,)):
        return 0.0
    row = smp.query_one("SELECT MIN(delete_at) AS t FROM stores "
                        f"WHERE delete_at IS NOT NULL AND status NOT IN {_NOT_DUE}")
    return row["t"] if row else None


def parse_at(text: str | None, now: float | None = None) -> float:
    """``+8d`` / ``+30m`` (relative to now), ``now``, or an ISO time -> epoch seconds.

    An ISO time without a zone is local time.
    """
    now = time.time() if now is None else now
    if text is None or str(text).strip().lower() in ("", "now"):
        return now
    t = str(text).strip()
    if t.startswith("+"):
        return now + parse_duration(t[1:])
    try:
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError("invalid time", "write +8d, +12h, or an ISO time like 2025-06-01T12:00")
    return when.timestamp()


#: One deletion at a time per process: the daemon runs commands and its sweep in
#: worker threads, and a sweep must not "resume" (and race the rmtree of) a
#: deletion another thread is doing right now; it waits and finds it done.
_deleting = threading.RLock()
#: Not swept: gone already, or being restored again (a re-run restore is not deleted under its reader).
_NOT_DUE = sql_in(GONE | {Status.RESTORING})


def delete_store(smp, store_row: dict, reason: str, uid: int = 0) -> dict:
    """Crypto-shred and remove one store (see module doc). Safe to re-run."""
    with _deleting:
        return _delete_store(smp, store_row, reason, uid)


def _delete_store(smp, store_row: dict, reason: str, uid: int = 0) -> dict:
    from ..store import layout
    store_id = store_row["store_id"]
    cur = smp.store(store_id)
    if cur["status"] == Status.DELETED:
        return {"store_id": store_id, "bytes_freed": 0, "reason": reason, "already": True}
    if smp.before_delete is not None:
        smp.before_delete(StoreRow.from_row(cur))
    folder_path = Path(smp.folder(store_row["folder_id"])["path"])
    # what the store takes is measured before anything goes, so a deletion a
    # crash interrupted still reports everything it freed when it is resumed
    live = folder_path / store_id
    size = layout.tree_bytes(live) if live.exists() else None
    cur = transition(smp, cur, Status.DELETING, wrapped_key=None,
                     bytes_freed=size if size is not None else cur["bytes_freed"])
    checkpoint = smp.scrub_freed_pages()
    freed = int(layout.destroy_store(folder_path, store_id) or 0)
    freed = max(freed, int(cur["bytes_freed"] or 0))
    now = time.time()
    row = transition(smp, cur, Status.DELETED, uid=uid, action="delete",
                     audit_detail={"computer": cur["source"], "reason": reason, "dest": cur["dest"],
                                   "bytes_freed": freed, "wal_checkpoint": checkpoint},
                     deleted_at=now, bytes_freed=freed)
    return {"store_id": store_id, "source": row["source"], "dest": row["dest"],
            "bytes_freed": freed, "reason": reason, "deleted_at": now}


def sweep(smp, now: float | None = None, uid: int = 0) -> list[dict]:
    """Finish interrupted deletions, then delete every store whose deadline passed."""
    now = time.time() if now is None else now
    done = [delete_store(smp, s, reason="resumed", uid=uid)
            for s in smp.query("SELECT * FROM stores WHERE status=?", (Status.DELETING.value,))]
    # a store being restored again (a re-run restore) is not deleted under its
    # reader: its timer waits for the next release
    due = smp.query("SELECT * FROM stores WHERE delete_at IS NOT NULL AND delete_at <= ? "
                    f"AND status NOT IN {_NOT_DUE} ORDER BY delete_at", (now,))
    done += [delete_store(smp, s, reason="retention", uid=uid) for s in due]
    return [d for d in done if not d.get("already")]   # not those another thread finished meanwhile


def reapply_retention(smp, uid: int = 0) -> list[dict]:
    """Recompute the deadlines of restored stores from the current policy, on purpose."""
    pol = policy(smp)
    changed = []
    with smp.tx():
        for s in smp.query("SELECT * FROM stores WHERE status=? AND restore_released_at IS NOT NULL",
                           (Status.RESTORED.value,)):
            new = s["restore_released_at"] + pol
            if new != s["delete_at"] or s["retention_s"] != pol:
                smp.conn.execute("UPDATE stores SET retention_s=?, delete_at=? WHERE id=?",
                                 (pol, new, s["id"]))
                changed.append({"store_id": s["store_id"], "old_delete_at": s["delete_at"],
                                "delete_at": new})
    for c in changed:
        audit.record(smp, uid, "reapply_retention", store_id=c["store_id"], retention_s=pol,
                     old_delete_at=c["old_delete_at"], delete_at=c["delete_at"])
    if not changed:
        audit.record(smp, uid, "reapply_retention", retention_s=pol, stores=0)
    return changed


def retire(smp, uid: int = 0) -> list[dict]:
    """Delete every store (role removal that leaves nothing behind) and stop new captures."""
    smp.set_setting("restore_only", "1")
    done = sweep(smp, now=0, uid=uid)        # finishes interrupted deletions only
    done += [delete_store(smp, s, reason="retired", uid=uid) for s in smp.stores()]
    from ..store.reserve import release_reserve
    for f in smp.query("SELECT path FROM folders WHERE removed_at IS NULL"):
        release_reserve(Path(f["path"]))       # nothing of smpfs's is left in the folders
    smp.set_setting("retired_at", time.time())
    audit.record(smp, uid, "retire", stores_deleted=len(done),
                 bytes_freed=sum(d.get("bytes_freed", 0) for d in done))
    return done
