"""The SMP lifecycle and retention, exercised directly (no FUSE, no mount)."""
from __future__ import annotations

import errno
import json
import os
import stat
import time

import pytest

from smpfs.crypto import keys as key
from smpfs.errors import (
    CaptureInProgress,
    Conflict,
    NoStorageRoom,
    NotFound,
    NothingToRelease,
    PermissionDenied,
    RestoreOnlyMode,
    StateDirError,
    UnknownComputer,
    UsageError,
)
from smpfs.lifecycle import access, api, audit, folder, retention
from smpfs.lifecycle.smp import Smp, resolve_state_dir
from smpfs.store import layout, reserve

OLD, NEW, OTHER = 1001, 1002, 1003


@pytest.fixture
def smp(tmp_path):
    s = Smp.init(tmp_path / "state", server="SMP01")
    for name, uid in (("PC-OLD", OLD), ("PC-NEW", NEW), ("PC-OTHER", OTHER)):
        api.dispatch(s, 0, "computer_add", {"name": name, "uid": uid})
    yield s
    s.close()


def call(s, caller, command, **args):
    result = api.dispatch(s, caller, command, args)
    json.dumps(result)                       # every result is JSON-able (no key bytes)
    return result


def side_by_side(s):
    call(s, 0, "associate", source="pc-old", dest="pc-new")


def row(s, store_id):
    return s.store(store_id)


# -- state dir ---------------------------------------------------------------------

def test_init_layout_and_modes(smp):
    st = smp.state_dir
    assert stat.S_IMODE(os.stat(st).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(st / "smp.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(st / "master.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(st / "store").st_mode) == 0o711
    assert smp.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert smp.conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    f = smp.query("SELECT * FROM folders")
    assert len(f) == 1 and len(f[0]["share"]) == 8 and f[0]["path"] == str(st / "store")
    assert smp.setting("server") == "SMP01"


def test_init_refuses_existing_smp(smp):
    with pytest.raises(StateDirError) as e:
        Smp.init(smp.state_dir)
    assert e.value.exit_code == 3 and "already holds an SMP" in e.value.message


def test_open_errors(tmp_path, smp):
    with pytest.raises(StateDirError) as e:
        Smp.open(tmp_path / "nope")
    assert e.value.hint and "smpfs init" in e.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(StateDirError, match="not an SMP state directory"):
        Smp.open(tmp_path / "empty")
    smp.set_setting("schema_version", 99)
    with pytest.raises(StateDirError, match="schema version 99"):
        Smp.open(smp.state_dir)


def test_open_existing_and_resolve(smp, monkeypatch):
    s2 = Smp.open(smp.state_dir)
    assert s2.setting("server") == "SMP01"
    s2.close()
    monkeypatch.setenv("SMPFS_STATE", "/x/y")
    assert str(resolve_state_dir(None)) == "/x/y"
    assert str(resolve_state_dir("/a")) == "/a"
    monkeypatch.delenv("SMPFS_STATE")
    assert str(resolve_state_dir(None)) == "/var/lib/smpfs"


def test_server_default_is_hostname(tmp_path):
    s = Smp.init(tmp_path / "st")
    assert s.setting("server") == os.uname().nodename.split(".")[0].upper()


# -- the whole flow ------------------------------------------------------------------

def test_side_by_side_flow(smp):
    side_by_side(smp)
    r = call(smp, OLD, "request_capture")
    sid = r["store_id"]
    assert len(sid) == 64 and r["changed_stores"] == [sid] and not r["existing"]
    share = smp.query_one("SELECT share FROM folders")["share"]
    assert r["unc"] == f"\\\\SMP01\\SMPSTORED_{share}$\\{sid}"
    assert (smp.state_dir / "store" / sid / "store.db").exists()
    s = row(smp, sid)
    assert (s["status"], s["source_uid"], s["dest_uid"]) == ("capturing", OLD, NEW)
    assert access.level(s, OLD) == "rw" and access.level(s, NEW) is None and access.level(s, 0) is None

    r = call(smp, OLD, "release_capture")
    assert r["changed_stores"] == [sid]
    s = row(smp, sid)
    assert s["status"] == "captured" and s["capture_released_at"]
    assert access.level(s, OLD) is None and access.level(s, NEW) == "ro"

    r = call(smp, NEW, "request_restore")
    assert r["store_id"] == sid and row(smp, sid)["status"] == "restoring"
    t0 = time.time()
    r = call(smp, NEW, "release_restore")
    s = row(smp, sid)
    assert s["status"] == "restored" and s["retention_s"] == 86400
    assert t0 + 86400 - 5 < s["delete_at"] < time.time() + 86400 + 5
    assert access.level(s, NEW) == "ro"
    actions = [(e["action"], e["outcome"], e["uid"]) for e in audit.entries(smp)]
    for a, uid in (("request_capture", OLD), ("release_capture", OLD),
                   ("request_restore", NEW), ("release_restore", NEW)):
        assert (a, "ok", uid) in actions


def test_second_capture_request_returns_same_store(smp):
    side_by_side(smp)
    a = call(smp, OLD, "request_capture")
    b = call(smp, 0, "request_capture", computer="PC-OLD")
    assert b["store_id"] == a["store_id"] and b["existing"] is True
    assert smp.query_one("SELECT COUNT(*) AS n FROM stores")["n"] == 1


def test_in_place_association_created_on_capture(smp):
    r = call(smp, OTHER, "request_capture")
    a = call(smp, 0, "association_list")["associations"]
    assert [(x["source"], x["dest"], x["migration_type"], x["status"]) for x in a] == \
        [("PC-OTHER", "PC-OTHER", "in-place", "capturing")]
    call(smp, OTHER, "release_capture")
    s = row(smp, r["store_id"])
    assert access.level(s, OTHER) == "ro"         # source = dest: read-only
    assert call(smp, OTHER, "request_restore")["store_id"] == r["store_id"]


def test_new_capture_blocked_until_restored(smp):
    side_by_side(smp)
    call(smp, OLD, "request_capture")
    call(smp, OLD, "release_capture")
    with pytest.raises(CaptureInProgress) as e:
        call(smp, OLD, "request_capture")
    assert e.value.exit_code == 13
    call(smp, NEW, "request_restore")
    call(smp, NEW, "release_restore")
    r = call(smp, OLD, "request_capture")           # a restored store no longer blocks
    assert not r["existing"]


# -- refusals ----------------------------------------------------------------------------

def test_step_order_refusals(smp):
    side_by_side(smp)
    with pytest.raises(NothingToRelease) as e:
        call(smp, OLD, "release_capture")
    assert e.value.exit_code == 14
    with pytest.raises(NotFound) as e:
        call(smp, NEW, "request_restore")
    assert e.value.exit_code == 15
    call(smp, OLD, "request_capture")
    with pytest.raises(CaptureInProgress, match="not released yet"):
        call(smp, NEW, "request_restore")
    with pytest.raises(NothingToRelease):
        call(smp, NEW, "release_restore")
    call(smp, OLD, "release_capture")
    with pytest.raises(NothingToRelease, match="already captured"):
        call(smp, OLD, "release_capture")
    with pytest.raises(NothingToRelease):
        call(smp, NEW, "release_restore")              # restore not requested yet
    call(smp, NEW, "request_restore")
    call(smp, NEW, "release_restore")
    with pytest.raises(NothingToRelease):
        call(smp, NEW, "release_restore")
    errors = [e for e in audit.entries(smp) if e["outcome"] == "denied"]
    assert {e["detail"]["error"] for e in errors} >= {"NothingToRelease", "NotFound", "CaptureInProgress"}


def test_restore_only_mode(smp):
    side_by_side(smp)
    a = call(smp, OLD, "request_capture")
    call(smp, 0, "config", restore_only="on")
    assert call(smp, OLD, "request_capture")["store_id"] == a["store_id"]   # retried step still works
    with pytest.raises(RestoreOnlyMode) as e:
        call(smp, OTHER, "request_capture")
    assert e.value.exit_code == 11
    call(smp, OLD, "release_capture")                # restores continue
    call(smp, NEW, "request_restore")
    call(smp, NEW, "release_restore")
    call(smp, 0, "config", restore_only="off")
    call(smp, OTHER, "request_capture")


def test_unknown_computer_and_callers(smp):
    with pytest.raises(UnknownComputer) as e:
        call(smp, 0, "request_capture", computer="PC-NOPE")
    assert e.value.exit_code == 10 and "computer add" in e.value.hint
    with pytest.raises(UnknownComputer, match="uid 4242"):
        call(smp, 4242, "request_capture")
    with pytest.raises(UsageError):                 # root must name the computer
        call(smp, 0, "request_capture")
    with pytest.raises(PermissionDenied) as e:
        call(smp, OLD, "request_capture", computer="PC-NEW")
    assert e.value.exit_code == 7
    assert call(smp, OLD, "request_capture", computer="pc-old")["computer"] == "PC-OLD"
    denied = [e for e in audit.entries(smp) if e["outcome"] == "denied"]
    assert denied and denied[-1]["uid"] == OLD and denied[-1]["action"] == "request_capture"


def test_admin_commands_need_root(smp):
    for cmd, args in (("computer_list", {}), ("status", {}), ("key_show", {"source": "PC-OLD"}),
                      ("config", {"restore_only": "on"}), ("retention_run", {}), ("retire", {}),
                      ("log", {}), ("folder_list", {})):
        with pytest.raises(PermissionDenied):
            call(smp, OLD, cmd, **args)
    assert not smp.restore_only
    assert sum(e["outcome"] == "denied" for e in audit.entries(smp)) == 8


def test_bad_arguments_are_usage_errors(smp):
    with pytest.raises(UsageError):
        call(smp, 0, "computer_add", name="X")
    with pytest.raises(UsageError):
        call(smp, 0, "nonsense")


def test_computers(smp):
    with pytest.raises(Conflict):
        call(smp, 0, "computer_add", name="pc-old", uid=5000)      # names are case-insensitive
    with pytest.raises(Conflict):
        call(smp, 0, "computer_add", name="PC-X", uid=OLD)
    with pytest.raises(UsageError):
        call(smp, 0, "computer_add", name="PC-ROOT", uid=0)
    with pytest.raises(UsageError):
        call(smp, 0, "computer_add", name="bad name", uid=5000)
    side_by_side(smp)
    with pytest.raises(Conflict):
        call(smp, 0, "computer_remove", name="PC-NEW")
    call(smp, 0, "computer_remove", name="pc-other")
    assert [c["name"] for c in call(smp, 0, "computer_list")["computers"]] == ["PC-NEW", "PC-OLD"]
    with pytest.raises(Conflict):                      # one live association per source
        call(smp, 0, "associate", source="PC-OLD", dest="PC-OLD")
    with pytest.raises(UnknownComputer):
        call(smp, 0, "associate", source="PC-OLD", dest="PC-GONE")


# -- storage folders --------------------------------------------------------------------

def test_folder_selection_skips_full_folder(smp, tmp_path):
    smp_folder = smp.query_one("SELECT * FROM folders")
    call(smp, 0, "folder_remove", path=smp_folder["path"])
    call(smp, 0, "folder_add", path=str(tmp_path / "full"), min_free="99%")
    call(smp, 0, "folder_add", path=str(tmp_path / "roomy"), min_free="1MB")
    r = call(smp, OLD, "request_capture")
    assert (tmp_path / "roomy" / r["store_id"]).is_dir()
    folders = {f["path"]: f for f in call(smp, 0, "folder_list")["folders"]}
    full = folders[str(tmp_path / "full")]
    assert not full["has_room"] and "free" in full["full_reasons"][0]
    assert folders[str(tmp_path / "roomy")]["clients"] == 1


def test_folder_selection_most_free_first(smp, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    call(smp, 0, "folder_add", path=str(a), min_free="1MB")
    call(smp, 0, "folder_add", path=str(b), min_free="1MB")
    sizes = {str(a): 5 * 10**9, str(b): 9 * 10**9}
    monkeypatch.setattr(folder, "space", lambda p: (sizes.get(str(p), 10**9), 10**12))
    assert folder.choose_folder(smp)[0]["path"] == str(b)
    sizes[str(a)] = 20 * 10**9
    assert call(smp, OLD, "request_capture")["store_id"] in os.listdir(a)


def test_max_clients(smp):
    f = smp.query_one("SELECT * FROM folders")
    call(smp, 0, "folder_remove", path=f["path"])
    call(smp, 0, "folder_add", path=f["path"], max_clients=1, min_free="1MB")
    call(smp, OLD, "request_capture")
    with pytest.raises(NoStorageRoom) as e:
        call(smp, NEW, "request_capture")
    assert e.value.exit_code == 12 and "1/1 clients" in e.value.message
    with pytest.raises(UsageError):       # retrying is the caller's: the SMP never waits for one
        call(smp, NEW, "request_capture", retries=3, retry_delay=7)
    with pytest.raises(UsageError):
        call(smp, 0, "folder_add", path=f["path"] + "2", max_clients=100000)


def test_folder_remove_refused_then_forced(smp, tmp_path):
    side_by_side(smp)
    r = call(smp, OLD, "request_capture")
    path = smp.query_one("SELECT path FROM folders")["path"]
    with pytest.raises(Conflict) as e:
        call(smp, 0, "folder_remove", path=path)
    assert e.value.exit_code == 16
    assert reserve.RESERVE_FILE in os.listdir(path)     # the commit reserve, made with the store
    out = call(smp, 0, "folder_remove", path=path, force=True)
    assert out["changed_stores"] == [r["store_id"]]
    assert os.listdir(path) == []                          # nothing of smpfs is left behind
    assert row(smp, r["store_id"])["status"] == "deleted"
    with pytest.raises(NoStorageRoom):
        call(smp, NEW, "request_capture")
    call(smp, 0, "folder_add", path=path)            # re-adding keeps the share id
    assert smp.query_one("SELECT COUNT(*) AS n FROM folders")["n"] == 1


def test_association_remove(smp):
    side_by_side(smp)
    r = call(smp, OLD, "request_capture")
    with pytest.raises(CaptureInProgress):
        call(smp, 0, "association_remove", source="PC-OLD", dest="PC-NEW")
    out = call(smp, 0, "association_remove", source="pc-old", dest="pc-new", force=True)
    assert out["changed_stores"] == [r["store_id"]]
    s = row(smp, r["store_id"])
    assert s["status"] == "deleted" and s["wrapped_key"] is None
    assert call(smp, 0, "association_list")["associations"] == []
    with pytest.raises(NotFound):
        call(smp, 0, "association_remove", source="PC-OLD", dest="PC-NEW")


# -- retention ------------------------------------------------------------------------------

def _restored(s, uid_src=OLD, uid_dst=NEW):
    r = call(s, uid_src, "request_capture")
    call(s, uid_src, "release_capture")
    call(s, uid_dst, "request_restore")
    call(s, uid_dst, "release_restore")
    return r["store_id"]


def test_policy_recorded_at_release(smp):
    side_by_side(smp)
    call(smp, 0, "config", delete_after="1h")
    sid = _restored(smp)
    s = row(smp, sid)
    assert s["retention_s"] == 3600
    deadline = s["delete_at"]
    call(smp, 0, "config", delete_after="7d")           # does not move an existing deadline
    assert row(smp, sid)["delete_at"] == deadline
    assert retention.next_deadline(smp) == deadline
    assert call(smp, 0, "retention_run", at="+30m")["deleted"] == []
    path = smp.store_path(s)
    assert path.is_dir()
    out = call(smp, 0, "retention_run", at="+61m")
    assert [d["store_id"] for d in out["deleted"]] == [sid] and out["changed_stores"] == [sid]
    s = row(smp, sid)
    assert s["status"] == "deleted" and s["wrapped_key"] is None and s["bytes_freed"] > 0
    assert not path.exists() and retention.next_deadline(smp) is None
    d = [e for e in audit.entries(smp) if e["action"] == "delete"]
    assert d and d[-1]["detail"]["bytes_freed"] == s["bytes_freed"]


def test_reapply_retention_moves_deadlines(smp):
    side_by_side(smp)
    sid = _restored(smp)
    released = row(smp, sid)["restore_released_at"]
    call(smp, 0, "config", delete_after="2h", reapply_retention=True)
    s = row(smp, sid)
    assert s["retention_s"] == 7200 and s["delete_at"] == pytest.approx(released + 7200)
    assert any(e["action"] == "reapply_retention" and e["store_id"] == sid for e in audit.entries(smp))


def test_delete_immediately(smp):
    side_by_side(smp)
    call(smp, 0, "config", delete_immediately=True)
    r = call(smp, OLD, "request_capture")
    call(smp, OLD, "release_capture")
    call(smp, NEW, "request_restore")
    out = call(smp, NEW, "release_restore")
    assert out["deleted"] is True and out["changed_stores"] == [r["store_id"]]
    assert row(smp, r["store_id"])["status"] == "deleted"
    assert not (smp.state_dir / "store" / r["store_id"]).exists()


def test_rerun_restore_before_deletion(smp):
    side_by_side(smp)
    sid = _restored(smp)
    deadline = row(smp, sid)["delete_at"]
    r = call(smp, NEW, "request_restore")
    assert r["store_id"] == sid and row(smp, sid)["delete_at"] == deadline
    assert access.level(row(smp, sid), NEW) == "ro"
    call(smp, NEW, "release_restore")
    call(smp, 0, "retention_run", at="+2d")
    with pytest.raises(NotFound):
        call(smp, NEW, "request_restore")


def test_sweep_resumes_interrupted_deletion(smp, monkeypatch):
    side_by_side(smp)
    sid = _restored(smp)

    def crash(folder_path, store_id):
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(layout, "destroy_store", crash)
    with pytest.raises(KeyboardInterrupt):
        retention.sweep(smp, now=time.time() + 2 * 86400)
    s = row(smp, sid)
    assert s["status"] == "deleting" and s["wrapped_key"] is None   # shredded first
    assert sid not in [x["store_id"] for x in smp.stores()]          # gone from the mount
    assert retention.next_deadline(smp) == 0.0
    monkeypatch.undo()
    done = retention.sweep(smp)
    assert [d["store_id"] for d in done] == [sid] and done[0]["reason"] == "resumed"
    assert row(smp, sid)["status"] == "deleted" and not smp.store_path(s).exists()


def test_shredded_key_leaves_no_trace_in_db_files(smp):
    side_by_side(smp)
    sid = _restored(smp)
    wrapped = row(smp, sid)["wrapped_key"]
    retention.sweep(smp, now=time.time() + 2 * 86400)
    for name in ("smp.db", "smp.db-wal"):
        p = smp.state_dir / name
        if p.exists():
            assert wrapped not in p.read_bytes(), name


def test_key_show_and_audit_has_no_secrets(smp):
    side_by_side(smp)
    r = call(smp, OLD, "request_capture")
    k = call(smp, 0, "key_show", source="pc-old")
    assert k["store_id"] == r["store_id"]
    data_key = key.parse_recovery_key(k["recovery_key"])
    assert data_key == smp.data_key(row(smp, r["store_id"]))
    assert any(e["action"] == "key_show" and e["store_id"] == r["store_id"] for e in audit.entries(smp))
    dump = json.dumps(audit.entries(smp))
    assert data_key.hex() not in dump.lower() and k["recovery_key"] not in dump
    with pytest.raises(NotFound):
        call(smp, 0, "key_show", source="PC-OTHER")


def test_retire_deletes_everything(smp):
    side_by_side(smp)
    a = call(smp, OLD, "request_capture")
    b = call(smp, OTHER, "request_capture")
    out = call(smp, 0, "retire")
    assert sorted(out["changed_stores"]) == sorted([a["store_id"], b["store_id"]])
    assert smp.stores() == [] and smp.restore_only
    assert os.listdir(smp.state_dir / "store") == []


def test_create_store_failure_leaves_nothing(smp, monkeypatch):
    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(layout, "create_store", boom)
    with pytest.raises(OSError):
        call(smp, OLD, "request_capture")
    assert smp.query_one("SELECT COUNT(*) AS n FROM stores")["n"] == 0


def test_parse_at():
    now = 1_700_000_000.0
    assert retention.parse_at("+8d", now=now) == now + 8 * 86400
    assert retention.parse_at(None, now=now) == now
    assert retention.parse_at("2024-01-01T00:00:00+00:00") == 1704067200
    with pytest.raises(UsageError):
        retention.parse_at("tomorrow")


def test_status_is_complete(smp):
    side_by_side(smp)
    sid = _restored(smp)
    st = call(smp, 0, "status")
    assert st["settings"] == {"server": "SMP01", "restore_only": False, "delete_after_s": 86400}
    # a restored store waits for its deadline and holds no client slot
    assert (st["folders"][0]["clients"], st["folders"][0]["restored_kept"]) == (0, 1)
    a = st["associations"][0]
    assert (a["source"], a["status"], a["store_id"]) == ("PC-OLD", "restored", sid)
    assert a["delete_at"] == st["next_deadline"]


# -- access table -----------------------------------------------------------------------------

@pytest.mark.parametrize("status,src,dst,uid,expected", [
    ("capturing", 1, 2, 1, "rw"), ("capturing", 1, 2, 2, None), ("capturing", 1, 2, 3, None),
    ("capturing", 1, 2, 0, None), ("capturing", 1, 1, 1, "rw"),
    *[(st, 1, 2, 1, None) for st in ("captured", "restoring", "restored")],
    *[(st, 1, 2, 2, "ro") for st in ("captured", "restoring", "restored")],
    *[(st, 1, 2, 3, None) for st in ("captured", "restoring", "restored")],
    *[(st, 1, 2, 0, None) for st in ("captured", "restoring", "restored")],
    *[(st, 1, 1, 1, "ro") for st in ("captured", "restoring", "restored")],
    *[(st, 1, 2, u, None) for st in ("deleting", "deleted") for u in (0, 1, 2)],
])
def test_access_table(status, src, dst, uid, expected):
    assert access.level({"status": status, "source_uid": src, "dest_uid": dst}, uid) == expected


def test_before_delete_hook_sees_every_deletion(smp):
    seen = []
    smp.before_delete = lambda row: seen.append((row.store_id, row.status))     # a rows.StoreRow
    side_by_side(smp)
    a = _restored(smp)
    call(smp, 0, "retention_run", at="+2d")
    b = call(smp, OTHER, "request_capture")["store_id"]
    call(smp, 0, "association_remove", source="PC-OTHER", dest="PC-OTHER", force=True)
    assert seen == [(a, "restored"), (b, "capturing")]


@pytest.mark.parametrize("in_place", [False, True])
def test_concurrent_capture_requests_get_one_store(smp, in_place):
    import threading
    if not in_place:
        side_by_side(smp)
    results, errors = [], []

    def worker():
        s = Smp.open(smp.state_dir)
        try:
            results.append(api.dispatch(s, OLD, "request_capture", {})["store_id"])
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)
        finally:
            s.close()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert smp.query_one("SELECT COUNT(*) AS n FROM stores")["n"] == 1
    assert len([n for n in os.listdir(smp.state_dir / "store") if n != reserve.RESERVE_FILE]) == 1


def test_filesystem_refusals_are_counted_per_uid_and_store_and_written_once_a_window(tmp_path):
    from smpfs.lifecycle.audit import DenialCounter
    smp = Smp.init(tmp_path / "state", server="SMP01")
    now = [100.0]
    c = DenialCounter(window=60, max_keys=3, clock=lambda: now[0])
    for _ in range(50):
        c.note(2001, "a" * 64, errno.EACCES)
    c.note(2001, "a" * 64, errno.EROFS)
    assert c.flush(smp) == 1                                  # the first of a key goes out at once
    for _ in range(10):
        c.note(2001, "a" * 64, errno.EACCES)
    now[0] += 30
    assert c.flush(smp) == 0                                  # within the window: held and counted
    now[0] += 31
    assert c.flush(smp) == 1
    for sid in "bcdef":                                       # more stores than keys: by uid alone
        c.note(2002, sid * 64, errno.EACCES)
    assert c.flush(smp, force=True) == 4
    rows = [e for e in audit.entries(smp) if e["action"] == "fs_denied"]
    assert [r["detail"]["count"] for r in rows[:2]] == [51, 10]
    assert rows[0]["detail"]["errnos"] == {"EACCES": 50, "EROFS": 1} and rows[0]["outcome"] == "denied"
    assert rows[-1]["store_id"] is None and rows[-1]["detail"]["count"] == 2
