"""What an error tells the user to do next, and what it never repeats.

A usage error's hint names the command click resolved (``smpfs folder add``),
not words picked out of the command line: an option's value is not a command,
and the value of ``recover --key`` is the store's only secret. No error, hint
or JSON error object repeats an option's value or a secret file's contents,
for any command of the tree. ``smpfs`` (or a group) alone prints its help.
"""
from __future__ import annotations

import json

import click
import pytest
from test_cli_contract import COMMANDS, IDS, invoke, plausible_args

KEY = "3E13C08D-5A1F22B7-90C4D1E6-7B3A9F02-C5E8D4A1-6F2B7C93-0D4E8A15-9E537882"


def hint(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    return r.stderr.split("\n  hint: ", 1)[1]


def test_a_usage_error_hint_names_the_resolved_command_and_never_the_key(tmp_path):
    r = invoke("recover", "--key", KEY, tmp_path / "bad", tmp_path / "out")
    assert "see `smpfs recover --help`" in hint(r)
    assert KEY not in r.stdout + r.stderr and "9E537882" not in r.stderr


def test_an_option_value_before_the_command_is_not_taken_for_a_command(tmp_path):
    r = invoke("--state", tmp_path / "x", "folder", "add", tmp_path / "p", "--max-clients", "abc")
    assert "see `smpfs folder add --help`" in hint(r)
    assert "'--max-clients'" in r.stderr and "abc" not in r.stderr and str(tmp_path / "x") not in r.stderr


def test_an_unknown_command_is_not_offered_as_one():
    r = invoke("frobnicate")
    assert "No such command" in r.stderr
    assert hint(r).startswith("see `smpfs --help`") and "frobnicate --help" not in r.stderr
    r = invoke("folder", "frobnicate")
    assert hint(r).startswith("see `smpfs folder --help`")


def test_a_default_hint_names_the_command_that_ran(tmp_path):
    r = invoke("client", "request", "capture", "--computer", "PC-A", "--secret-file", tmp_path / "none",
               "--smp", "https://127.0.0.1:9")
    assert r.exit_code == 2 and "COMMAND" not in r.stderr, r.stderr
    assert "smpfs client request --help" in r.stderr


@pytest.mark.parametrize("args", [[], ["--json"], ["folder"], ["client"], ["request"]])
def test_a_command_group_alone_prints_its_help_on_stdout_and_exits_0(args):
    r = invoke(*args)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("Usage: smpfs") and "Commands:" in r.stdout and not r.stderr


def value_options(cmd: click.Command):
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.is_flag and p.name != "state"]


def marked_args(cmd: click.Command, tmp, n: int) -> tuple[list[str], list[str]]:
    """Every option that takes a value, given one no output may repeat: a marker
    as the value, or for a file option a file whose contents are the marker."""
    args, marks = [], []
    for i, p in enumerate(value_options(cmd)):
        mark = f"Zq{n}x{i}SECRETVALUE"
        if isinstance(p.type, click.Path):
            f = tmp / f"opt-{n}-{i}"
            f.write_text(mark + "\n")
            args += [p.opts[0], str(f)]
        else:
            args += [p.opts[0], mark]
        marks.append(mark)
    return args, marks


#: the commands with an option that takes a value (the others have nothing to repeat)
VALUED = [(p, c) for p, c in COMMANDS if list(value_options(c))]


def test_the_value_walk_covers_the_commands_with_secrets():
    assert {"recover", "computer add", "client request"} <= {" ".join(p) for p, _ in VALUED}


@pytest.mark.parametrize("path,cmd", VALUED, ids=[" ".join(p) for p, _ in VALUED])
def test_no_error_repeats_an_option_value_or_a_secret_files_contents(path, cmd, state, tmp_path):
    n = IDS.index(" ".join(path))
    opts, marks = marked_args(cmd, tmp_path, n)
    assert marks
    plausible = plausible_args(cmd, tmp_path)
    required = {o for p in cmd.params if isinstance(p, click.Option) and p.required for o in p.opts}
    plausible = [a for i, a in enumerate(plausible)
                 if a not in required and (i == 0 or plausible[i - 1] not in required)]
    for tail in (["x1", "x2", "x3"], ["--no-such-option"], []):
        for json_flag in ([], ["--json"]):
            args = ["--state", state, *json_flag, *path, *opts, *plausible, *tail]
            r = invoke(*args)
            out = r.stdout + r.stderr
            for m in marks:
                assert m not in (out if r.exit_code else r.stderr), (args, r.exit_code, out)
            if r.exit_code and json_flag:
                json.loads(r.stderr)


def test_recover_with_a_key_that_opens_nothing_does_not_repeat_it(tmp_path):
    store = tmp_path / ("ab" * 32)
    store.mkdir()
    for key in (KEY, "not-a-key-" + KEY[:20]):
        for args in (["recover", "--key", key, store, tmp_path / "out"],
                     ["--json", "recover", "--key", key, store, tmp_path / "out"]):
            r = invoke(*args)
            assert r.exit_code != 0
            assert key not in r.stdout + r.stderr and KEY[-8:] not in r.stderr, r.stderr


def test_a_secret_file_the_client_cannot_use_is_not_repeated(tmp_path):
    secret = tmp_path / "pc.secret"
    secret.write_text("Zq-short secret with spaces\n")
    for args in (["client", "request", "capture", "--smp", "https://127.0.0.1:9", "--computer", "PC-A",
                  "--secret-file", secret, "--timeout", "2"],
                 ["client", "request", "capture", "--smp", "https://127.0.0.1:9", "--computer", "PC-A",
                  "--secret-file", secret, "--timeout", "2", "--json"]):
        r = invoke(*args)
        assert r.exit_code != 0 and "Zq-short" not in r.stdout + r.stderr, r.stderr


# -- hints a computer can follow --------------------------------------------------------

OLD, NEW = 1001, 1002
ROOT_ONLY = ("smpfs status", "smpfs association list", "smpfs log", "smpfs key")


@pytest.fixture
def migration(tmp_path):
    from smpfs.lifecycle import api
    from smpfs.lifecycle.smp import Smp
    s = Smp.init(tmp_path / "state", server="SMP01")
    for name, uid in (("PC-OLD", OLD), ("PC-NEW", NEW)):
        api.dispatch(s, 0, "computer_add", {"name": name, "uid": uid})
    api.dispatch(s, 0, "associate", {"source": "PC-OLD", "dest": "PC-NEW"})
    yield s, lambda uid, cmd: api.dispatch(s, uid, cmd, {})
    s.close()


def refusal(step, exit_code):
    from smpfs.errors import SmpError
    with pytest.raises(SmpError) as e:
        step()
    assert e.value.exit_code == exit_code, e.value
    return e.value.hint


def followable(hint: str) -> str:
    """A hint a computer's uid is told must not send it to a root-only command as its step."""
    head = hint.split("(the SMP admin")[0]
    assert not any(cmd in head for cmd in ROOT_ONLY), hint
    return hint


def test_a_second_release_tells_the_computer_what_comes_next_not_a_root_command(migration):
    s, step = migration
    step(OLD, "request_capture")
    step(OLD, "release_capture")
    hint = followable(refusal(lambda: step(OLD, "release_capture"), 14))
    assert "already" in hint or "nothing to do" in hint and "PC-NEW" in hint
    step(NEW, "request_restore")
    step(NEW, "release_restore")
    hint = followable(refusal(lambda: step(NEW, "release_restore"), 14))
    assert "nothing to do" in hint and "request restore" not in hint


def test_release_restore_by_the_source_names_the_destination_not_a_request_that_fails(migration):
    s, step = migration
    step(OLD, "request_capture")
    step(OLD, "release_capture")
    hint = followable(refusal(lambda: step(OLD, "release_restore"), 14))
    assert "smpfs request restore PC-OLD" not in hint and "PC-NEW" in hint, hint
    # what the old hint offered fails: PC-OLD is no destination
    refusal(lambda: step(OLD, "request_restore"), 15)
    # the destination, before the capture is released: release the capture first, then request
    s2_hint = followable(refusal(lambda: step(NEW, "release_restore"), 14))
    assert "request restore" in s2_hint


def test_a_restore_requested_too_early_is_told_what_to_wait_for(migration):
    s, step = migration
    followable(refusal(lambda: step(NEW, "request_restore"), 15))
    step(OLD, "request_capture")
    hint = followable(refusal(lambda: step(NEW, "release_restore"), 14))
    assert "PC-OLD must release its capture first" in hint


@pytest.mark.parametrize("cmd", [["init", "--server", "SMP02"], ["folder", "add", "{tmp}/f"],
                                 ["folder", "set", "{tmp}/f"]])
def test_a_bad_minimum_free_space_hint_names_both_forms(cmd, state, tmp_path):
    args = [a.format(tmp=tmp_path) for a in cmd]
    where = ["--state", tmp_path / "fresh"] if cmd[0] == "init" else ["--state", state]
    if cmd[:2] == ["folder", "set"]:
        assert invoke(*where, "folder", "add", args[2]).exit_code == 0
    r = invoke(*where, *args, "--min-free", "5XB")
    assert r.exit_code == 2 and "5XB" not in r.stderr, r.stderr
    assert "10%" in hint(r) and "500MB" in hint(r), r.stderr
