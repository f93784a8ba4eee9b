"""The SMP role end to end, as an admin drives it (nothing mounted; the CLI acts
on the state dir as the admin): folder limits in place, bulk import, status
and the fleet report, retire / unretire, removing the role, restore retries."""
from __future__ import annotations

import csv
import io
import json
import os

import pytest
from click.testing import CliRunner

from smpfs import cli
from smpfs.cli import base as cli_base
from smpfs.errors import NotFound
from smpfs.lifecycle.request import with_retries


@pytest.fixture(autouse=True)
def _as_admin(monkeypatch):
    monkeypatch.setattr(cli_base, "is_admin", lambda: True)


@pytest.fixture
def smpcli(tmp_path):
    state = tmp_path / "state"

    def run(*args, input=None):
        return CliRunner().invoke(cli.main, ["--state", str(state), *map(str, args)], input=input)

    assert run("init", "--server", "SMP01", "--min-free", "1MB").exit_code == 0
    run.state = state
    run.json = lambda *a: json.loads(ok(run("--json", *a)).stdout)
    return run


def ok(r):
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    return r


def test_folder_set_changes_limits_while_the_folder_holds_stores(smpcli):
    ok(smpcli("computer", "add", "PC-A", "--uid", "2001"))
    ok(smpcli("computer", "add", "PC-B", "--uid", "2002"))
    folder = smpcli.json("folder", "list")[0]["path"]
    ok(smpcli("folder", "set", folder, "--max-clients", "1"))
    ok(smpcli("request", "capture", "PC-A"))
    r = smpcli("request", "capture", "PC-B")
    assert r.exit_code == 12 and "folder set" in r.stderr           # the hint says how to raise it
    r = ok(smpcli("folder", "set", folder, "--max-clients", "2", "--min-free", "2MB"))
    assert "max clients 2, min free 2MB" in r.stdout
    ok(smpcli("request", "capture", "PC-B"))
    f = smpcli.json("folder", "list")[0]
    assert (f["max_clients"], f["min_free"], f["clients"]) == (2, "2MB", 2)
    assert smpcli("folder", "set", folder).exit_code == 2            # nothing to change
    assert smpcli("folder", "set", folder, "--max-clients", "0").exit_code == 2
    assert smpcli("folder", "set", folder, "--min-free", "lots").exit_code == 2
    assert smpcli("folder", "set", "/nonexistent", "--max-clients", "5").exit_code == 15
    entry = [e for e in map(json.loads, ok(smpcli("log", "--json")).stdout.splitlines())
             if e["action"] == "folder_set"][-1]
    assert entry["detail"]["old_max_clients"] == 1 and entry["detail"]["max_clients"] == 2


def test_computer_import_is_all_or_nothing_and_names_the_bad_line(smpcli, tmp_path):
    good = tmp_path / "fleet.csv"
    good.write_text("name,uid,destination\n# the lab\nPC-OLD,2001,PC-NEW\n\nPC-NEW,2002\nPC-SELF,2003,PC-SELF\n")
    r = ok(smpcli("computer", "import", good))
    assert "Imported 3 computer(s) and 2 association(s)" in r.stdout
    assocs = {(a["source"], a["dest"], a["migration_type"]) for a in smpcli.json("association", "list")}
    assert assocs == {("PC-OLD", "PC-NEW", "side-by-side"), ("PC-SELF", "PC-SELF", "in-place")}

    before = smpcli.json("computer", "list")
    for text, code, where in [
        ("PC-X1,3001\nPC-X2,abc-no-user\n", 2, "line 2"),
        ("PC-X1,3001\nPC X2,3002\n", 2, "line 2"),
        ("PC-X1,3001\nPC-X2,3002,PC-NOWHERE\n", 10, "line 2"),
        ("PC-X1,3001\n\nPC-X2,3001\n", 16, "line 3"),
        ("PC-X1,3001\nPC-OLD,3002\n", 16, "line 2"),
        ("PC-X1,3001\nPC-X2,0\n", 2, "line 2"),
        ("PC-X1,3001,PC-NEW,extra\n", 2, "line 1"),
        ("# only a comment\n", 2, "no computer"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        r = smpcli("computer", "import", bad)
        assert r.exit_code == code and where in r.stderr and "hint:" in r.stderr, (text, r.stderr)
        assert smpcli.json("computer", "list") == before                # nothing of it was added
    assert smpcli("computer", "import", tmp_path / "missing.csv").exit_code == 2
    denied = [e for e in map(json.loads, ok(smpcli("log", "--json")).stdout.splitlines())
              if e["action"] == "computer_import" and e["outcome"] == "denied"]
    assert len(denied) >= 7


def test_status_and_report_show_every_store_with_sizes_unc_and_times(smpcli):
    ok(smpcli("computer", "add", "PC-OLD", "--uid", "2001"))
    ok(smpcli("computer", "add", "PC-NEW", "--uid", "2002"))
    ok(smpcli("associate", "PC-OLD", "PC-NEW"))
    first = smpcli.json("request", "capture", "PC-OLD")["store_id"]
    ok(smpcli("release", "capture", "PC-OLD"))
    ok(smpcli("request", "restore", "PC-NEW"))
    ok(smpcli("release", "restore", "PC-NEW"))
    second = smpcli.json("request", "capture", "PC-OLD")["store_id"]   # a second capture, first kept
    st = smpcli.json("status")
    assert st["retired"] is False and st["stores_bytes_total"] > 0
    a, = st["associations"]
    assert [s["store_id"] for s in a["all_stores"]] == [first, second]
    s1, s2 = a["all_stores"]
    assert s1["status"] == "restored" and s2["status"] == "capturing"
    assert s1["size_bytes"] > 0 and s1["unc"].startswith("\\\\SMP01\\SMPSTORED_") and s1["unc"].endswith(first)
    for k in ("created_at", "capture_released_at", "restore_requested_at", "restore_released_at", "delete_at"):
        assert s1[k], k
    assert st["folders"][0]["stores_bytes"] == s1["size_bytes"] + s2["size_bytes"]
    assert "wrapped_key" not in json.dumps(st)

    text = ok(smpcli("status")).stdout
    for needle in (first, second, s1["unc"], "restore requested", "restored ", "delete at", "stores on disk"):
        assert needle in text, needle
    assert "RETIRED" not in text

    rows = smpcli.json("report")
    assert len(rows) == 1 and rows[0]["store_id"] == second and rows[0]["stores"] == 2
    got = list(csv.DictReader(io.StringIO(ok(smpcli("report", "--csv")).stdout)))
    assert len(got) == 1 and got[0]["source"] == "PC-OLD" and got[0]["store_id"] == second
    assert int(got[0]["size_bytes"]) == a["size_bytes"] and "T" in got[0]["created_at"]
    ok(smpcli("association", "remove", "PC-OLD", "PC-NEW", "--force"))
    got = list(csv.DictReader(io.StringIO(ok(smpcli("report", "--csv")).stdout)))
    assert got[0]["status"] == "deleted" and got[0]["removed_at"] and int(got[0]["bytes_freed"]) > 0
    assert smpcli.json("status")["associations"] == []
    assert len(smpcli.json("status", "--all")["associations"]) == 1


def test_retire_is_not_undone_by_restore_only_off(smpcli):
    ok(smpcli("computer", "add", "PC-A", "--uid", "2001"))
    ok(smpcli("request", "capture", "PC-A"))
    ok(smpcli("retire", "--yes"))
    st = smpcli.json("status")
    assert st["retired"] is True and st["retired_at"] and st["settings"]["restore_only"] is True
    assert "RETIRED" in ok(smpcli("status")).stdout
    r = smpcli("config", "--restore-only", "off")
    assert r.exit_code == 16 and "unretire" in r.stderr
    assert smpcli("request", "capture", "PC-A").exit_code == 11
    ok(smpcli("unretire"))
    assert smpcli.json("status")["retired"] is False
    ok(smpcli("request", "capture", "PC-A"))
    assert smpcli("unretire").exit_code == 16
    actions = [e["action"] for e in map(json.loads, ok(smpcli("log", "--json")).stdout.splitlines())]
    assert "retire" in actions and "unretire" in actions


def test_role_remove_shreds_everything_and_says_what_it_removed(smpcli, tmp_path):
    extra = tmp_path / "second"
    ok(smpcli("folder", "add", extra))
    (extra / "not-ours.txt").write_text("the admin's")
    ok(smpcli("computer", "add", "PC-A", "--uid", "2001"))
    sid = smpcli.json("request", "capture", "PC-A")["store_id"]
    assert smpcli("role", "remove", input="n\n").exit_code == 1 and smpcli.state.is_dir()
    r = ok(smpcli("role", "remove", "--yes"))
    assert f"shredded store {sid}" in r.stdout and "not-ours.txt" in r.stdout
    assert "removed the state directory" in r.stdout and "role is removed" in r.stdout
    assert not smpcli.state.exists()
    assert os.listdir(extra) == ["not-ours.txt"]             # what smpfs did not make stays
    assert smpcli("status").exit_code == 3
    assert smpcli("role", "remove", "--yes").exit_code == 3


def test_role_remove_json(smpcli):
    out = smpcli.json("role", "remove", "--yes")
    assert out["state_dir"] == str(smpcli.state) and out["folders"][0]["folder_removed"] is True
    assert "smp.db" in out["state_files"] and "master.key" in out["state_files"]


def test_restore_retries_wait_in_the_caller_and_say_so(smpcli):
    ok(smpcli("computer", "add", "PC-A", "--uid", "2001"))
    ok(smpcli("request", "capture", "PC-A"))
    r = smpcli("request", "restore", "PC-A", "--retries", "2", "--retry-delay", "0")
    assert r.exit_code == 13 and r.stderr.count("retry ") == 2 and "retry 2/2" in r.stderr
    ok(smpcli("release", "capture", "PC-A"))
    ok(smpcli("request", "restore", "PC-A", "--retries", "2", "--retry-delay", "0"))


def test_with_retries_sleeps_between_attempts_and_raises_the_last_refusal():
    calls, slept = [], []

    def call():
        calls.append(1)
        if len(calls) < 3:
            raise NotFound("not yet")
        return "ok"
    assert with_retries(call, 5, 1.5, (NotFound,), sleep=slept.append) == "ok"
    assert len(calls) == 3 and slept == [1.5, 1.5]
    with pytest.raises(NotFound):
        with_retries(lambda: (_ for _ in ()).throw(NotFound("never")), 2, 0, (NotFound,), sleep=slept.append)
    with pytest.raises(ValueError):        # anything else is not waited out
        with_retries(lambda: (_ for _ in ()).throw(ValueError()), 5, 1, (NotFound,), sleep=slept.append)
