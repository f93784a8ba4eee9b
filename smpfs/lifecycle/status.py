"""A state store's lifecycle, as a state machine: its states, the steps
between them, and the one function that takes a step.

::

    capturing --release capture--> captured --request restore--> restoring
        restoring --release restore--> restored --request restore (re-run)--> restoring
        restoring --request restore (asked again before its release)--> restoring
    any live state --deletion (retention, removal, retire)--> deleting --> deleted

Every status change goes through :func:`transition`: it checks that the step
is allowed, changes the row only if it is still in the state the caller saw
(a concurrent step wins or loses as a whole), sets the step's timestamp
columns in the same transaction, and writes the step's audit record.
"""
from __future__ import annotations

import enum

from ..errors import SmpError


class Status(enum.StrEnum):
    CAPTURING = "capturing"     # the source writes
    CAPTURED = "captured"       # released after capture: read-only, for the destination
    RESTORING = "restoring"     # the destination reads
    RESTORED = "restored"       # released after restore: the retention timer runs
    DELETING = "deleting"       # key shredded, files being removed (resumed after a crash)
    DELETED = "deleted"         # gone for good; the row stays for the record

    @property
    def live(self) -> bool:
        return self not in GONE


GONE = frozenset({Status.DELETING, Status.DELETED})
LIVE = frozenset(Status) - GONE
#: Captured but not yet restored: an association in one of these is unfinished.
UNFINISHED = frozenset({Status.CAPTURING, Status.CAPTURED, Status.RESTORING})
#: What holds one of a storage folder's *maximum clients*: a store that still
#: awaits a step (its capture's release, its restore, its restore's release).
#: A folder's clients are the associations with such a store in it, so one
#: computer holds one slot however often it captures; a restored store, which
#: waits only for its retention deadline, holds none (a re-run restore takes
#: its slot again until its release).
HOLDS_SLOT = UNFINISHED

#: The steps allowed from each state.
STEPS: dict[Status, frozenset[Status]] = {
    Status.CAPTURING: frozenset({Status.CAPTURED, Status.DELETING}),
    Status.CAPTURED: frozenset({Status.RESTORING, Status.DELETING}),
    Status.RESTORING: frozenset({Status.RESTORING, Status.RESTORED, Status.DELETING}),  # asked again
    Status.RESTORED: frozenset({Status.RESTORING, Status.DELETING}),
    Status.DELETING: frozenset({Status.DELETED, Status.DELETING}),   # a resumed deletion
    Status.DELETED: frozenset(),
}


def sql_in(statuses) -> str:
    """``('a','b')`` for a SQL ``IN``: only ever built from Status values."""
    return "(" + ",".join(f"'{Status(s).value}'" for s in sorted(statuses)) + ")"


#: ``status NOT IN (...)`` of live rows, for queries.
LIVE_SQL = f"status NOT IN {sql_in(GONE)}"


class StepRefused(SmpError):
    """A status change the state machine does not allow (a bug or a lost race)."""


def transition(smp, store_row: dict, to: Status, *, uid: int | None = None, action: str | None = None,
               audit_detail: dict | None = None, **columns) -> dict:
    """Take ``store_row`` to status ``to``: set ``columns`` too, in one transaction,
    only if the row is still in the status the caller read; then audit ``action``.

    Returns the row as it is now. Raises :class:`StepRefused` if the step is not
    allowed from the row's status, or if the row changed meanwhile."""
    from . import audit  # audit imports nothing of this module
    frm = Status(store_row["status"])
    to = Status(to)
    if to not in STEPS[frm]:
        raise StepRefused(f"store {store_row['store_id'][:12]}: {frm} cannot become {to}")
    sets = ", ".join(["status=?", *(f"{c}=?" for c in columns)])
    with smp.tx():
        cur = smp.conn.execute(f"UPDATE stores SET {sets} WHERE store_id=? AND status=?",
                               (to.value, *columns.values(), store_row["store_id"], frm.value))
        if cur.rowcount != 1:
            raise StepRefused(f"store {store_row['store_id'][:12]} changed meanwhile (was {frm})")
    if action is not None:
        audit.record(smp, uid if uid is not None else 0, action, store_id=store_row["store_id"],
                     **(audit_detail or {}))
    return smp.store(store_row["store_id"])
