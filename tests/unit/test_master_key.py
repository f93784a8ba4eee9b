"""The master key: rotation rewraps every live key and destroys the old one,
survives a kill between any two of its steps, and a deleted store's wrapped
key is left in none of the state dir's database files."""
from __future__ import annotations

import os
import time

import pytest

from smpfs.crypto import keys as keymod
from smpfs.crypto import secrets as secretmod
from smpfs.errors import KeyFileError
from smpfs.lifecycle import api, masterkey, retention
from smpfs.lifecycle.smp import Smp

COMPUTERS = (("PC-A", 1001), ("PC-B", 1002), ("PC-C", 1003))


@pytest.fixture
def state(tmp_path):
    """An SMP with three stores (capturing, captured, restored) and a deleted one."""
    s = Smp.init(tmp_path / "state", server="SMP01")
    try:
        for name, uid in COMPUTERS:
            api.dispatch(s, 0, "computer_add", {"name": name, "uid": uid})
        api.dispatch(s, 0, "config", {"delete_after": "1h"})
        for uid in (1001, 1002, 1003):
            api.dispatch(s, uid, "request_capture", {})
        api.dispatch(s, 1002, "release_capture", {})
        api.dispatch(s, 1003, "release_capture", {})
        api.dispatch(s, 1003, "request_restore", {})
        api.dispatch(s, 1003, "release_restore", {})
        retention.sweep(s, now=time.time() + 7200)            # PC-C's store is deleted
        api.dispatch(s, 1003, "request_capture", {})           # and PC-C captures again
    finally:
        s.close()
    return tmp_path / "state"


def _keys(state) -> tuple[dict, dict]:
    """Every live data key and computer secret, unwrapped with the current master key."""
    s = Smp.open(state)
    try:
        data = {r["store_id"]: s.data_key(r) for r in s.query("SELECT * FROM stores WHERE wrapped_key IS NOT NULL")}
        secrets = {r["name"]: secretmod.unwrap_secret(s.master_key(), r["name"], r["secret_wrapped"])
                   for r in s.query("SELECT * FROM computers WHERE secret_wrapped IS NOT NULL")}
        return data, secrets
    finally:
        s.close()


def _files(state) -> bytes:
    return b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())


def test_rotation_rewraps_every_live_key_and_destroys_the_old_one(state):
    before = _keys(state)
    assert len(before[0]) == 3 and len(before[1]) == 3
    old_master = (state / "master.key").read_bytes()
    s = Smp.open(state)
    try:
        old_wrapped = [r["wrapped_key"] for r in s.query("SELECT wrapped_key FROM stores"
                                                         " WHERE wrapped_key IS NOT NULL")]
        r = api.dispatch(s, 0, "key_rotate", {})
        assert r["stores_rewrapped"] == 3 and r["computer_secrets_rewrapped"] == 3
        assert api.dispatch(s, 1001, "request_capture", {})["store_id"] in before[0]   # the mount keeps working
    finally:
        s.close()
    new_master = (state / "master.key").read_bytes()
    assert new_master != old_master and len(new_master) == 32
    assert _keys(state) == before                       # same data keys: recovery keys stay valid
    assert old_master not in _files(state)               # the old key is nowhere in the state dir
    assert not (state / masterkey.NEW_KEY_FILE).exists()
    for w in old_wrapped:                                # nor the keys wrapped under it
        assert w not in _files(state)
    s = Smp.open(state)
    try:
        row = s.query_one("SELECT * FROM stores WHERE wrapped_key IS NOT NULL")
        with pytest.raises(KeyFileError):
            keymod.unwrap(old_master, row["store_id"], row["wrapped_key"])
        assert "key_rotate" in [e["action"] for e in s.query("SELECT action FROM audit")]
    finally:
        s.close()


@pytest.mark.parametrize("kill_after", ["new-key-written", "db-rewrapped", "file-cut-short"])
def test_a_rotation_killed_between_any_two_steps_leaves_a_usable_smp(state, kill_after):
    before = _keys(state)
    s = Smp.open(state)
    try:
        if kill_after == "file-cut-short":               # killed while the new key was being written
            (state / masterkey.NEW_KEY_FILE).write_bytes(os.urandom(7))
            os.chmod(state / masterkey.NEW_KEY_FILE, 0o600)
        else:
            with pytest.raises(masterkey.Interrupted):
                masterkey.rotate(s, 0, stop_after=kill_after)
    finally:
        s.close()                                         # the process is gone: nothing else runs
    assert (state / masterkey.NEW_KEY_FILE).exists()
    assert _keys(state) == before                        # opens with whichever key smp.db is under
    assert not (state / masterkey.NEW_KEY_FILE).exists()
    s = Smp.open(state)
    try:
        masterkey.rotate(s, 0)                           # and rotates again
    finally:
        s.close()
    assert _keys(state) == before


def test_a_deleted_stores_wrapped_key_is_in_no_database_file(tmp_path):
    s = Smp.init(tmp_path / "state", server="SMP01")
    try:
        for name, uid in COMPUTERS:
            api.dispatch(s, 0, "computer_add", {"name": name, "uid": uid})
        api.dispatch(s, 0, "config", {"delete_after": "1h"})
        sid = api.dispatch(s, 1001, "request_capture", {})["store_id"]
        row = s.store(sid)
        wrapped, data_key = row["wrapped_key"], s.data_key(row)
        for i in range(200):                             # the store's row rewritten in many pages and frames
            api.dispatch(s, 0, "config", {"server": f"SMP{i:02d}"[:15]})
        api.dispatch(s, 1001, "release_capture", {})
        api.dispatch(s, 1001, "request_restore", {})
        api.dispatch(s, 1001, "release_restore", {})
        retention.sweep(s, now=time.time() + 7200)
        assert s.store(sid)["status"] == "deleted"
        names = {p.name for p in (tmp_path / "state").iterdir()}
        assert "smp.db" in names
        for p in (tmp_path / "state").rglob("*"):
            if p.is_file():
                raw = p.read_bytes()
                assert wrapped not in raw and data_key not in raw, f"{p.name} holds the deleted store's key"
    finally:
        s.close()
