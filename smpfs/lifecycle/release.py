"""Release State Store: after capture (lock the store read-only for the
destination) and after restore (start the retention timer).

Every Request must be matched by a Release. Releasing twice is refused
(NothingToRelease) with a message saying it was already released.
"""
from __future__ import annotations

import time

from ..errors import NothingToRelease
from . import audit, retention
from .computer import resolve_caller
from .request import _result


def _newest(smp, column: str, name: str) -> dict | None:
    return smp.query_one(
        "SELECT s.*, a.source, a.dest FROM stores s JOIN associations a ON a.id=s.association_id "
        f"WHERE a.{column}=? AND a.removed_at IS NULL AND s.status NOT IN ('deleting','deleted') "
        "ORDER BY s.id DESC LIMIT 1", (name,))


@audit.audited("release_capture")
def release_capture(smp, caller_uid: int, computer: str | None = None) -> dict:
    """COMPUTER's capture is done: the store becomes read-only, for its destination only."""
    comp = resolve_caller(smp, caller_uid, computer, "release capture")
    name = comp["name"]
    s = _newest(smp, "source", name)
    if s is None or s["status"] != "capturing":
        already = f" (its store is already {s['status']})" if s else ""
        raise NothingToRelease(f"{name} has no capture to release{already}",
                               None if s else f"request one first: smpfs request capture {name}")
    with smp.tx():
        smp.conn.execute("UPDATE stores SET status='captured', capture_released_at=? WHERE id=?",
                         (time.time(), s["id"]))
    audit.record(smp, caller_uid, "release_capture", computer=name, store_id=s["store_id"], dest=s["dest"])
    return _result(smp, smp.store(s["store_id"]), name)


@audit.audited("release_restore")
def release_restore(smp, caller_uid: int, computer: str | None = None) -> dict:
    """COMPUTER's restore is done: record the retention policy and start the timer.

    With the policy 'delete immediately' (0) the store is deleted at once
    (``"deleted": true`` in the result).
    """
    comp = resolve_caller(smp, caller_uid, computer, "release restore")
    name = comp["name"]
    s = _newest(smp, "dest", name)
    if s is None or s["status"] != "restoring":
        already = f" (its store is {s['status']})" if s else ""
        raise NothingToRelease(f"{name} has no restore to release{already}",
                               f"request one first: smpfs request restore {name}")
    pol = retention.policy(smp)
    now = time.time()
    with smp.tx():
        smp.conn.execute("UPDATE stores SET status='restored', restore_released_at=?, retention_s=?, "
                         "delete_at=? WHERE id=?", (now, pol, now + pol, s["id"]))
    audit.record(smp, caller_uid, "release_restore", computer=name, store_id=s["store_id"],
                 retention_s=pol, delete_at=now + pol)
    result = _result(smp, smp.store(s["store_id"]), name)
    result["deleted"] = False
    if pol == 0:
        retention.delete_store(smp, smp.store(s["store_id"]), reason="deleted immediately after restore",
                               uid=caller_uid)
        result.update(status="deleted", deleted=True, path=None)
    return result
