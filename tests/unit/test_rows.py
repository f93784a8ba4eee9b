"""smp.db as the upper layers see it: typed rows from lifecycle/rows.py, and
no SQL anywhere above lifecycle and store."""
from __future__ import annotations

import ast
import dataclasses
import os
import re
from pathlib import Path

import pytest

import smpfs
from smpfs.lifecycle import api, rows
from smpfs.lifecycle.smp import Smp
from smpfs.lifecycle.status import Status

OLD, NEW = 1001, 1002
PACKAGE = Path(smpfs.__file__).parent
#: The layers above lifecycle (and the pytest plugin on top): they read and
#: change smp.db only through lifecycle's functions.
UPPER = ["cli", "mount", "network", "site", "testing.py", "testnet.py"]
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|PRAGMA|BEGIN|COMMIT)\s+"
                 r"(\*|\w+\s*[(,=]|INTO|FROM|TABLE|INDEX|OR|IMMEDIATE|TRANSACTION|\w+\s+(SET|FROM|WHERE))")
#: Calls that run SQL on smp.db (``smp.query``, ``smp.conn.execute``, ``smp.db[...]``).
SQL_CALLS = {"query", "query_one", "execute", "executemany", "executescript", "rows_where", "get_row"}


def sql_in_source(text: str) -> list[str]:
    """Each string literal that reads as SQL, and each call that runs SQL, in ``text``."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            found.append(f"line {node.lineno}: {node.value[:60]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in SQL_CALLS:
            found.append(f"line {node.lineno}: .{node.func.attr}(...)")
        elif isinstance(node, ast.Attribute) and node.attr in ("conn", "db") \
                and isinstance(node.value, (ast.Name, ast.Attribute)) \
                and (getattr(node.value, "id", None) or getattr(node.value, "attr", None)) == "smp":
            found.append(f"line {node.lineno}: smp.{node.attr}")
    return found


def upper_modules() -> list[Path]:
    out: list[Path] = []
    for name in UPPER:
        p = PACKAGE / name
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p] if p.exists() else []
    return out


def test_the_sql_detector_sees_sql():
    assert sql_in_source('x = smp.query_one("SELECT * FROM stores WHERE id=?", (1,))')
    assert sql_in_source('smp.conn.execute("UPDATE stores SET root_mac=? WHERE id=?", (r, i))')
    assert sql_in_source('self.smp.db["stores"].rows_where("status = ?")')
    assert sql_in_source('q = f"INSERT INTO audit (ts) VALUES ({x})"')
    assert sql_in_source('q = "select name from computers"'.upper())
    assert not sql_in_source('"""Select a folder: the one with the most free space. Update the catalog."""')
    assert not sql_in_source('click.echo("Created SMP; insert the key into a safe")')


def test_no_sql_above_lifecycle():
    """The mount, the network services, the site tools, the CLI and the test
    plugin hold no SQL and touch no database connection: lifecycle/rows.py (and
    the other lifecycle modules) is where they read and change smp.db."""
    modules = upper_modules()
    assert len(modules) >= 30, modules                 # the scan sees the upper packages
    found = {str(p.relative_to(PACKAGE)): hits for p in modules if (hits := sql_in_source(p.read_text()))}
    assert not found, f"SQL above lifecycle (move it into smpfs/lifecycle): {found}"


# -- the rows --------------------------------------------------------------------------

@pytest.fixture
def smp(tmp_path):
    s = Smp.init(tmp_path / "state", server="SMP01")
    for name, uid in (("PC-OLD", OLD), ("PC-NEW", NEW)):
        api.dispatch(s, 0, "computer_add", {"name": name, "uid": uid})
    api.dispatch(s, 0, "associate", {"source": "PC-OLD", "dest": "PC-NEW"})
    yield s
    s.close()


def columns(smp, table: str) -> list[str]:
    return [c.name for c in smp.db[table].columns]


@pytest.mark.parametrize("cls,table", [(rows.FolderRow, "folders"), (rows.StoreRow, "stores"),
                                       (rows.ComputerRow, "computers")])
def test_each_row_field_is_a_column(smp, cls, table):
    fields = [f.name for f in dataclasses.fields(cls)]
    assert set(fields) <= set(columns(smp, table))
    if cls is not rows.ComputerRow:                     # the computer's secret columns stay in computer.py
        assert fields == columns(smp, table)
    else:
        assert not {"secret_wrapped", "secret_verifier"} & set(fields)


def test_rows_are_frozen_and_hide_key_material(smp):
    f = rows.first_folder(smp)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.path = "/elsewhere"                           # type: ignore[misc]
    sid = api.dispatch(smp, OLD, "request_capture", {})["store_id"]
    s = rows.live_stores(smp)[0]
    assert s.store_id == sid and s.wrapped_key is not None and "wrapped_key" not in repr(s)


def test_folder_and_store_reads(smp, tmp_path):
    f = rows.first_folder(smp)
    assert f.path == str(smp.state_dir / "store") and f.removed_at is None
    assert f.share_name == smp.share_name(smp.folder(f.id)) == f"SMPSTORED_{f.share}$"
    other = api.dispatch(smp, 0, "folder_add", {"path": str(tmp_path / "f2")})
    assert [x.id for x in rows.live_folders(smp)] == [f.id, other["id"]]
    api.dispatch(smp, 0, "folder_remove", {"path": str(tmp_path / "f2")})
    assert [x.id for x in rows.live_folders(smp)] == [f.id]

    assert rows.any_keyed_store(smp) is None and rows.all_stores(smp) == []
    sid = api.dispatch(smp, OLD, "request_capture", {})["store_id"]
    s = rows.all_stores(smp)[0]
    assert (s.store_id, s.status, s.source_uid, s.dest_uid, s.folder_id) == (sid, Status.CAPTURING, OLD, NEW, f.id)
    assert rows.store_by_rowid(smp, s.id) == s and rows.store_by_rowid(smp, s.id + 1) is None
    assert rows.any_keyed_store(smp) == s
    assert smp.data_key(s) == smp.data_key(smp.store(sid))          # a typed row or a dict alike


def test_deleted_stores_are_kept_but_not_live(smp):
    sid = api.dispatch(smp, OLD, "request_capture", {})["store_id"]
    api.dispatch(smp, 0, "association_remove", {"source": "PC-OLD", "dest": "PC-NEW", "force": True})
    (s,) = rows.all_stores(smp)
    assert s.store_id == sid and s.status == Status.DELETED and s.wrapped_key is None
    assert rows.live_stores(smp) == [] and rows.any_keyed_store(smp) is None


def test_computer_by_uid(smp):
    c = rows.computer_by_uid(smp, NEW)
    assert c is not None and (c.name, c.uid) == ("PC-NEW", NEW)
    assert rows.computer_by_uid(smp, 4242) is None


def test_what_the_mount_records(smp):
    api.dispatch(smp, OLD, "request_capture", {})
    s = rows.all_stores(smp)[0]
    rows.raise_nonce_hwm(smp, s.id, 1000)
    rows.raise_nonce_hwm(smp, s.id, 10)                  # never lowered
    assert rows.store_by_rowid(smp, s.id).nonce_hwm == 1000
    rows.keep_root_mac(smp, s.id, b"m" * 32)              # not while capturing
    assert rows.store_by_rowid(smp, s.id).root_mac is None
    api.dispatch(smp, OLD, "release_capture", {})
    rows.keep_root_mac(smp, s.id, b"m" * 32)
    rows.keep_root_mac(smp, s.id, b"n" * 32)              # kept once
    assert rows.store_by_rowid(smp, s.id).root_mac == b"m" * 32


def test_fsck_checks_every_live_store_and_finishes_deletions(smp, tmp_path):
    """``smpfs fsck`` (and a mount after a crash) checks the stores smp.db
    names as live, finishes a deletion a crash cut short, and names a
    storage folder that is gone."""
    from smpfs.lifecycle import fsck
    sid = api.dispatch(smp, OLD, "request_capture", {})["store_id"]
    folder = Path(rows.first_folder(smp).path)
    (folder / ".deleting-0123").mkdir()
    (folder / ".deleting-0123" / "x").write_bytes(b"x")
    seen = []
    report = fsck.check_smp(smp, repair=True, progress=lambda i, n, s: seen.append((i, n, s)))
    assert report == {"stores": 1, "findings": ["finished removing .deleting-0123"], "unrepairable": 0}
    assert seen == [(0, 1, sid)] and not (folder / ".deleting-0123").exists()

    gone = api.dispatch(smp, 0, "folder_add", {"path": str(tmp_path / "f2")})
    os.rmdir(gone["path"])
    report = fsck.check_smp(smp, repair=False)
    assert report["findings"] == [f"storage folder {gone['path']} is missing"] and report["unrepairable"] == 1
