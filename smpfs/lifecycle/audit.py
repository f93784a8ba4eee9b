"""The audit log: one queryable table instead of ConfigMgr's smpisapi/smpmgr logs.

Every request, release, refusal, deletion, key view, recovery and admin change
is a row: time, caller uid, computer, action, store id, outcome
(``ok`` | ``denied`` | ``error``) and a small JSON ``detail``.

Never put keys, paths inside a store or any user data into ``detail``.
"""
from __future__ import annotations

import functools
import json
import time

from ..errors import IntegrityError, KeyFileError, MountError, SmpError, StateDirError

#: Failures of the SMP itself (``error``); every other SmpError is a refusal (``denied``).
FAILURES = (IntegrityError, KeyFileError, MountError, StateDirError)

#: What one row may hold: each text field, each detail value, the whole detail.
MAX_FIELD = 64
MAX_VALUE = 512
MAX_DETAIL = 4096
#: Refusals of one uid (not root) recorded one row each per REFUSAL_WINDOW
#: seconds; beyond that they are counted in one ``refusals`` row of the window.
REFUSALS_PER_WINDOW = 10
REFUSAL_WINDOW = 60.0

_FORBIDDEN = ("key", "recovery_key", "data_key", "wrapped_key", "master", "secret", "nt_hash")


def record(smp, uid, action: str, computer: str | None = None, store_id: str | None = None,
           outcome: str = "ok", **detail) -> int:
    """Append one audit entry; returns its id."""
    assert outcome in ("ok", "denied", "error"), outcome
    bad = [k for k in detail if k in _FORBIDDEN]
    assert not bad, f"secrets must never reach the audit log: {bad}"
    detail = {**getattr(smp, "audit_context", {}), **detail}
    text = _detail_json(detail)
    with smp.tx():
        table = smp.db.table("audit")
        table.insert({"ts": time.time(), "uid": uid, "computer": _clip(computer, MAX_FIELD),
                      "action": _clip(action, MAX_FIELD), "store_id": _clip(store_id, MAX_FIELD),
                      "outcome": outcome, "detail": text})
        return table.last_rowid


def _clip(value, n: int):
    if isinstance(value, str) and len(value) > n:
        return value[:n] + "…"
    return value


def _detail_json(detail: dict) -> str | None:
    """The detail as JSON, each value at most MAX_VALUE characters, the whole at most MAX_DETAIL."""
    if not detail:
        return None
    text = json.dumps({str(k)[:MAX_FIELD]: _clip(v, MAX_VALUE) for k, v in detail.items()},
                      sort_keys=True, default=str)
    if len(text) > MAX_DETAIL:
        text = json.dumps({"detail_truncated": len(text)})
    return text


def entries(smp, since_id: int = 0, limit: int | None = None) -> list[dict]:
    """Entries with id > ``since_id``, oldest first (``limit`` = the newest N)."""
    if limit:
        rows = smp.query("SELECT * FROM (SELECT * FROM audit WHERE id > ? ORDER BY id DESC LIMIT ?) "
                         "ORDER BY id", (since_id, int(limit)))
    else:
        rows = smp.query("SELECT * FROM audit WHERE id > ? ORDER BY id", (since_id,))
    for r in rows:
        r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
    return rows


def record_failure(smp, uid, action: str, err: SmpError, computer=None, store_id=None) -> None:
    """Record a failed call: ``denied`` when the SMP refused it (wrong uid, wrong
    step, no room, restore-only ...), ``error`` when the SMP itself failed.

    A uid other than root gets REFUSALS_PER_WINDOW rows per window; further
    refusals in the window only count up one ``refusals`` row (so a flood of
    refused calls cannot grow smp.db)."""
    failed = isinstance(err, FAILURES) or type(err) is SmpError
    outcome = "error" if failed else "denied"
    if uid != 0 and _count_refusal(smp, uid, action):
        return
    record(smp, uid, action, computer=computer, store_id=store_id, outcome=outcome,
           error=type(err).__name__, message=err.message)


def _count_refusal(smp, uid: int, action: str) -> bool:
    """True if this refusal was only counted (the uid's window is full)."""
    now = time.time()
    with smp.tx():
        recent = smp.query("SELECT id, action, outcome, detail FROM (SELECT * FROM audit ORDER BY id DESC "
                           "LIMIT 1000) WHERE uid=? AND ts>? AND outcome!='ok' ORDER BY id",
                           (uid, now - REFUSAL_WINDOW))
        counter = next((r for r in reversed(recent) if r["action"] == "refusals"), None)
        if counter is None and len(recent) < REFUSALS_PER_WINDOW:
            return False
        if counter is None:
            smp.db.table("audit").insert(
                {"ts": now, "uid": uid, "computer": None, "action": "refusals", "store_id": None,
                 "outcome": "denied", "detail": json.dumps({"count": 1, "last": now,
                                                            "actions": {action[:MAX_FIELD]: 1},
                                                            "window_s": REFUSAL_WINDOW}, sort_keys=True)})
            return True
        d = json.loads(counter["detail"])
        d["count"] += 1
        d["last"] = now
        if action in d["actions"] or len(d["actions"]) < 32:
            d["actions"][action[:MAX_FIELD]] = d["actions"].get(action[:MAX_FIELD], 0) + 1
        smp.db.table("audit").update(counter["id"], {"detail": json.dumps(d, sort_keys=True)})
    return True


def audited(action: str):
    """Decorator for ``fn(smp, caller_uid, computer=None, ...)``: refusals are audited.

    Successful calls record their own entry (they know the store id).
    """
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(smp, caller_uid, *args, **kwargs):
            try:
                return fn(smp, caller_uid, *args, **kwargs)
            except SmpError as e:
                from .computer import valid_name
                computer = kwargs.get("computer", args[0] if args else None)
                if not valid_name(computer):        # never store what a caller sent unchecked
                    computer = None
                if not computer and caller_uid:       # the computer the kernel's uid resolves to
                    row = smp.query_one("SELECT name FROM computers WHERE uid=?", (caller_uid,))
                    computer = row["name"] if row else None
                record_failure(smp, caller_uid, action, e, computer=computer)
                raise
        return wrapper
    return deco


class DenialCounter:
    """The filesystem's refusals (EACCES, EROFS on a store), counted in memory by
    (uid, store) and written as one ``fs_denied`` entry per uid and store at most
    every ``window`` seconds: a tool probing in a loop is seen, and cannot flood
    the log. :meth:`note` is cheap (the FUSE layer calls it on each refusal);
    :meth:`flush` writes (the daemon calls it from its timer and at unmount)."""

    def __init__(self, window: float = 60.0, max_keys: int = 10_000, clock=time.monotonic):
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self.pending: dict[tuple, dict] = {}
        self.last: dict[tuple, float] = {}

    def note(self, uid: int, store_id: str | None, err: int) -> None:
        import errno as errno_mod
        key = (uid, store_id)
        if key not in self.pending and len(self.pending) >= self.max_keys:
            key = (uid, None)                    # too many stores at once: count by uid alone
        c = self.pending.setdefault(key, {"count": 0, "errnos": {}})
        c["count"] += 1
        name = errno_mod.errorcode.get(err, str(err))
        c["errnos"][name] = c["errnos"].get(name, 0) + 1

    def flush(self, smp, force: bool = False) -> int:
        """Write what is due (everything with ``force``); returns the entries written."""
        now = self.clock()
        written = 0
        for key, c in list(self.pending.items()):
            if not force and now - self.last.get(key, float("-inf")) < self.window:
                continue
            uid, store_id = key
            row = smp.query_one("SELECT name FROM computers WHERE uid=?", (uid,))
            record(smp, uid, "fs_denied", computer=row["name"] if row else None, store_id=store_id,
                   outcome="denied", count=c["count"], errnos=c["errnos"], window_s=self.window)
            del self.pending[key]
            self.last[key] = now
            written += 1
        for key, t in list(self.last.items()):   # forget quiet keys: memory stays bounded
            if now - t >= self.window and key not in self.pending:
                del self.last[key]
        return written
