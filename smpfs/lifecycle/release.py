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
from .request import step_result
from .status import LIVE_SQL, Status, transition


def _newest(smp, column: str, name: str) -> dict | None:
    return smp.query_one(
        "SELECT s.*, a.source, a.dest FROM stores s JOIN associations a ON a.id=s.association_id "
        f"WHERE a.{column}=? AND a.removed_at IS NULL AND s.{LIVE_SQL} "
        "ORDER BY s.id DESC LIMIT 1", (name,))


def _capture_hint(name: str, s: dict | None) -> str:
    """What the computer (not only root) can do next: every hint names a step it may run."""
    if s is None:
        return f"request one first: smpfs request capture {name}"
    if s["status"] == Status.CAPTURED:
        return f"nothing to do: the capture is released; {s['dest']} restores it next (smpfs request restore)"
    return f"nothing to do: the capture was released and {s['dest']} has taken it over"


def _restore_hint(smp, name: str, s: dict | None) -> str:
    if s is not None:
        if s["status"] == Status.CAPTURING:
            return f"{s['source']} must release its capture first; then request the restore: " \
                   f"smpfs request restore {name}"
        if s["status"] == Status.CAPTURED:
            return f"request one first: smpfs request restore {name}"
        return "nothing to do: the restore is released; the retention timer deletes the store"
    if smp.query_one("SELECT 1 FROM associations WHERE dest=? AND removed_at IS NULL", (name,)) is None:
        dest = smp.query_one("SELECT dest FROM associations WHERE source=? AND removed_at IS NULL "
                             "ORDER BY id DESC LIMIT 1", (name,))
        if dest is not None and dest["dest"] != name:
            return f"{name} is a source: its destination {dest['dest']} releases the restore " \
                   f"(smpfs release restore, run for {dest['dest']})"
        return f"{name} is the destination of no association: the destination computer releases its restore"
    return f"no store is waiting for {name}: its source captures (and releases the capture) first"


@audit.audited("release_capture")
def release_capture(smp, caller_uid: int, computer: str | None = None) -> dict:
    """COMPUTER's capture is done: the store becomes read-only, for its destination only."""
    comp = resolve_caller(smp, caller_uid, computer, "release capture")
    name = comp["name"]
    s = _newest(smp, "source", name)
    if s is None or s["status"] != Status.CAPTURING:
        already = f" (its store is already {s['status']})" if s else ""
        raise NothingToRelease(f"{name} has no capture to release{already}", _capture_hint(name, s))
    row = transition(smp, s, Status.CAPTURED, uid=caller_uid, action="release_capture",
                     audit_detail={"computer": name, "dest": s["dest"]}, capture_released_at=time.time())
    return step_result(smp, row, name)


@audit.audited("release_restore")
def release_restore(smp, caller_uid: int, computer: str | None = None) -> dict:
    """COMPUTER's restore is done: record the retention policy and start the timer.

    With the policy 'delete immediately' (0) the store is deleted at once
    (``"deleted": true`` in the result).
    """
    comp = resolve_caller(smp, caller_uid, computer, "release restore")
    name = comp["name"]
    s = _newest(smp, "dest", name)
    if s is None or s["status"] != Status.RESTORING:
        already = f" (its store is {s['status']})" if s else ""
        raise NothingToRelease(f"{name} has no restore to release{already}", _restore_hint(smp, name, s))
    pol = retention.policy(smp)
    now = time.time()
    row = transition(smp, s, Status.RESTORED, uid=caller_uid, action="release_restore",
                     audit_detail={"computer": name, "retention_s": pol, "delete_at": now + pol},
                     restore_released_at=now, retention_s=pol, delete_at=now + pol)
    result = step_result(smp, row, name)
    result["deleted"] = False
    if pol == 0:
        retention.delete_store(smp, row, reason="deleted immediately after restore",
                               uid=caller_uid)
        result.update(status=Status.DELETED.value, deleted=True, path=None)
    return result
