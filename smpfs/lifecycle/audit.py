"""The audit log: one queryable table instead of ConfigMgr's smpisapi/smpmgr logs.

Every request, release, refusal, deletion, key view, recovery and admin change
is a row: time, caller uid, computer, action, store id, outcome
(``ok`` | ``denied`` | ``error``) and a small JSON ``detail``.

Never put keys, paths inside a store or any user data into ``detail``.
"""
from __future__ import annotations

import functools
import json
import threading
import time

from ..errors import IntegrityError, KeyFileError, MountError, SmpError, StateDirError

#: Failures of the SMP itself (``error``); every other SmpError is a refusal (``denied``).
FAILURES = (IntegrityError, KeyFileError, MountError, StateDirError)

#: What one row may hold: each text field, each detail value, the whole detail.
MAX_FIELD = 64
MAX_VALUE = 512
MAX_DETAIL = 4096
#: Refusals of one source (a uid but root; a network caller not yet known by its
#: address) recorded one row each per REFUSAL_WINDOW seconds; beyond that they
#: are counted in one ``refusals`` row of that source and window.
REFUSALS_PER_WINDOW = 10
REFUSAL_WINDOW = 60.0
#: Rows all sources together may add for refusals in one window (their own and
#: their ``refusals`` rows); beyond that every refusal counts up one ``refusals``
#: row of the window for all sources (``"sources": "all"``): many uids or many
#: addresses cannot grow smp.db faster than this either.
REFUSAL_ROWS_PER_WINDOW = 100
#: A repeated idempotent call (a retried Request State Store that hands out the
#: same store) is one row per REPEAT_WINDOW seconds, counting the repeats.
REPEAT_WINDOW = 60.0
#: Sources and repeated calls tracked at once (memory stays bounded).
MAX_TRACKED = 10_000

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

    ``uid`` None is a network caller not authenticated (yet): its source is the
    address in ``smp.audit_context``. A source other than root gets
    REFUSALS_PER_WINDOW rows per window, and all sources together
    REFUSAL_ROWS_PER_WINDOW; further refusals only count up a ``refusals`` row
    (so a flood of refused calls adds at most about REFUSAL_ROWS_PER_WINDOW rows a
    window, however many calls, uids or addresses)."""
    failed = isinstance(err, FAILURES) or type(err) is SmpError
    outcome = "error" if failed else "denied"
    if uid != 0 and _count_refusal(smp, uid, action):
        return
    record(smp, uid, action, computer=computer, store_id=store_id, outcome=outcome,
           error=type(err).__name__, message=err.message)


class _Windows:
    """What one process has audited lately in one smp.db: refusals by source and
    window, repeated calls by key. Kept in memory (only the daemon serves callers
    other than root), so the throttle costs no query and no volume of rows
    defeats it; the rows it writes are in smp.db as usual."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sources: dict = {}      # source -> {"start", "rows", "counter": (id, detail) | None}
        self.start = float("-inf")   # the window of all sources together
        self.rows = 0
        self.counter = None          # (id, detail) of the all-sources ``refusals`` row
        self.repeats: dict = {}      # (uid, action, store_id) -> {"start", "id", "detail"}


_WINDOWS: dict[str, _Windows] = {}
_WINDOWS_LOCK = threading.Lock()


def _windows(smp) -> _Windows:
    key = str(getattr(smp, "state_dir", id(smp)))
    with _WINDOWS_LOCK:
        return _WINDOWS.setdefault(key, _Windows())


def _forget_old(table: dict, now: float, window: float) -> None:
    if len(table) >= MAX_TRACKED:
        for k in [k for k, v in table.items() if now - v["start"] >= window]:
            del table[k]


def _count_refusal(smp, uid, action: str) -> bool:
    """True if this refusal was only counted (its source's window, or the
    window of all sources, is full)."""
    now = time.time()
    action = str(action)[:MAX_FIELD]
    address = _clip(str(getattr(smp, "audit_context", {}).get("address") or "?"), MAX_FIELD)
    source = ("uid", uid) if uid is not None else ("address", address)
    w = _windows(smp)
    with w.lock:
        if now - w.start >= REFUSAL_WINDOW:
            w.start, w.rows, w.counter = now, 0, None
        s = w.sources.get(source)
        if s is None or now - s["start"] >= REFUSAL_WINDOW:
            _forget_old(w.sources, now, REFUSAL_WINDOW)
            s = {"start": now, "rows": 0, "counter": None}
            if len(w.sources) < MAX_TRACKED:
                w.sources[source] = s
        if s["rows"] < REFUSALS_PER_WINDOW and w.rows < REFUSAL_ROWS_PER_WINDOW:
            s["rows"] += 1
            w.rows += 1
            return False
        if s["counter"] is None and w.rows < REFUSAL_ROWS_PER_WINDOW:
            detail = {"count": 0, "actions": {}, "window_s": REFUSAL_WINDOW}
            if uid is None:
                detail["address"] = address
            s["counter"] = (_insert_counter(smp, uid, now, detail), detail)
            w.rows += 1
        if s["counter"] is not None:
            _bump(smp, s["counter"], now, action)
            return True
        if w.counter is None:
            detail = {"count": 0, "actions": {}, "window_s": REFUSAL_WINDOW, "sources": "all"}
            w.counter = (_insert_counter(smp, None, now, detail), detail)
        _bump(smp, w.counter, now, action)
        return True


def _insert_counter(smp, uid, now: float, detail: dict) -> int:
    with smp.tx():
        table = smp.db.table("audit")
        table.insert({"ts": now, "uid": uid, "computer": None, "action": "refusals", "store_id": None,
                      "outcome": "denied", "detail": json.dumps(detail, sort_keys=True)})
        return table.last_rowid


def _bump(smp, counter: tuple, now: float, action: str) -> None:
    row_id, d = counter
    d["count"] += 1
    d["last"] = now
    if action in d["actions"] or len(d["actions"]) < 32:
        d["actions"][action] = d["actions"].get(action, 0) + 1
    with smp.tx():
        smp.db.table("audit").update(row_id, {"detail": json.dumps(d, sort_keys=True)})


def record_repeat(smp, uid, action: str, computer: str | None = None, store_id: str | None = None,
                  **detail) -> int:
    """Audit an idempotent call that changed nothing (a retried request handed the
    same store): the first in REPEAT_WINDOW seconds is a row like :func:`record`'s,
    the others in that window count up its ``repeats`` (and ``last``)."""
    now = time.time()
    key = (uid, str(action)[:MAX_FIELD], store_id)
    w = _windows(smp)
    with w.lock:
        e = w.repeats.get(key)
        if e is not None and now - e["start"] < REPEAT_WINDOW:
            e["detail"]["repeats"] = e["detail"].get("repeats", 0) + 1
            e["detail"]["last"] = now
            with smp.tx():
                smp.db.table("audit").update(e["id"], {"detail": _detail_json(e["detail"])})
            return e["id"]
        full = {**getattr(smp, "audit_context", {}), **detail}
        row_id = record(smp, uid, action, computer=computer, store_id=store_id, **detail)
        _forget_old(w.repeats, now, REPEAT_WINDOW)
        if len(w.repeats) < MAX_TRACKED:
            w.repeats[key] = {"start": now, "id": row_id, "detail": full}
        return row_id


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
