"""The store format cannot drift: stores made by format 1 (tests/fixtures,
made by that format's own code: tools/make_fixtures.py) open and read with
today's code, and a store of an unknown version or feature is refused."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from smpfs.crypto import keys as key
from smpfs.lifecycle.smp import SCHEMA_VERSION, Smp
from smpfs.store import layout
from smpfs.store.layout import FORMAT_VERSION, ROOT
from smpfs.store.statestore import StateStore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "format1"


@pytest.fixture
def format1(tmp_path):
    """A private copy of the format-1 state dir (opening migrates it)."""
    state = tmp_path / "state"
    shutil.copytree(FIXTURES / "state", state)
    os.chmod(state / "master.key", 0o600)
    for sd in (state / "store").iterdir():
        for i in range(256):        # git keeps no empty directories
            (sd / "b" / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    return state, json.loads((FIXTURES / "manifest.json").read_text())


def _resolve(st: StateStore, path: str) -> int:
    ino = ROOT
    for part in path.split("/"):
        ino = st.lookup(ino, part.encode())
    return ino


def _check_tree(st: StateStore, files: dict) -> None:
    for path, want in files.items():
        ino = _resolve(st, path)
        a = st.getattr(ino)
        if want["type"] == "dir":
            assert stat.S_ISDIR(a.mode) and stat.S_IMODE(a.mode) == want["mode"], path
        elif want["type"] == "symlink":
            assert stat.S_ISLNK(a.mode) and st.readlink(ino) == want["target"].encode(), path
        else:
            assert stat.S_ISREG(a.mode) and stat.S_IMODE(a.mode) == want["mode"], path
            assert a.size == want["size"], path
            data = st.read(ino, 0, a.size + 10)
            assert hashlib.sha256(data).hexdigest() == want["sha256"], path
            for xname, xval in want.get("xattrs", {}).items():
                assert st.getxattr(ino, xname.encode()) == xval.encode(), path
            if "nlink" in want:
                assert a.nlink == want["nlink"], path
            if "mtime_ns" in want:
                assert a.mtime_ns == want["mtime_ns"], path
    assert sorted(n for _c, n, _a in st.readdir(ROOT)) == sorted(
        p.encode() for p in files if "/" not in p)


def test_format1_stores_open_read_and_migrate(format1):
    state, manifest = format1
    smp = Smp.open(state)                             # smp.db schema 1 is migrated too
    try:
        version = smp.query_one("SELECT value FROM meta WHERE key='schema_version'")["value"]
        assert int(version) == SCHEMA_VERSION
        for variant, m in manifest["stores"].items():
            row = smp.store(m["store_id"])
            path = state / "store" / m["store_id"]
            with sqlite3.connect(path / "store.db") as db:
                assert db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()[0] == "1"
            keys = key.StoreKeys.from_data_key(m["store_id"], smp.data_key(row))
            st = StateStore(path, keys)
            try:
                assert st.format == FORMAT_VERSION, variant
                _check_tree(st, m["files"])
                # the migrated store takes new writes, inline and in files
                ino = st.mknode(ROOT, b"new", stat.S_IFREG | 0o644, m["uid"], m["uid"]).ino
                st.write(ino, 0, b"small")
                big = st.mknode(ROOT, b"new-big", stat.S_IFREG | 0o644, m["uid"], m["uid"]).ino
                bigdata = os.urandom(100_000)
                st.write(big, 0, bigdata)
            finally:
                st.close()
            meta = json.loads((path / "store.json").read_text())
            assert meta["version"] == FORMAT_VERSION and meta["features"] == layout.features(FORMAT_VERSION)
            st = StateStore(path, keys)
            try:
                new = {n: {"type": "file", "mode": 0o644, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                       for n, d in (("new", b"small"), ("new-big", bigdata))}
                _check_tree(st, {**m["files"], **new})
            finally:
                st.close()
    finally:
        smp.close()


@pytest.fixture
def store(tmp_path):
    sid = os.urandom(32).hex()
    keys = key.StoreKeys.from_data_key(sid, key.new_data_key())
    return layout.create_store(tmp_path, sid, keys, owner_uid=1000), keys


def _refused(path, keys) -> str:
    with pytest.raises(OSError) as e:
        StateStore(path, keys)
    assert e.value.errno == errno.EPROTO
    return str(e.value)


def test_a_new_store_says_its_format(store):
    path, keys = store
    meta = json.loads((path / "store.json").read_text())
    assert meta["version"] == FORMAT_VERSION and meta["features"] == layout.features(FORMAT_VERSION)
    StateStore(path, keys).close()


def test_a_newer_format_in_store_json_is_refused_naming_it(store):
    path, keys = store
    meta = json.loads((path / "store.json").read_text())
    meta["version"] = FORMAT_VERSION + 7
    (path / "store.json").write_text(json.dumps(meta))
    msg = _refused(path, keys)
    assert f"format {FORMAT_VERSION + 7}" in msg and "upgrade smpfs" in msg


def test_a_newer_format_in_store_db_is_refused(store):
    path, keys = store
    with sqlite3.connect(path / "store.db") as db:
        db.execute("UPDATE meta SET value=? WHERE key='format_version'", (str(FORMAT_VERSION + 1),))
    assert f"format {FORMAT_VERSION + 1}" in _refused(path, keys)


def test_an_unknown_feature_is_refused_naming_it(store):
    path, keys = store
    meta = json.loads((path / "store.json").read_text())
    meta["features"].append("time-travel")
    (path / "store.json").write_text(json.dumps(meta))
    assert "time-travel" in _refused(path, keys)


def test_another_stores_json_or_none_is_refused(store):
    path, keys = store
    meta = json.loads((path / "store.json").read_text())
    meta["store_id"] = "ab" * 32
    (path / "store.json").write_text(json.dumps(meta))
    assert "another store" in _refused(path, keys)
    (path / "store.json").unlink()
    assert "store.json" in _refused(path, keys)
