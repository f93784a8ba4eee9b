"""Computer associations: whose user state goes to which computer.

* **side-by-side** (SOURCE -> DEST): created by the admin before capture.
* **in-place** (SOURCE -> SOURCE, refresh / wipe-and-load): created
  automatically when a computer with no association requests a capture.

A computer is the source of at most one live association (a capture must know
where its state goes); it may be the destination of several. Associations are
never removed automatically. Removing one deletes its stores' data like an
expired store; it is refused while a migration is unfinished (capturing, or
captured but not yet restored) unless forced.
"""
from __future__ import annotations

import time

from ..errors import CaptureInProgress, Conflict, NotFound
from . import audit, computer
from .status import LIVE_SQL, UNFINISHED, Status


def associate(smp, source: str, dest: str, uid: int = 0) -> dict:
    """Create a side-by-side (or, if SOURCE = DEST, in-place) association."""
    src, dst = computer.get(smp, source), computer.get(smp, dest)
    mtype = "in-place" if src["name"].lower() == dst["name"].lower() else "side-by-side"
    with smp.tx():
        cur = live_for_source(smp, src["name"])
        if cur is not None:
            raise Conflict(f"{src['name']} already has an association ({cur['source']} -> {cur['dest']})",
                           f"remove it first: smpfs association remove {cur['source']} {cur['dest']}")
        aid = smp.conn.execute(
            "INSERT INTO associations (source, dest, migration_type, created_at) VALUES (?,?,?,?)",
            (src["name"], dst["name"], mtype, time.time())).lastrowid
    audit.record(smp, uid, "associate", computer=src["name"], dest=dst["name"], migration_type=mtype)
    return get_by_id(smp, aid)


def get_by_id(smp, aid: int) -> dict:
    return smp.query_one("SELECT * FROM associations WHERE id=?", (aid,))


def live_for_source(smp, source: str) -> dict | None:
    return smp.query_one("SELECT * FROM associations WHERE source=? AND removed_at IS NULL", (source,))


def find(smp, source: str, dest: str) -> dict:
    row = smp.query_one("SELECT * FROM associations WHERE source=? AND dest=? AND removed_at IS NULL",
                        (source, dest))
    if row is None:
        raise NotFound(f"no association {source} -> {dest}", "see `smpfs association list`")
    return row


def stores_of(smp, aid: int, include_deleted: bool = False) -> list[dict]:
    where = "" if include_deleted else f"AND {LIVE_SQL}"
    return smp.query(f"SELECT * FROM stores WHERE association_id=? {where} ORDER BY id", (aid,))


def describe(smp, a: dict) -> dict:
    """An association with its newest store: status, times, UNC, deadline."""
    d = dict(a)
    stores = stores_of(smp, a["id"], include_deleted=True)
    last = stores[-1] if stores else None
    # created_at is the association's until it has a store, then the newest store's (as it
    # always was); these two never change meaning
    d["association_created_at"] = a["created_at"]
    d["requested_at"] = last["created_at"] if last else None
    d["status"] = last["status"] if last else "not started"
    d["stores"] = len(stores)
    if last:
        for k in ("store_id", "created_at", "capture_released_at", "restore_requested_at",
                  "restore_released_at", "retention_s", "delete_at", "deleted_at", "bytes_freed"):
            d[k] = last[k]
        d["unc"] = smp.unc(last)
    return d


def list_associations(smp, include_removed: bool = False) -> list[dict]:
    where = "" if include_removed else "WHERE removed_at IS NULL"
    return [describe(smp, a) for a in smp.query(f"SELECT * FROM associations {where} ORDER BY id")]


def remove(smp, source: str, dest: str, force: bool = False, uid: int = 0) -> dict:
    """Remove an association and delete its stores (crypto-shredding)."""
    from . import retention
    a = find(smp, source, dest)
    live = stores_of(smp, a["id"])
    busy = [s for s in live if s["status"] in UNFINISHED]
    if busy and not force:
        s = busy[-1]
        what = ("is capturing" if s["status"] == Status.CAPTURING
                else f"is {s['status']}, not yet restored by {a['dest']}")
        raise CaptureInProgress(f"the state store of {a['source']} -> {a['dest']} {what}",
                                "wait for the migration to finish, or use --force to delete its data now")
    deleted = [retention.delete_store(smp, s, reason="association removed", uid=uid) for s in live]
    with smp.tx():
        smp.conn.execute("UPDATE associations SET removed_at=? WHERE id=?", (time.time(), a["id"]))
    audit.record(smp, uid, "association_remove", computer=a["source"], dest=a["dest"],
                 forced=bool(busy), stores_deleted=len(deleted))
    return {"source": a["source"], "dest": a["dest"], "deleted": deleted,
            "changed_stores": [d["store_id"] for d in deleted]}
