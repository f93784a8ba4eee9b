"""Unit parsing and the CLI (through click's test runner; nothing mounted).

The admin commands act on the state dir directly when the caller is root. The
unit tier runs as any user, so these tests make the CLI take the caller for
the admin (``cli.base.is_admin``): the state dir is the test's own and owned
by the caller, and every admin code path runs as it does for root."""
from __future__ import annotations

import json
import os

import click
import pytest
from click.testing import CliRunner

from smpfs import cli, units
from smpfs.cli import base as cli_base
from smpfs.errors import UsageError

# -- units ------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("500MB", 500_000_000), ("2GB", 2_000_000_000), ("1GiB", 2**30), ("10", 10),
    ("1.5 KB", 1500), ("3tb", 3 * 10**12),
])
def test_parse_size(text, expected):
    assert units.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MB", "12XB", "-1MB", "1e3"])
def test_parse_size_rejects(bad):
    with pytest.raises(UsageError):
        units.parse_size(bad)


def test_parse_free():
    assert units.parse_free("10%").threshold(1000) == 100
    assert units.parse_free("500MB").threshold(1) == 500_000_000
    for bad in ("100%", "-1%", "x%"):
        with pytest.raises(UsageError):
            units.parse_free(bad)


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("12h", 43200), ("7d", 604800),
                                          ("1d12h", 129600), ("2w", 1209600), ("45s", 45)])
def test_durations(text, seconds):
    assert units.parse_duration(text) == seconds
    assert units.parse_duration(units.format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["", "7", "7x", "d", "1d junk"])
def test_parse_duration_rejects(bad):
    with pytest.raises(UsageError):
        units.parse_duration(bad)


# -- the CLI ----------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _as_admin(monkeypatch):
    monkeypatch.setattr(cli_base, "is_admin", lambda: True)


@pytest.fixture
def smpcli(tmp_path):
    state = tmp_path / "state"
    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(cli.main, ["--state", str(state), *args], input=input)

    r = run("init", "--server", "SMP01")
    assert r.exit_code == 0, r.output
    for name, uid in (("PC-OLD", "2001"), ("PC-NEW", "2002")):
        assert run("computer", "add", name, "--uid", uid).exit_code == 0
    run.state = state
    return run


def test_init_twice_fails_with_exit_3(smpcli):
    r = smpcli("init")
    assert r.exit_code == 3
    assert r.stderr.startswith("smpfs: ") and "already holds an SMP" in r.stderr


def test_missing_state_dir(tmp_path):
    r = CliRunner().invoke(cli.main, ["--state", str(tmp_path / "none"), "status"])
    assert r.exit_code == 3 and "hint:" in r.stderr


def test_state_from_environment(smpcli, monkeypatch):
    monkeypatch.setenv("SMPFS_STATE", str(smpcli.state))
    r = CliRunner().invoke(cli.main, ["computer", "list", "--json"])
    assert r.exit_code == 0 and {c["name"] for c in json.loads(r.stdout)} == {"PC-OLD", "PC-NEW"}


def test_flow_and_exit_codes(smpcli):
    assert smpcli("associate", "pc-old", "pc-new").exit_code == 0
    r = smpcli("release", "capture", "PC-OLD")
    assert r.exit_code == 14 and "no capture to release" in r.stderr
    r = smpcli("request", "capture", "PC-OLD", "--unc")
    assert r.exit_code == 0
    unc = r.stdout.strip()
    assert unc.startswith("\\\\SMP01\\SMPSTORED_") and len(unc.split("\\")[-1]) == 64
    assert "\n" not in unc                               # the path alone, for a task sequence
    r = smpcli("request", "capture", "PC-OLD", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["existing"] is True
    assert smpcli("request", "restore", "PC-NEW").exit_code == 13
    assert smpcli("release", "capture", "PC-OLD").exit_code == 0
    r = smpcli("request", "restore", "PC-NEW", "--unc")
    assert r.exit_code == 0 and r.stdout.strip() == unc
    r = smpcli("release", "restore", "PC-NEW")
    assert r.exit_code == 0 and "kept until" in r.stdout
    st = json.loads(smpcli("status", "--json").stdout)
    assert st["associations"][0]["status"] == "restored"
    r = smpcli("retention", "run", "--at", "+2d", "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["deleted"]) == 1
    r = smpcli("--json", "association", "list")
    assert json.loads(r.stdout)[0]["status"] == "deleted"


def test_refusal_exit_codes(smpcli):
    assert smpcli("request", "capture", "PC-NOPE").exit_code == 10
    assert smpcli("request", "capture").exit_code == 2          # root must name the computer
    assert smpcli("config", "--restore-only", "on").exit_code == 0
    r = smpcli("request", "capture", "PC-OLD")
    assert r.exit_code == 11 and "restore-only" in r.stderr
    assert smpcli("config", "--restore-only", "off").exit_code == 0
    folder = json.loads(smpcli("folder", "list", "--json").stdout)[0]["path"]
    assert smpcli("folder", "remove", folder).exit_code == 0
    assert smpcli("request", "capture", "PC-OLD").exit_code == 12
    assert smpcli("folder", "add", folder, "--min-free", "99%").exit_code == 0
    r = smpcli("request", "capture", "PC-OLD", "--retries", "1", "--retry-delay", "0")
    assert r.exit_code == 12 and "no storage folder has room" in r.stderr
    assert smpcli("request", "capture", "PC-OLD", "--retries", "601").exit_code == 2
    assert smpcli("folder", "add", "/nonexistent/x/y").exit_code == 2


def test_capture_retries_wait_in_the_caller_until_room_appears(smpcli, monkeypatch):
    folder = json.loads(smpcli("folder", "list", "--json").stdout)[0]["path"]
    assert smpcli("folder", "remove", folder).exit_code == 0
    assert smpcli("folder", "add", folder, "--max-clients", "1").exit_code == 0
    assert smpcli("request", "capture", "PC-OLD").exit_code == 0
    slept = []

    def wait(delay):                   # the admin frees the slot on the second wait
        slept.append(delay)
        if len(slept) == 2:
            assert smpcli("association", "remove", "PC-OLD", "PC-OLD", "--force").exit_code == 0
    monkeypatch.setattr("smpfs.cli.base.time.sleep", wait)
    r = smpcli("request", "capture", "PC-NEW", "--retries", "5", "--retry-delay", "7")
    assert r.exit_code == 0, r.stderr
    assert slept == [7.0, 7.0]
    slept.clear()
    monkeypatch.setattr("smpfs.cli.base.time.sleep", slept.append)
    r = smpcli("request", "capture", "PC-OLD", "--retries", "3", "--retry-delay", "2")
    assert r.exit_code == 12 and slept == [2.0, 2.0, 2.0]


def test_folder_remove_needs_force_and_confirmation(smpcli, tmp_path):
    assert smpcli("request", "capture", "PC-OLD").exit_code == 0
    folder = json.loads(smpcli("folder", "list", "--json").stdout)[0]["path"]
    assert smpcli("folder", "remove", folder).exit_code == 16
    assert smpcli("folder", "remove", folder, "--force", input="n\n").exit_code == 1
    r = smpcli("folder", "remove", folder, "--force", "--yes")
    assert r.exit_code == 0 and "deleted 1 store" in r.stdout


def test_non_root_without_mount_is_told_to_ask_an_admin(smpcli, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 2001)
    monkeypatch.setattr(cli_base, "is_admin", lambda: False)
    r = smpcli("request", "capture")
    assert r.exit_code == 6 and "not mounted; ask an admin" in r.stderr


def test_config_and_settings(smpcli):
    r = smpcli("config", "--delete-after", "7d", "--server", "SMPX", "--json")
    s = json.loads(r.stdout)
    assert (s["delete_after_s"], s["server"]) == (604800, "SMPX")
    r = smpcli("config")
    assert "7d after restore" in r.stdout and "SMPX" in r.stdout
    assert smpcli("config", "--delete-after", "7d", "--delete-immediately").exit_code == 2
    assert smpcli("config", "--delete-after", "soon").exit_code == 2
    assert "immediately" in smpcli("config", "--delete-immediately").stdout


def test_key_show_and_log(smpcli):
    assert smpcli("request", "capture", "PC-OLD").exit_code == 0
    r = smpcli("key", "show", "pc-old", "--json")
    k = json.loads(r.stdout)["recovery_key"]
    assert len(k.split("-")) == 8
    r = smpcli("log", "--json")
    entries = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["action"] for e in entries][-2:] == ["request_capture", "key_show"]
    assert k not in r.stdout
    r = smpcli("log", "-n", "1")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1 and "key_show" in r.stdout


def test_retire(smpcli):
    assert smpcli("request", "capture", "PC-OLD").exit_code == 0
    assert smpcli("retire", input="n\n").exit_code == 1
    r = smpcli("retire", "--yes")
    assert r.exit_code == 0 and "1 store(s) deleted" in r.stdout
    assert smpcli("request", "capture", "PC-NEW").exit_code == 11


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_every_command_has_an_example():
    missing = [" ".join(p) for p, cmd in _commands(cli.main) if "Example" not in (cmd.help or "")]
    assert not missing, f"commands without an example in --help: {missing}"
    assert "Example" in CliRunner().invoke(cli.main, ["request", "capture", "--help"]).stdout
