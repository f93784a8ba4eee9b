"""Where `folder add` may put a storage folder, and where it may not (no FUSE:
the place inside the SMP's own mount is in tests/mount/test_admin_slips.py).

Every refusal is a usage error (exit 2) with a hint, and leaves nothing behind:
no folder row, no directory."""
from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from smpfs import cli
from smpfs.cli import base as cli_base
from smpfs.errors import Conflict, UsageError
from smpfs.lifecycle import api
from smpfs.lifecycle.smp import Smp

PC = 1001


@pytest.fixture
def smp(tmp_path):
    s = Smp.init(tmp_path / "state", server="SMP01")
    yield s
    s.close()


def folders(s) -> list[str]:
    return [r["path"] for r in s.query("SELECT path FROM folders WHERE removed_at IS NULL ORDER BY id")]


def refused(s, path, *words) -> UsageError:
    """``folder add path`` is refused with exit 2, a hint, and nothing recorded."""
    before = folders(s)
    with pytest.raises(UsageError) as e:
        api.dispatch(s, 0, "folder_add", {"path": str(path), "min_free": "1MB"})
    assert e.value.exit_code == 2 and e.value.hint, e.value
    text = f"{e.value.message} {e.value.hint}"
    for w in words:
        assert w in text, text
    assert folders(s) == before
    return e.value


def added(s, path) -> dict:
    return api.dispatch(s, 0, "folder_add", {"path": str(path), "min_free": "1MB"})


def test_a_relative_path_is_refused_not_resolved(smp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for rel in ("store2", "./store2", "../store2", "state/store", "~/store2"):
        refused(smp, rel, "relative", "absolute")
    assert not (tmp_path / "store2").exists()
    with pytest.raises(UsageError) as e:
        Smp.init(tmp_path / "state2", folder="store2")
    assert "relative" in e.value.message and not (tmp_path / "state2").exists()


def test_the_root_directory_is_refused(smp):
    refused(smp, "/", "/ cannot be a storage folder")
    refused(smp, "/tmp/..", "/ cannot be a storage folder")


def test_the_state_dir_inside_it_and_around_it_are_refused(smp, tmp_path):
    state = smp.state_dir
    refused(smp, state, "state directory")
    refused(smp, state / "other", "inside the SMP's state directory", f"{state}/store")
    refused(smp, state / "store" / ".." / "x", "inside the SMP's state directory")
    refused(smp, tmp_path, "contains the SMP's state directory")
    assert not (state / "other").exists()
    # the default folder, STATE/store, may come back once removed
    api.dispatch(smp, 0, "folder_remove", {"path": str(state / "store")})
    assert added(smp, state / "store")["path"] == str(state / "store")


def test_a_folder_inside_or_around_another_folder_is_refused(smp, tmp_path):
    added(smp, tmp_path / "a")
    (tmp_path / "b").mkdir()
    added(smp, tmp_path / "b" / "c")
    refused(smp, tmp_path / "a" / "sub", "inside the storage folder", str(tmp_path / "a"))
    refused(smp, tmp_path / "b", "contains the storage folder", str(tmp_path / "b" / "c"))
    assert not (tmp_path / "a" / "sub").exists()
    with pytest.raises(Conflict):                    # the same folder twice: still a conflict (16)
        added(smp, tmp_path / "a")
    # a removed folder no longer counts
    api.dispatch(smp, 0, "folder_remove", {"path": str(tmp_path / "b" / "c")})
    assert added(smp, tmp_path / "b")["path"] == str(tmp_path / "b")


def test_a_symlink_is_followed_before_the_checks_and_the_folder_kept_resolved(smp, tmp_path):
    (tmp_path / "into-state").symlink_to(smp.state_dir)
    refused(smp, tmp_path / "into-state" / "x", "inside the SMP's state directory")
    (tmp_path / "real").mkdir(mode=0o711)
    (tmp_path / "link").symlink_to("real")
    f = added(smp, tmp_path / "link")
    assert f["path"] == str(tmp_path / "real")
    with pytest.raises(Conflict):
        added(smp, tmp_path / "real")
    api.dispatch(smp, 0, "folder_remove", {"path": str(tmp_path / "link")})   # found through the link too
    (tmp_path / "loop").symlink_to("loop")
    refused(smp, tmp_path / "loop" / "x", "symbolic links")


def test_another_smps_folder_state_dir_and_stores_are_refused(smp, tmp_path):
    other = Smp.init(tmp_path / "other", server="SMP02", folder=str(tmp_path / "otherstore"), min_free="1MB")
    try:
        api.dispatch(other, 0, "computer_add", {"name": "PC-1", "uid": PC})
        store_id = api.dispatch(other, PC, "request_capture", {})["store_id"]
    finally:
        other.close()
    theirs = tmp_path / "otherstore"
    refused(smp, theirs, "another SMP's storage folder", "smpfs recover")
    refused(smp, theirs / "sub", "inside another SMP's storage folder")
    refused(smp, theirs / store_id, "inside a state store")
    refused(smp, theirs / store_id / "b", "inside a state store")
    refused(smp, tmp_path / "other", "another SMP's state directory")
    refused(smp, tmp_path / "other" / "x", "inside another SMP's state directory")
    os.unlink(theirs / ".smpfs-reserve")              # its stores alone say whose it is
    refused(smp, theirs, "another SMP's storage folder")
    assert sorted(os.listdir(theirs)) == [store_id]


def test_a_folder_others_can_write_is_refused(smp, tmp_path):
    ww = tmp_path / "tmpfs-like"
    ww.mkdir()
    os.chmod(ww, 0o1777)                              # what a fresh tmpfs looks like
    refused(smp, ww, "writable by others", "chmod 0711")
    assert stat.S_IMODE(os.stat(ww).st_mode) == 0o1777   # never changed behind the admin's back
    gw = tmp_path / "group-writable"
    gw.mkdir()
    os.chmod(gw, 0o770)
    if os.stat(gw).st_gid != 0:
        refused(smp, gw, "writable by others")
    # a directory that lets others rename the folder away (no sticky bit) is refused too
    opened = tmp_path / "open"
    opened.mkdir()
    os.chmod(opened, 0o777)
    refused(smp, opened / "f", "lets other users rename it")
    assert not (opened / "f").exists()
    # the default folder is checked up to its state dir: where that may be is init's choice
    Smp.init(opened / "state", server="SMP02").close()
    assert stat.S_IMODE(os.stat(opened / "state" / "store").st_mode) == 0o711
    os.chmod(opened, 0o1777)                          # with the sticky bit (/tmp's) they cannot
    f = added(smp, opened / "f")
    st = os.stat(f["path"])
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_uid == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_folder_or_parent_owned_by_another_user_is_refused(smp, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o711)
    os.chown(theirs, 65534, 65534)
    refused(smp, theirs, "not owned by root", "chown 0:")
    refused(smp, theirs / "f", "lets other users rename it")
    assert not (theirs / "f").exists()


def test_refusals_keep_the_cli_contract(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_base, "is_admin", lambda: True)
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state"

    def run(*args):
        return CliRunner().invoke(cli.main, ["--state", str(state), *map(str, args)])

    assert run("init", "--server", "SMP01").exit_code == 0
    for path, words in (("rel", "relative"), ("/", "/ cannot"), (state, "state directory")):
        r = run("folder", "add", path)
        assert r.exit_code == 2 and "Traceback" not in r.output, (r.exit_code, r.output)
        assert r.stderr.startswith("smpfs: ") and words in r.stderr and "\n  hint: " in r.stderr, r.stderr
        r = run("--json", "folder", "add", path)
        err = json.loads(r.stderr)["error"]
        assert r.exit_code == 2 and err["exit"] == 2 and err["class"] == "UsageError" and err["hint"], err
    r = CliRunner().invoke(cli.main, ["--state", str(tmp_path / "state2"), "init", "--folder", "rel"])
    assert r.exit_code == 2 and "relative" in r.stderr and not (tmp_path / "state2").exists()
