"""Times as a reader takes them: `smpfs log` shows local ISO times (JSON keeps
epoch numbers); `association list`, `status` and `report` name each time for
what it is and show what will happen to a store (its deadline, "waits for
release" while a restore runs, or when it was deleted)."""
from __future__ import annotations

import json
import re

import pytest
from test_cli_contract import invoke

from smpfs.cli import base as cli_base

ISO = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d"
EPOCH = re.compile(r"=\d{9,}(\.\d+)?\b")


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_base, "is_admin", lambda: True)
    state = tmp_path / "state"

    def run(*args):
        r = invoke("--state", state, *args)
        assert r.exit_code == 0, (args, r.stderr)
        return r.stdout
    run("init", "--server", "SMP01")
    run("computer", "add", "PC-OLD", "--uid", "2001")
    run("computer", "add", "PC-NEW", "--uid", "2002")
    return run


def rows(text: str) -> tuple[list[str], list[str]]:
    header, *lines = text.splitlines()
    cols = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()

    def cut(line):
        return {n: line[a:b].strip() for n, a, b in zip(names, cols, cols[1:] + [None], strict=True)}
    return names, [cut(line) for line in lines]


def migrate(run):
    run("request", "capture", "PC-OLD")
    run("release", "capture", "PC-OLD")
    run("request", "restore", "PC-NEW")
    run("release", "restore", "PC-NEW")


def test_the_audit_log_shows_times_as_local_iso_times_and_json_keeps_numbers(run):
    run("associate", "PC-OLD", "PC-NEW")
    migrate(run)
    text = run("log")
    line, = [x for x in text.splitlines() if " release_restore ok" in x]
    assert re.search(rf"delete_at={ISO}\b", line), line
    assert not EPOCH.search(text), EPOCH.search(text)
    entry, = [e for e in map(json.loads, run("log", "--json").splitlines()) if e["action"] == "release_restore"]
    assert isinstance(entry["detail"]["delete_at"], float | int)


def test_association_list_names_its_times_and_shows_what_happens_to_the_store(run):
    run("associate", "PC-OLD", "PC-NEW")
    names, (a,) = rows(run("association", "list"))
    assert names == ["SOURCE", "DEST", "TYPE", "STATUS", "STORE", "ASSOCIATED", "REQUESTED", "DELETION"]
    associated = a["ASSOCIATED"]
    assert re.fullmatch(ISO, associated) and a["REQUESTED"] == "-" and a["DELETION"] == "-"
    run("request", "capture", "PC-OLD")
    _, (a,) = rows(run("association", "list"))
    assert a["ASSOCIATED"] == associated and re.fullmatch(ISO, a["REQUESTED"])   # never changes meaning
    run("release", "capture", "PC-OLD")
    run("request", "restore", "PC-NEW")
    run("release", "restore", "PC-NEW")
    _, (a,) = rows(run("association", "list"))
    assert a["STATUS"] == "restored" and re.fullmatch(ISO, a["DELETION"]), a
    # a re-run restore: the timer waits for its release, whatever the old deadline said
    run("request", "restore", "PC-NEW")
    _, (a,) = rows(run("association", "list"))
    assert a["STATUS"] == "restoring" and a["DELETION"] == "waits for release", a
    assert "delete at: waits for release" in run("status")
    _, (r,) = rows(run("report"))
    assert r["DELETION"] == "waits for release", r
    run("release", "restore", "PC-NEW")
    run("retention", "run", "--at", "+400d")
    _, (a,) = rows(run("association", "list"))
    assert a["STATUS"] == "deleted" and re.fullmatch(rf"deleted {ISO}", a["DELETION"]), a
    st = json.loads(run("--json", "association", "list"))[0]
    assert st["association_created_at"] <= st["requested_at"] <= st["deleted_at"]
