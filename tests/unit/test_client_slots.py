"""What counts against a storage folder's maximum clients (no FUSE, no mount).

A folder's clients are the associations with a store in it that still awaits
a step: capturing, captured, or being restored. One computer holds at most
one slot however often it captures, and a restored store (kept only for its
retention deadline) holds none.
"""
from __future__ import annotations

import json

import pytest

from smpfs.errors import NoStorageRoom
from smpfs.lifecycle import api, folder, request
from smpfs.lifecycle.smp import Smp

NAMES = {"PC-A": 1101, "PC-B": 1102, "PC-C": 1103, "PC-D": 1104}


@pytest.fixture
def smp(tmp_path):
    s = Smp.init(tmp_path / "state", server="SMP01", folder=tmp_path / "store", max_clients=3, min_free="1MB")
    for name, uid in NAMES.items():
        api.dispatch(s, 0, "computer_add", {"name": name, "uid": uid})
    yield s
    s.close()


def call(s, name, command, **args):
    result = api.dispatch(s, NAMES[name], command, args)
    json.dumps(result)
    return result


def clients(s) -> int:
    return folder.list_folders(s, used=False)[0]["clients"]


def cycle(s, name) -> str:
    """One whole in-place migration: capture, release, restore, release."""
    sid = call(s, name, "request_capture")["store_id"]
    call(s, name, "release_capture")
    call(s, name, "request_restore")
    call(s, name, "release_restore")
    assert s.store(sid)["status"] == "restored"          # kept for its deadline (one day)
    return sid


def test_one_computer_cycling_in_place_captures_holds_one_slot(smp):
    kept = [cycle(smp, "PC-A") for _ in range(5)]
    assert len(set(kept)) == 5 and clients(smp) == 0        # restored stores hold no slot
    assert all(smp.store(s)["status"] == "restored" for s in kept)
    first = call(smp, "PC-A", "request_capture")
    for _ in range(3):                                      # a retried step: the same store
        again = call(smp, "PC-A", "request_capture")
        assert again["existing"] and again["store_id"] == first["store_id"]
    assert clients(smp) == 1
    call(smp, "PC-B", "request_capture")
    call(smp, "PC-C", "request_capture")
    assert clients(smp) == 3
    with pytest.raises(NoStorageRoom) as e:                 # a fourth computer: the folder is full
        call(smp, "PC-D", "request_capture")
    assert e.value.exit_code == 12 and "3/3 clients" in e.value.message
    # PC-B's migration finishes: its store is restored and its slot is free
    call(smp, "PC-B", "release_capture")
    call(smp, "PC-B", "request_restore")
    assert clients(smp) == 3                                # being restored still counts
    call(smp, "PC-B", "release_restore")
    assert clients(smp) == 2
    call(smp, "PC-D", "request_capture")
    assert clients(smp) == 3


def test_a_rerun_restore_counts_again_until_its_release(smp):
    sid = cycle(smp, "PC-A")
    assert clients(smp) == 0
    call(smp, "PC-A", "request_restore")                    # restored -> restoring: awaits a release
    assert smp.store(sid)["status"] == "restoring" and clients(smp) == 1
    call(smp, "PC-A", "release_restore")
    assert clients(smp) == 0


def test_the_slot_is_checked_again_when_the_store_is_created(smp, monkeypatch):
    """Two computers that both saw the last free slot: only one gets it."""
    call(smp, "PC-A", "request_capture")
    call(smp, "PC-B", "request_capture")
    stale = request.choose_folder(smp)                      # 2/3: room for one
    assert stale[0] is not None
    call(smp, "PC-C", "request_capture")                    # takes the last slot meanwhile
    monkeypatch.setattr(request, "choose_folder", lambda s: stale)
    with pytest.raises(NoStorageRoom) as e:
        call(smp, "PC-D", "request_capture")
    assert e.value.exit_code == 12 and "3/3 clients" in e.value.message
    assert clients(smp) == 3
    assert smp.query_one("SELECT COUNT(*) AS n FROM stores")["n"] == 3
