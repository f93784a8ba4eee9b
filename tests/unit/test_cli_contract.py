"""The CLI's output contract, walked over every command of the click tree.

Whatever a user types, the answer is the documented one: ``smpfs: message``
and a ``hint:`` line on stderr (or, with --json, one JSON object
``{"error": {"class", "exit", "message", "hint"}}``), an exit code from the
README's table, and never a traceback. The mount tier walks the same tree as
real non-root uids against a mounted SMP (tests/mount/test_cli_contract_uids.py).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from smpfs import cli
from smpfs.cli import base as cli_base
from smpfs.lifecycle import api

ROOT = Path(__file__).resolve().parents[2]


def readme_exit_codes() -> set[int]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.M)}


EXIT_CODES = readme_exit_codes()

#: The migration steps: any uid, for its own computer (through the mounted SMP).
STEPS = {("request", "capture"), ("request", "restore"), ("release", "capture"), ("release", "restore")}
#: Commands any uid may run; every other one is the admin's.
#: (and the network client, which runs anywhere and needs no state dir)
CLIENT = {("client", "request"), ("client", "release")}
NOT_ADMIN = STEPS | CLIENT | {("recover",), ("plan",), ("site", "check")}


def leaves(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from leaves(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


COMMANDS = list(leaves(cli.main))
IDS = [" ".join(p) for p, _ in COMMANDS]


def plausible_args(cmd: click.Command, tmp: Path) -> list[str]:
    """Arguments click accepts for ``cmd`` (so the command itself runs)."""
    out = []
    for p in cmd.params:
        if isinstance(p, click.Argument) and p.required:
            if isinstance(p.type, click.Choice):
                out.append(p.type.choices[0])
            elif isinstance(p.type, click.Path):
                d = tmp / f"arg-{p.name}"
                d.mkdir(exist_ok=True)
                out.append(str(d))
            elif p.name == "file":
                f = tmp / "computers.csv"
                f.write_text("PC-A,2001\n")
                out.append(str(f))
            else:
                out.append("PC-X")
    for p in cmd.params:
        if isinstance(p, click.Option) and p.required:
            out += [p.opts[0], "2001" if p.name == "uid" else "0A1B2C3D"]
    if any(isinstance(p, click.Option) and p.name == "yes" for p in cmd.params):
        out.append("--yes")
    return out


def check_plain(r, expect: set[int] | None = None) -> None:
    assert r.exit_code in EXIT_CODES, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    if expect is not None:
        assert r.exit_code in expect, (r.exit_code, r.stderr)
    if r.exit_code:
        assert r.stderr.startswith("smpfs: "), r.stderr
        assert "\n  hint: " in r.stderr, r.stderr


def check_json(r, expect: set[int] | None = None) -> dict:
    assert r.exit_code in EXIT_CODES and r.exit_code != 0, (r.exit_code, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    err = json.loads(r.stderr)["error"]
    assert set(err) == {"class", "exit", "message", "hint"}
    assert err["exit"] == r.exit_code and err["message"] and err["hint"]
    if expect is not None:
        assert r.exit_code in expect, err
    return err


def invoke(*args, input=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def test_the_walk_covers_every_command():
    assert len(COMMANDS) >= 30, IDS
    assert {"folder set", "computer import", "report", "role remove"} <= set(IDS)


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_wrong_arguments_are_usage_errors_in_the_smpfs_form(path, cmd, state, tmp_path):
    check_plain(invoke("--state", state, *path, "--no-such-option"), {2})
    check_plain(invoke("--state", state, *path, *plausible_args(cmd, tmp_path), "x1", "x2", "x3"), {2})
    err = check_json(invoke("--state", state, *path, "--json", "--no-such-option"), {2})
    assert err["class"] == "UsageError" and "--no-such-option" in err["message"]


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_every_command_takes_json(path, cmd):
    assert any(isinstance(p, click.Option) and "--json" in p.opts for p in cmd.params), " ".join(path)


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_a_state_dir_through_a_file_is_exit_3(path, cmd, tmp_path, admin):
    f = tmp_path / "a-file"
    f.write_text("")
    args = plausible_args(cmd, tmp_path)
    r = invoke("--state", f / "state", *path, *args)
    # recover, plan and site check need no state dir; log-level and umount only ask a daemon
    expect = None if path in {("recover",), ("log-level",), ("umount",), ("plan",), ("site", "check")} | CLIENT \
        else {3}
    check_plain(r, expect)
    check_json(invoke("--state", f / "state", "--json", *path, *args), expect)


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_a_non_root_uid_gets_7_for_every_admin_command(path, cmd, state, tmp_path, not_admin):
    args = plausible_args(cmd, tmp_path)
    r = invoke("--state", state, *path, *args)
    if path in NOT_ADMIN:
        check_plain(r)
        assert r.exit_code != 0
    else:
        check_plain(r, {7})
        assert check_json(invoke("--state", state, "--json", *path, *args), {7})["class"] == "PermissionDenied"


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_admin_commands_with_plausible_arguments_never_trace(path, cmd, state, tmp_path):
    if path in {("mount",), ("role", "remove")}:
        pytest.skip("mount needs FUSE; role remove is walked in its own test")
    check_plain(invoke("--state", state, *path, *plausible_args(cmd, tmp_path)))


def test_help_and_version_exit_0():
    for args in (["--help"], ["--version"], ["request", "capture", "--help"]):
        r = invoke(*args)
        assert r.exit_code == 0 and r.stdout and not r.stderr


def test_no_command_prints_help():
    r = invoke()
    assert r.exit_code in (0, 2) and "Usage" in r.stdout + r.stderr


def test_declined_confirmation_is_exit_1_with_a_hint(state):
    r = invoke("--state", state, "retire", input="n\n")
    assert r.exit_code == 1 and "smpfs: aborted" in r.stderr and "hint:" in r.stderr


def test_log_n_0_prints_nothing_and_n_minus_1_is_a_usage_error(state):
    assert invoke("--state", state, "log").stdout
    r = invoke("--state", state, "log", "-n", "0")
    assert r.exit_code == 0 and r.stdout == ""
    check_plain(invoke("--state", state, "log", "-n", "-1"), {2})


def all_keys(v) -> set:
    if isinstance(v, dict):
        return set(v).union(*(all_keys(x) for x in v.values()))
    if isinstance(v, list):
        return set().union(*(all_keys(x) for x in v))
    return set()


def test_no_internal_fields_in_json(state):
    for args in (["computer", "add", "PC-A", "--uid", "2001"], ["request", "capture", "PC-A"],
                 ["release", "capture", "PC-A"], ["retention", "run"], ["config"], ["status"],
                 ["association", "remove", "PC-A", "PC-A", "--force"]):
        r = invoke("--state", state, "--json", *args)
        assert r.exit_code == 0, r.stderr
        keys = all_keys(json.loads(r.stdout))
        assert not keys & set(cli_base.INTERNAL_FIELDS), (args, keys & set(cli_base.INTERNAL_FIELDS))
        assert "wrapped_key" not in r.stdout and "nonce_hwm" not in r.stdout


def test_admin_set_matches_the_api():
    """Every api command the CLI reaches is admin-only unless it is a migration step."""
    steps = {"request_capture", "release_capture", "request_restore", "release_restore"}
    assert api.ADMIN == frozenset(api.COMMANDS) - steps


def test_commands_that_do_not_mount_work_without_the_fuse_library(tmp_path):
    """Only the daemon needs pyfuse3: fsck, status, umount's checks and every
    admin command run on a host where it is not installed (or is broken)."""
    import subprocess
    import sys
    code = r"""
import sys
sys.modules["pyfuse3"] = None                 # as if it were not installed
from smpfs.cli import base
base.is_admin = lambda: True
from click.testing import CliRunner
from smpfs import cli
state = sys.argv[1]
for args in (["--help"], ["init", "--server", "SMP01"], ["fsck"], ["status"], ["--json", "status"],
             ["computer", "add", "PC-A", "--uid", "2001"], ["umount", "/nonexistent"]):
    r = CliRunner().invoke(cli.main, ["--state", state, *args])
    assert "pyfuse3" not in r.output + r.stderr and r.exit_code in (0, 6), (args, r.exit_code, r.stderr)
    assert "internal error" not in r.stderr, (args, r.stderr)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
