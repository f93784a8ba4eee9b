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

_FORBIDDEN = ("key", "recovery_key", "data_key", "wrapped_key", "master", "secret", "nt_hash")


def record(smp, uid, action: str, computer: str | None = None, store_id: str | None = None,
           outcome: str = "ok", **detail) -> int:
    """Append one audit entry; returns its id."""
    assert outcome in ("ok", "denied", "error"), outcome
    bad = [k for k in detail if k in _FORBIDDEN]
    assert not bad, f"secrets must never reach the audit log: {bad}"
    detail = {**getattr(smp, "audit_context", {}), **detail}
    with smp.tx():
        cur = smp.conn.execute(
            "INSERT INTO audit (ts, uid, computer, action, store_id, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), uid, computer, action, store_id, outcome,
             json.dumps(detail, sort_keys=True, default=str) if detail else None))
        return cur.lastrowid


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
    step, no room, restore-only ...), ``error`` when the SMP itself failed."""
    failed = isinstance(err, FAILURES) or type(err) is SmpError
    record(smp, uid, action, computer=computer, store_id=store_id,
           outcome="error" if failed else "denied",
           error=type(err).__name__, message=err.message)


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
                computer = kwargs.get("computer", args[0] if args else None)
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
