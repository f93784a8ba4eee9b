"""What a local uid can do to a running SMP through its control socket and its
lifecycle calls, at the sizes a review used: the SMP keeps serving the mount
and every other computer, and stays small.

The attackers are forked children that drop to their uid and talk to
``STATE/control.sock`` directly, as a hostile client would (not through the CLI).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smpfs.testing import mounted, spawn_as

NOBODY = 65534          # a uid that is no computer


def raw_send(state, payload: bytes, timeout: float = 30) -> bytes:
    """Bytes written by hand to the control socket of the SMP in ``state`` (as a
    hostile client, or a forged request the CLI never sends); the reply line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(Path(state) / "control.sock"))
        s.sendall(payload)
        buf = b""
        while not buf.endswith(b"\n"):
            piece = s.recv(65536)
            if not piece:
                break
            buf += piece
    finally:
        s.close()
    return buf


def raw_call(state, cmd: str, args: dict, timeout: float = 30) -> dict:
    """One control request as a hostile client sends it; the reply as a dict."""
    buf = raw_send(state, json.dumps({"cmd": cmd, "args": args}).encode() + b"\n", timeout)
    return json.loads(buf) if buf.strip() else {}


def _report(fd: int, obj) -> None:
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(obj))


def _collect(pid: int, r: int, timeout: float | None = None):
    """Wait for a spawn_as child's report (json) and its exit."""
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return json.loads(text) if text else None


@contextlib.contextmanager
def fd_soft_limit(n: int):
    """Start what is started meanwhile (the daemon) at systemd's soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _hold_idle_connections(w: int, path: str, n: int, hold_r: int) -> None:
    """As a non-computer uid: open ``n`` connections, send nothing, keep them
    until the parent closes ``hold_r``'s other end."""
    socks, refused = [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(path)
        except OSError:
            refused += 1
            s.close()
            continue
        socks.append(s)
    os.write(w, json.dumps({"open": len(socks), "refused": refused}).encode() + b"\n")
    os.read(hold_r, 1)                      # until the parent is done
    for s in socks:
        s.close()
    os.close(w)


BUSY = r"refused a connection of uid \d+: too many open"


@pytest.mark.daemon_log(BUSY)
def test_a_thousand_idle_control_connections_do_not_stop_the_smp():
    with mounted() as smp:
        # the daemon starts at systemd's default soft limit (1024 open files)
        smp.umount()
        with fd_soft_limit(1024):
            smp.mount()
        pc = smp.add_computer()
        hold_r, hold_w = os.pipe()

        def attacker(w):
            os.close(hold_w)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))     # the child's own limit
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            _hold_idle_connections(w, str(smp.state / "control.sock"), 1100, hold_r)

        pid, r = spawn_as(0, attacker)
        try:
            os.close(hold_r)
            with os.fdopen(r) as f:
                held = json.loads(f.readline())
            assert held["open"] + held["refused"] == 1100
            # the mount and a computer's lifecycle call still work, promptly
            t = time.monotonic()
            store = smp.request_capture(pc)
            smp.as_uid(pc, lambda: (store / "f").write_bytes(b"still serving"))
            assert smp.as_uid(pc, lambda: (store / "f").read_bytes()) == b"still serving"
            assert smp.status()["mountpoint"] == str(smp.mountpoint)
            assert time.monotonic() - t < 20
            # the daemon's own limit was raised to the hard limit
            with open(f"/proc/{smp.daemon_pid()}/limits") as f:
                line = next(x for x in f if x.startswith("Max open files"))
            assert int(line.split()[3]) == int(line.split()[4]) > 1024, line
        finally:
            os.close(hold_w)
            os.waitpid(pid, 0)
        # the daemon survived: the mount still answers after the attacker left
        smp.umount()


def test_an_idle_control_connection_is_closed():
    with mounted() as smp:
        def idle(w):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(smp.state / "control.sock"))
            s.settimeout(60)
            t = time.monotonic()
            data = s.recv(65536)               # sends nothing; the daemon gives up on it
            _report(w, {"after": time.monotonic() - t, "reply": data.decode()})

        pid, r = spawn_as(NOBODY, idle)
        got = _collect(pid, r)
        assert got["after"] < 15, got
        assert "no request within" in got["reply"]


def _many_connections(w: int, path: str, n: int) -> None:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        socks.append(s)
    replies = []
    for s in socks:
        s.settimeout(20)
        try:
            replies.append(s.recv(65536).decode())
        except TimeoutError:
            replies.append("")
    _report(w, replies)


@pytest.mark.daemon_log(BUSY)
def test_one_uid_gets_a_bounded_number_of_control_connections():
    with mounted() as smp:
        pid, r = spawn_as(NOBODY, _many_connections, str(smp.state / "control.sock"), 40)
        replies = _collect(pid, r)
        busy = [x for x in replies if "too many open connections" in x]
        # the first 16 wait for their request (then time out); the rest are told at once
        assert len(busy) == 40 - 16, replies[:3]


# -- worker threads -----------------------------------------------------------------------------

def _capture_retrying_for_days(w: int, state) -> None:
    t = time.monotonic()
    try:
        reply = raw_call(state, "request_capture", {"retries": 600, "retry_delay": 86400}, timeout=120)
    except OSError as e:
        reply = {"oserror": str(e)}
    _report(w, {"reply": reply, "after": time.monotonic() - t})


def _write_and_fsync(path) -> float:
    t = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 100_000)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - t


@pytest.mark.daemon_log(BUSY)
def test_capture_requests_asking_to_retry_for_days_do_not_starve_fsync_or_status():
    with mounted(max_clients=1) as smp:
        holder, attacker = smp.add_computer(), smp.add_computer()
        store = smp.request_capture(holder)                 # takes the only client slot
        children = [spawn_as(attacker, _capture_retrying_for_days, smp.state) for _ in range(45)]
        try:
            time.sleep(1.0)                                 # the requests have reached the daemon
            pool = concurrent.futures.ThreadPoolExecutor(2)
            fsync = pool.submit(smp.as_uid, holder, _write_and_fsync, store / "f")
            try:
                t = time.monotonic()
                status = pool.submit(smp.status)
                assert status.result(timeout=30)["mountpoint"] == str(smp.mountpoint)
                assert time.monotonic() - t < 5
                assert fsync.result(timeout=30) < 5
            finally:
                if not fsync.done():       # a starved daemon: kill it, so the fsync returns
                    smp.kill()
                pool.shutdown()
            # nobody was kept waiting in the daemon: every request was answered
            results = [_collect(pid, r) for pid, r in children]
            children = []
            assert all(x["after"] < 10 and x["reply"].get("ok") is False for x in results), results[:2]
        finally:
            for pid, r in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.close(r)
                os.waitpid(pid, 0)


def test_capture_retries_wait_in_the_caller():
    with mounted(max_clients=1) as smp:
        holder, waiter = smp.add_computer(), smp.add_computer()
        smp.request_capture(holder)
        t = time.monotonic()
        r = smp.cli("request", "capture", "--retries", "2", "--retry-delay", "0.5", uid=waiter, check=False)
        assert r.code == 12 and 1.0 <= time.monotonic() - t < 5, (r.code, r.err)
        # the daemon takes no retry arguments: nothing can make it wait
        got = smp.as_uid(waiter, raw_call, smp.state, "request_capture", {"retries": 1, "retry_delay": 1})
        assert got["ok"] is False and got["error"]["exit_code"] == 2



# -- the audit log ------------------------------------------------------------------------------

def _db_bytes(state) -> int:
    return sum(os.path.getsize(state / n) for n in ("smp.db", "smp.db-wal") if (state / n).exists())


def test_fifty_refused_calls_with_megabyte_names_leave_smp_db_small(smp):
    before = _db_bytes(smp.state)

    def flood():
        return [raw_call(smp.state, "request_capture", {"computer": "A" * 1_000_000}) for _ in range(50)]
    replies = smp.as_uid(NOBODY, flood)
    assert all(r["ok"] is False and r["error"]["exit_code"] == 2 for r in replies), replies[0]
    assert "15 characters" in replies[0]["error"]["hint"]
    # 50 MB before; now a few WAL pages (sqlite checkpoints the WAL at 4 MB)
    assert _db_bytes(smp.state) - before < 1_000_000, (before, _db_bytes(smp.state))
    mine = [e for e in map(json.loads, smp.cli("log", "--json").out.splitlines()) if e["uid"] == NOBODY]
    # ten rows, then one row that counts the rest
    assert len(mine) == 11 and mine[-1]["action"] == "refusals", mine[-1]
    assert mine[-1]["detail"]["count"] == 40
    assert all(e["computer"] is None and len(json.dumps(e)) < 2000 for e in mine)


def test_a_newline_in_a_name_cannot_forge_a_line_of_smpfs_log(smp):
    forged = "PC1\n2026-01-01 00:00:00  #9999 uid=0 PC1 release_capture ok"
    got = smp.as_uid(NOBODY, raw_call, smp.state, "request_capture", {"computer": forged})
    assert got["ok"] is False and got["error"]["exit_code"] == 2
    # what root may still put in the log (a folder path) is escaped on output
    odd = smp.root / "odd\nname\x1b[31m"
    smp.cli("folder", "add", str(odd))
    text = smp.cli("log").out
    entries = smp.cli("log", "--json").out.splitlines()
    assert len(text.splitlines()) == len(entries)
    assert "#9999" not in text and "\x1b" not in text
    assert "odd\\x0aname\\x1b[31m" in text
    # names are NetBIOS-like: 15 characters at most
    r = smp.cli("computer", "add", "PC-0123456789ABC", "--uid", "61999", check=False)
    assert r.code == 2 and "15 characters" in r.err


# -- client slots -------------------------------------------------------------------------------

def test_one_computer_cycling_captures_cannot_take_every_client_slot():
    with mounted(max_clients=3) as smp:
        a, b, c, d = (smp.add_computer() for _ in range(4))
        for _ in range(4):                                  # whole in-place migrations, kept a day
            store = smp.request_capture(a)
            smp.as_uid(a, (store / "state").write_bytes, b"x" * 4096)
            assert smp.request_capture(a) == store          # a retried step: the same store
            smp.release_capture(a)
            smp.request_restore(a)
            smp.release_restore(a)
        smp.request_capture(a)
        smp.request_capture(a)
        smp.request_capture(b)
        smp.request_capture(c)
        folder = json.loads(smp.cli("folder", "list", "--json").out)[0]
        assert folder["clients"] == 3 and not folder["has_room"]
        kept = [s for x in smp.status()["associations"] for s in x["all_stores"] if s["status"] == "restored"]
        assert len(kept) == 4                               # a's old stores wait for their deadline
        r = smp.cli("request", "capture", uid=d, check=False)
        assert r.code == 12 and "3/3 clients" in r.err and "folder set" in r.err, (r.code, r.err)
        # b's migration finishes: its restored store frees its slot for d
        smp.release_capture(b)
        smp.request_restore(b)
        assert smp.cli("request", "capture", uid=d, check=False).code == 12   # restoring still counts
        smp.release_restore(b)
        store = smp.request_capture(d)
        smp.as_uid(d, (store / "state").write_bytes, b"y")
        assert json.loads(smp.cli("folder", "list", "--json").out)[0]["clients"] == 3


def test_mounting_from_a_directory_a_user_planted_code_in_runs_none_of_it(smp):
    """`python -m smpfs` puts the working directory first on sys.path: the
    daemon root starts must not import a `smpfs` package a user left there."""
    planted = smp.root / "planted"
    planted.mkdir()
    os.chown(planted, 47_222, 47_222)
    marker = smp.root / "ran-as-root"
    def plant(d, m):
        os.makedirs(f"{d}/smpfs")
        with open(f"{d}/smpfs/__init__.py", "w") as f:
            f.write(f"open({m!r}, 'a').write('planted code ran')\n")
        open(f"{d}/smpfs/__main__.py", "w").close()
    smp.as_uid(47_222, plant, str(planted), str(marker))
    smp.umount()
    smpfs = os.path.join(os.path.dirname(sys.executable), "smpfs")
    r = subprocess.run([smpfs, "--state", str(smp.state), "mount", str(smp.mountpoint)], cwd=planted,
                       capture_output=True, text=True, timeout=60)
    assert not marker.exists(), "the daemon imported code from the admin's working directory"
    assert r.returncode == 0, r.stderr
    assert smp.mounted
