"""A hostile local user against the network services of a running SMP: floods of
wrong logins and retried requests against the audit log, idle connections
against HTTPS's connection slots and smbd's processes, a squatted runtime
directory, and JSON nested too deep. Real mounts, real smbd and HTTPS on
127.0.0.0/8 only; every flood is bounded in count and time."""
from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_local_attacks import raw_send

from smpfs import testing
from smpfs.lifecycle.audit import REFUSAL_ROWS_PER_WINDOW, REFUSALS_PER_WINDOW
from smpfs.network.https import MAX_CONNECTIONS, MAX_PER_ADDRESS
from smpfs.testnet import NetSmp, network_mounted, smbclient_cli

NOBODY = 65534


def _basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


def _https(n, source: str = "127.0.0.1", timeout: float = 20) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", n.http_port, timeout=timeout,
                                       context=ssl.create_default_context(cafile=n.cacert),
                                       source_address=(source, 0))


def _post(conn, path: str, body: bytes, auth: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else {})


def _rows(n, since: int) -> list[dict]:
    return [e for e in n.audit() if e["id"] > since]


# -- the audit log against floods --------------------------------------------------------------

def test_a_flood_of_wrong_logins_from_many_addresses_adds_a_bounded_number_of_small_rows(net_smp_fresh):
    n = net_smp_fresh
    since = max(e["id"] for e in n.audit())
    sources = [f"127.0.0.{i}" for i in range(2, 32)]           # 30 addresses, 16 calls each
    per_source = 16
    long_name = "PC" + "x" * 3000

    def flood(source):
        conn = _https(n, source)                                # one kept-alive connection each
        statuses = []
        try:
            for i in range(per_source):
                name = long_name if i % 2 else f"NOPC-{i}"
                statuses.append(_post(conn, "/v1/request/capture", b"{}", _basic(name, "wrong"))[0])
        finally:
            conn.close()
        return statuses

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = [s for ss in pool.map(flood, sources, timeout=120) for s in ss]
    took = time.monotonic() - t0
    calls = len(sources) * per_source
    assert statuses == [401] * calls
    rows = _rows(n, since)
    print(f"{calls} wrong logins from {len(sources)} addresses in {took:.1f}s: {len(rows)} audit rows")
    assert took < 55, "the flood must fit in one refusal window for the bound below"
    assert len(rows) <= REFUSAL_ROWS_PER_WINDOW + 1, len(rows)
    assert all(len(json.dumps(r)) < 1500 for r in rows), max(rows, key=lambda r: len(json.dumps(r)))
    assert not any("x" * 30 in json.dumps(r) for r in rows), "a caller's text is clipped before it is stored"
    assert all(r["computer"] is None for r in rows if "PCxx" in json.dumps(r)), "an invalid name is no computer"
    # every refusal is accounted for: a row of its own, or counted in a refusals row
    singles = [r for r in rows if r["action"] == "authenticate"]
    counters = [r for r in rows if r["action"] == "refusals"]
    assert len(singles) + sum(r["detail"]["count"] for r in counters) == calls
    by_address = {}
    for r in singles:
        by_address[r["detail"]["address"]] = by_address.get(r["detail"]["address"], 0) + 1
    assert max(by_address.values()) <= REFUSALS_PER_WINDOW, "each address has its own small quota"
    assert all(r["uid"] is None and r["outcome"] == "denied" for r in singles + counters)
    assert any(r["detail"].get("sources") == "all" for r in counters), "beyond the global quota"
    c = n.computer()
    status, body = _post(_https(n), "/v1/request/capture", b"{}", _basic(c.name, n.secret(c)))
    assert status == 200, body


def test_a_computer_repeating_its_capture_request_adds_one_row_that_counts_the_repeats(net_smp_fresh):
    n = net_smp_fresh
    c = n.computer()
    auth = _basic(c.name, n.secret(c))
    since = max(e["id"] for e in n.audit())
    conn = _https(n)
    try:
        ids = set()
        for _ in range(90):                                 # one connection takes 100 requests
            status, body = _post(conn, "/v1/request/capture", b"{}", auth)
            assert status == 200, body
            ids.add(body["result"]["store_id"])
    finally:
        conn.close()
    assert len(ids) == 1
    rows = [r for r in _rows(n, since) if r["action"] == "request_capture"]
    assert 2 <= len(rows) <= 3, len(rows)            # the new store, then the repeats (a window may turn)
    again = [r for r in rows if r["detail"].get("existing")]
    assert sum(1 + r["detail"].get("repeats", 0) for r in again) == 89
    assert all(r["outcome"] == "ok" and r["computer"] == c.name and r["store_id"] in ids for r in rows)
    # the same for a retried restore request (in place: the computer restores its own capture)
    since = max(e["id"] for e in n.audit())
    conn = _https(n)
    try:
        assert _post(conn, "/v1/release/capture", b"{}", auth)[0] == 200
        for _ in range(40):
            status, body = _post(conn, "/v1/request/restore", b"{}", auth)
            assert status == 200 and body["result"]["store_id"] in ids, body
    finally:
        conn.close()
    rows = [r for r in _rows(n, since) if r["action"] == "request_restore"]
    assert 2 <= len(rows) <= 3, len(rows)
    assert sum(1 + r["detail"].get("repeats", 0) for r in rows) == 40


# -- JSON nested too deep ------------------------------------------------------------------------

def _nested_control_call(state: Path) -> list[dict]:
    replies = []
    for _ in range(40):
        buf = raw_send(state, b'{"cmd":"ping","args":' + b"[" * 1100 + b"\n")
        replies.append(json.loads(buf))
    return replies


def test_json_nested_too_deep_is_a_parse_error_with_no_traceback(smp):
    size = (smp.state / "smpfs.log").stat().st_size
    replies = smp.as_uid(NOBODY, _nested_control_call, smp.state)
    assert all(r["ok"] is False and r["error"]["exit_code"] == 2 for r in replies), replies[0]
    assert "malformed control request" in replies[0]["error"]["message"]
    assert "ExceptionGroup" not in json.dumps(replies) and "Recursion" not in json.dumps(replies)
    grown = (smp.state / "smpfs.log").stat().st_size - size
    assert grown < 20_000, f"40 bad requests wrote {grown} bytes of log"
    assert smp.cli("status", uid=NOBODY, check=False).code in (0, 7), "the daemon still answers"
    # (the suite fails this test if the daemon logged a traceback)


def test_https_checks_credentials_before_reading_a_nested_body(net_smp):
    n = net_smp
    c = n.computer()
    nested = b'{"computer":' + b"[" * 5000
    size = (n.smp.state / "smpfs.log").stat().st_size
    conn = _https(n)
    try:
        for _ in range(30):
            status, body = _post(conn, "/v1/request/capture", nested, None)
            assert status == 401, body                      # never parsed: no credentials
            status, body = _post(conn, "/v1/request/capture", nested, _basic(c.name, "wrong"))
            assert status == 401, body
        status, body = _post(conn, "/v1/request/capture", nested, _basic(c.name, n.secret(c)))
        assert status == 400 and "JSON" in body["error"]["message"], body
    finally:
        conn.close()
    grown = (n.smp.state / "smpfs.log").stat().st_size - size
    assert grown < 20_000, f"61 bad requests wrote {grown} bytes of log"


# -- HTTPS connection slots ----------------------------------------------------------------------

def _alive(socks) -> int:
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) != b"":
                n += 1
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def test_idle_connections_from_many_addresses_do_not_keep_a_client_out(net_smp):
    n = net_smp
    c = n.computer()
    auth = _basic(c.name, n.secret(c))
    addresses = [f"127.0.1.{i}" for i in range(1, 11)]     # 10 x 34 idle connections > MAX_CONNECTIONS
    assert len(addresses) * 34 > MAX_CONNECTIONS
    held: dict[str, list[socket.socket]] = {a: [] for a in addresses}
    stop = threading.Event()

    def hold():                                              # keep them open: reopen what the server closes
        deadline = time.monotonic() + 40
        while not stop.is_set() and time.monotonic() < deadline:
            for a in addresses:
                socks = held[a]
                alive = []
                for s in socks:
                    if _alive([s]):
                        alive.append(s)
                    else:
                        s.close()
                while len(alive) < 34:
                    s = socket.socket()
                    s.bind((a, 0))
                    try:
                        s.connect(("127.0.0.1", n.http_port))
                    except OSError:
                        s.close()
                        break
                    alive.append(s)
                held[a] = alive
            stop.wait(0.3)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        time.sleep(2)
        answered = 0
        for _ in range(20):
            conn = _https(n, timeout=10)
            try:
                status, _ = _post(conn, "/v1/request/capture", b"{}", auth)
                answered += status == 200
            except (OSError, http.client.HTTPException, ssl.SSLError):
                pass
            finally:
                conn.close()
        stop.set()
        holder.join()
        time.sleep(1)
        per_address = max(_alive(list(s)) for s in held.values())
    finally:
        stop.set()
        holder.join()
        for socks in held.values():
            for s in socks:
                s.close()
    print(f"a client among {len(addresses)} x 34 idle connections: {answered}/20 answered, "
          f"at most {per_address} left open per address")
    assert answered == 20
    assert per_address <= MAX_PER_ADDRESS


# -- smbd processes ---------------------------------------------------------------------------

def _smbd_count(n) -> int:
    """smbd and the processes it forked (its process group: the daemon starts it in its own)."""
    conf = n.smp.state / "smb" / "smb.conf"
    first = subprocess.run(["pgrep", "-o", "-f", f"smbd -s {conf}"], capture_output=True, text=True).stdout
    out = subprocess.run(["pgrep", "-g", first.strip()], capture_output=True, text=True).stdout
    return len(out.split())


def test_connections_beyond_the_smbd_process_cap_are_closed_and_a_computer_still_gets_in(monkeypatch):
    limit = 12
    monkeypatch.setenv("SMPFS_SMB_MAX_PROCESSES", str(limit))
    try:
        with network_mounted() as n:
            c = n.computer()
            share = n.client_json(c, "request", "capture")["unc"].split("\\")[3]
            base = _smbd_count(n)
            socks = []
            try:
                for _ in range(60):                          # plain TCP connects, never a logon
                    s = socket.create_connection(("127.0.0.1", n.smb_port), timeout=10)
                    socks.append(s)
                time.sleep(2)
                most = _smbd_count(n)
                print(f"smbd processes: {base} before, {most} with 60 connections open (cap {limit})")
                # smbd itself and its helpers (notifyd, cleanupd), then at most `limit` for clients
                assert 1 <= base <= 3 and most - base <= limit
            finally:
                for s in socks:
                    s.close()
            deadline = time.monotonic() + 20
            while _smbd_count(n) > base and time.monotonic() < deadline:
                time.sleep(0.2)
            out = smbclient_cli(n, c, share, "ls")
            assert "blocks available" in out
    except testing.SkipNoFuse as e:
        pytest.skip(str(e))


# -- smbd's runtime directory -----------------------------------------------------------------

def _plant(paths: list[str], target: str) -> None:
    for p in paths:
        os.symlink(target, p)


def test_a_squatted_runtime_directory_is_neither_followed_nor_fatal():
    why = testing.fuse_available()
    if why or not shutil.which("smbd", path="/usr/sbin:/usr/bin"):
        pytest.skip(why or "Samba is not installed")
    root = Path(tempfile.mkdtemp(prefix="smpfs-net-"))
    os.chmod(root, 0o711)
    n = NetSmp(testing.TestSmp(root))
    state = n.smp.state
    tag = hashlib.sha256(str(Path(state).absolute()).encode()).hexdigest()[:12]
    bait = Path(tempfile.mkdtemp(prefix="smpfs-bait-", dir="/dev/shm"))
    os.chown(bait, NOBODY, NOBODY)
    planted = [f"{b}/smpfs-smb-{tag}" for b in ("/dev/shm",)]
    made = []
    try:
        testing.as_uid(NOBODY, _plant, planted, str(bait))       # another user's symlinks, where the name was
        n.start()
        made = [p for p in Path("/dev/shm").glob("smpfs-smb-*") if p.is_dir() and not p.is_symlink()
                and p.stat().st_uid == 0 and str(p) == (state / "smb" / "rundir").read_text().strip()]
        assert len(made) == 1 and (made[0].stat().st_mode & 0o777) == 0o700
        assert sorted(os.listdir(bait)) == [], "nothing of smbd's went through the symlink"
        c = n.computer()
        share = n.client_json(c, "request", "capture")["unc"].split("\\")[3]
        assert "blocks available" in smbclient_cli(n, c, share, "ls")
    finally:
        n.stop()
        for p in planted:
            assert os.path.islink(p) and os.readlink(p) == str(bait), "another user's entry is left alone"
            os.unlink(p)
        shutil.rmtree(bait)
        shutil.rmtree(root, ignore_errors=True)
    assert made and not made[0].exists(), "the runtime directory is removed at unmount"
