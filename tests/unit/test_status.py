"""The store lifecycle's state machine: every step the table allows is taken
with its timestamp and audit record; every other step, and a step from a row
that changed meanwhile, is refused and changes nothing."""
from __future__ import annotations

import itertools

import pytest

from smpfs.lifecycle import api, audit
from smpfs.lifecycle.smp import Smp
from smpfs.lifecycle.status import GONE, LIVE, STEPS, Status, StepRefused, transition

SRC, DST = 1001, 1002


@pytest.fixture
def store(tmp_path):
    s = Smp.init(tmp_path / "state", server="SMP01")
    for name, uid in (("PC-OLD", SRC), ("PC-NEW", DST)):
        api.dispatch(s, 0, "computer_add", {"name": name, "uid": uid})
    api.dispatch(s, 0, "associate", {"source": "PC-OLD", "dest": "PC-NEW"})
    r = api.dispatch(s, SRC, "request_capture", {})
    yield s, r["store_id"]
    s.close()


def _force(smp, store_id, status):
    with smp.tx():
        smp.conn.execute("UPDATE stores SET status=? WHERE store_id=?", (status.value, store_id))
    return smp.store(store_id)


def test_the_table_is_closed_and_gone_is_final():
    assert set(STEPS) == set(Status)
    assert LIVE | GONE == set(Status) and not LIVE & GONE
    assert STEPS[Status.DELETED] == frozenset()
    for frm in LIVE:                              # every live store can be deleted
        assert Status.DELETING in STEPS[frm]
    for frm in GONE:                              # nothing comes back from deletion
        assert not STEPS[frm] & LIVE


@pytest.mark.parametrize("frm,to", list(itertools.product(Status, Status)))
def test_each_step_is_taken_or_refused_as_the_table_says(store, frm, to):
    smp, sid = store
    row = _force(smp, sid, frm)
    before = len(audit.entries(smp))
    if to in STEPS[frm]:
        new = transition(smp, row, to, uid=SRC, action="test_step", audit_detail={"computer": "PC-OLD"},
                         capture_released_at=123.0)
        assert new["status"] == to and new["capture_released_at"] == 123.0
        last = audit.entries(smp)[-1]
        assert (last["action"], last["store_id"], last["uid"]) == ("test_step", sid, SRC)
    else:
        with pytest.raises(StepRefused):
            transition(smp, row, to, uid=SRC, action="test_step", capture_released_at=123.0)
        assert smp.store(sid)["status"] == frm and smp.store(sid)["capture_released_at"] is None
        assert len(audit.entries(smp)) == before


def test_a_step_from_a_row_that_changed_meanwhile_is_refused(store):
    smp, sid = store
    stale = smp.store(sid)                                     # capturing, as the caller read it
    transition(smp, stale, Status.CAPTURED, capture_released_at=1.0)   # another caller won
    with pytest.raises(StepRefused, match="changed meanwhile"):
        transition(smp, stale, Status.DELETING, wrapped_key=None)
    assert smp.store(sid)["status"] == Status.CAPTURED and smp.store(sid)["wrapped_key"] is not None


def test_the_lifecycle_calls_walk_the_machine(store):
    smp, sid = store
    seen = [smp.store(sid)["status"]]
    api.dispatch(smp, SRC, "release_capture", {})
    seen.append(smp.store(sid)["status"])
    api.dispatch(smp, DST, "request_restore", {})
    seen.append(smp.store(sid)["status"])
    api.dispatch(smp, DST, "release_restore", {})
    seen.append(smp.store(sid)["status"])
    assert seen == ["capturing", "captured", "restoring", "restored"]
    for a, b in zip(seen, seen[1:], strict=False):
        assert Status(b) in STEPS[Status(a)]
