"""What ``smpfs client`` prints when the SMP cannot be had: as text, lines on
stderr and the error; with --json, one object only, the documented error
object of every smpfs command with the attempts beside it (stdout empty),
whether the SMP is given (--smp) or chosen from a site file (--site)."""
from __future__ import annotations

import json
import socket

import pytest
from test_cli_contract import invoke


@pytest.fixture
def nobody_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]                     # bound, never listening: connection refused


@pytest.fixture
def secret(tmp_path):
    f = tmp_path / "pc.secret"
    f.write_text("s" * 32 + "\n")
    return f


def client_args(tmp_path, port, secret, how):
    if how == "smp":
        return ["--smp", f"https://127.0.0.1:{port}"]
    site = tmp_path / "site.toml"
    site.write_text(f'[smp.ONE]\nurl = "https://127.0.0.1:{port}"\nsha256 = "{"AB:" * 31}AB"\n'
                    '[group.ALL]\nranges = ["127.0.0.0/8"]\nsmps = ["ONE"]\n')
    return ["--site", site]


@pytest.mark.parametrize("how", ["smp", "site"])
def test_with_json_a_failure_is_one_error_object_on_stderr_with_the_attempts(tmp_path, nobody_listens, secret,
                                                                               how):
    where = client_args(tmp_path, nobody_listens, secret, how)
    for step in (["request", "capture"], ["release", "restore"]):
        r = invoke("client", *step, *where, "--computer", "PC-A", "--secret-file", secret, "--retries", "1",
                   "--retry-delay", "0", "--timeout", "2", "--json")
        assert r.exit_code == 6 and r.stdout == "", (r.stdout, r.stderr)
        obj = json.loads(r.stderr)                   # one object: nothing else on stderr
        assert set(obj) == {"error", "attempts"}, obj
        assert set(obj["error"]) == {"class", "exit", "message", "hint"}
        assert obj["error"]["exit"] == 6 and obj["error"]["class"] in ("Unreachable", "NotMountedError")
        assert len([a for a in obj["attempts"] if a.get("outcome") not in (None, "ok")]) == 2, obj["attempts"]


@pytest.mark.parametrize("how", ["smp", "site"])
def test_as_text_each_attempt_is_a_line_then_the_error(tmp_path, nobody_listens, secret, how):
    where = client_args(tmp_path, nobody_listens, secret, how)
    r = invoke("client", "request", "capture", *where, "--computer", "PC-A", "--secret-file", secret,
               "--retries", "1", "--retry-delay", "0", "--timeout", "2")
    assert r.exit_code == 6 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert all(line.startswith(("smpfs: ", "  hint: ")) for line in lines), lines
    assert lines[-1].startswith("  hint: ") and len(lines) >= 4, lines


def test_local_request_retries_with_json_leave_one_error_object_on_stderr(tmp_path, monkeypatch):
    from smpfs.cli import base as cli_base
    monkeypatch.setattr(cli_base, "is_admin", lambda: True)
    state = tmp_path / "state"
    assert invoke("--state", state, "init", "--server", "SMP01").exit_code == 0
    assert invoke("--state", state, "computer", "add", "PC-NEW", "--uid", "2002").exit_code == 0
    args = ["request", "restore", "PC-NEW", "--retries", "2", "--retry-delay", "0"]
    r = invoke("--state", state, "--json", *args)
    assert r.exit_code == 15 and r.stdout == ""
    obj = json.loads(r.stderr)
    assert set(obj["error"]) == {"class", "exit", "message", "hint"} and obj["error"]["exit"] == 15
    assert [a["attempt"] for a in obj["attempts"]] == [1, 2] and obj["attempts"][0]["exit"] == 15
    r = invoke("--state", state, *args)                     # as text: a line per retry, then the error
    assert r.exit_code == 15 and r.stderr.count("; retry ") == 2 and "\n  hint: " in r.stderr
