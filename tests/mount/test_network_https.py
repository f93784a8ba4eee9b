"""Request/Release over HTTPS: the real endpoint on a loopback port, the real
``smpfs client`` run as the computer's uid, and raw TLS sockets for the
hostile cases."""
from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import time

from smpfs.network.client import SmpClient


def _ctx(n):
    return ssl.create_default_context(cafile=n.cacert)


def raw_request(n, method, path, body=b"", headers=None, who=None, timeout=20):
    """One HTTPS request with http.client; returns (status, parsed JSON, headers)."""
    conn = http.client.HTTPSConnection("127.0.0.1", n.http_port, context=_ctx(n), timeout=timeout)
    h = dict(headers or {})
    if who is not None:
        name, secret = who
        h["Authorization"] = "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data else None), dict(r.getheaders())
    finally:
        conn.close()


def tls_socket(n, timeout=20):
    raw = socket.create_connection(("127.0.0.1", n.http_port), timeout=timeout)
    return _ctx(n).wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_computer_captures_and_restores_through_the_client_without_root(net_smp):
    n = net_smp
    old, new = n.computer(), n.computer()
    n.smp.associate(old, new)
    r = n.client_json(old, "request", "capture")
    assert r["status"] == "capturing" and r["computer"] == old.name
    share = r["unc"].split("\\")[3]
    assert r["unc"] == f"\\\\SMPTEST\\{share}\\{r['store_id']}"
    assert r["smb_url"] == f"smb://127.0.0.1:{n.smb_port}/{share}/{r['store_id']}"
    assert "path" not in r, "a remote computer is not told paths of the SMP host"
    again = n.client(old, "request", "capture", check=True)          # a retried step: same store
    assert again.out.strip() == r["unc"]
    out = n.client(old, "release", "capture", check=True).out           # what `smpfs release` prints
    assert out == f"Released capture of {old.name}: store {r['store_id'][:12]}… is ready for restore\n"
    res = n.client(new, "request", "restore", "--json", check=True)
    assert json.loads(res.out)["store_id"] == r["store_id"]
    out = n.client(new, "release", "restore", check=True).out
    assert re.fullmatch(rf"Released restore of {new.name}: store kept until \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\n",
                        out), out
    entries = [e for e in n.audit() if e["computer"] == old.name and e["action"] == "request_capture"]
    assert entries and all(e["detail"].get("via") == "https" and e["detail"].get("address") == "127.0.0.1"
                           for e in entries)


def test_restore_before_the_capture_is_released_exits_like_the_local_command(net_smp):
    n = net_smp
    old, new = n.computer(), n.computer()
    n.smp.associate(old, new)
    n.client(old, "request", "capture", check=True)
    remote = n.client(new, "request", "restore")
    local = n.smp.cli("request", "restore", uid=new, check=False)
    assert remote.code == local.code != 0
    assert n.client(new, "release", "restore").code == n.smp.cli("release", "restore", uid=new, check=False).code


def test_a_wrong_secret_gets_401_and_exit_7_and_is_audited_with_the_address(net_smp):
    n = net_smp
    c = n.computer()
    bad = n.smp.root / f"{c.name}.bad"
    bad.write_text("not-the-secret\n")
    os.chown(bad, c.uid, c.uid)
    res = n.client(c, "request", "capture", secret_file=str(bad))
    assert res.code == 7, res.err
    assert "secret" in res.err
    status, body, headers = raw_request(n, "POST", "/v1/request/capture", b"{}", who=(c.name, "tried-7c1f"))
    assert status == 401 and body["error"]["exit_code"] == 7
    assert headers.get("www-authenticate", "").startswith("Basic")
    status, body, _ = raw_request(n, "POST", "/v1/request/capture", b"{}")          # no credentials at all
    assert status == 401
    status, _, _ = raw_request(n, "POST", "/v1/request/capture", b"{}", who=("NOSUCHPC", "x"))
    assert status == 401, "an unknown computer is refused like a wrong secret"
    denied = [e for e in n.audit() if e["action"] == "authenticate" and e["computer"] == c.name]
    assert len(denied) >= 2
    assert all(e["outcome"] == "denied" and e["detail"]["address"] == "127.0.0.1" for e in denied)
    assert not any("tried-7c1f" in json.dumps(e) or "not-the-secret" in json.dumps(e) for e in n.audit()), \
        "a tried secret never reaches the audit log"
    assert n.client(c, "request", "capture").code == 0, "the right secret still works"


def test_a_rotated_secret_refuses_the_old_one(net_smp):
    n = net_smp
    c = n.computer()
    old = n.secret(c)
    new = n.smp.cli("computer", "secret", c.name, "--rotate").out.strip()
    assert new != old and len(new) >= 22
    assert n.secret(c) == new
    assert raw_request(n, "POST", "/v1/request/capture", b"{}", who=(c.name, old))[0] == 401
    assert raw_request(n, "POST", "/v1/request/capture", b"{}", who=(c.name, new))[0] == 200
    actions = [e["action"] for e in n.audit() if e["computer"] == c.name]
    assert "computer_secret_rotate" in actions and "computer_secret_show" in actions


def test_computer_secret_is_for_root_only(net_smp):
    n = net_smp
    c = n.computer()
    res = n.smp.cli("computer", "secret", c.name, uid=c, check=False)
    assert res.code == 7 and not res.out.strip()


def test_a_computer_cannot_act_for_another(net_smp):
    n = net_smp
    a, b = n.computer(), n.computer()
    status, body, _ = raw_request(n, "POST", "/v1/request/capture", json.dumps({"computer": b.name}).encode(),
                                  who=(a.name, n.secret(a)))
    assert status == 403 and body["error"]["exit_code"] == 7
    # the remote caller is a computer name: no uid (it has none over HTTPS), no CLI hint
    assert body["error"]["message"] == f"computer {a.name} cannot act for {b.name}", body
    assert "uid" not in json.dumps(body) and "smpfs" not in body["error"]["hint"], body
    assert n.smp.status() is not None
    assert not [s for s in n.audit() if s["action"] == "request_capture" and s["computer"] == b.name
                and s["outcome"] == "ok"]


def test_malformed_huge_and_unknown_requests_are_refused(net_smp):
    n = net_smp
    c = n.computer()
    who = (c.name, n.secret(c))
    assert raw_request(n, "POST", "/v1/request/capture", b"{not json", who=who)[0] == 400
    assert raw_request(n, "POST", "/v1/request/capture", b"[1,2]", who=who)[0] == 400
    assert raw_request(n, "POST", "/v1/request/capture", b'{"computer": 5}', who=who)[0] == 400
    assert raw_request(n, "POST", "/v1/nope", b"{}", who=who)[0] == 404
    assert raw_request(n, "GET", "/v1/request/capture", who=who)[0] == 405
    for method, body in (("GET", b""), ("POST", b"[1,2]")):         # 405, 400: the API's hint, not the CLI's
        status, answer, _ = raw_request(n, method, "/v1/request/capture", body, who=who)
        assert status in (400, 405) and "docs/network.md" in answer["error"]["hint"], answer
        assert "smpfs" not in answer["error"]["hint"] and "COMMAND" not in answer["error"]["hint"], answer
    huge = b'{"computer": "' + b"x" * (2 << 20) + b'"}'
    try:
        status = raw_request(n, "POST", "/v1/request/capture", huge, who=who)[0]
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        status = 413                                 # refused before we finished sending
    assert status == 413
    # a chunked body that grows past the limit, with no length announced
    s = tls_socket(n)
    try:
        s.sendall(b"POST /v1/request/capture HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(20):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        reply = s.recv(4096)
        assert b" 413 " in reply.split(b"\r\n")[0]
    finally:
        s.close()
    # not HTTP at all
    s = tls_socket(n)
    try:
        s.sendall(b"\x00\x01 hello there\r\n\r\n")
        assert b" 400 " in s.recv(4096).split(b"\r\n")[0]
    finally:
        s.close()
    assert raw_request(n, "GET", "/v1/info", who=who)[0] == 200, "the endpoint still serves"


def test_slow_clients_do_not_hold_up_others_and_are_cut_off(net_smp):
    n = net_smp
    c = n.computer()
    slow = []
    try:
        for _ in range(5):                                   # half a request head, then nothing
            s = tls_socket(n, timeout=30)
            s.sendall(b"POST /v1/request/capture HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        s = tls_socket(n, timeout=30)                        # a head promising a body never sent
        s.sendall(b"POST /v1/request/capture HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        slow.append(s)
        raw = socket.create_connection(("127.0.0.1", n.http_port), timeout=30)   # no TLS handshake
        slow.append(raw)
        t0 = time.monotonic()
        assert n.client(c, "request", "capture").code == 0
        assert time.monotonic() - t0 < 10, "a normal client waited on slow ones"
        # the server gives up on them (HEAD_TIMEOUT/BODY_TIMEOUT: 10 s), not the other way round
        deadline = time.monotonic() + 25
        for s in slow:
            s.settimeout(max(1.0, deadline - time.monotonic()))
            try:
                data = s.recv(4096)
            except (ConnectionResetError, ssl.SSLError, OSError):
                data = b""
            assert data == b"" or b" 408 " in data.split(b"\r\n")[0], data[:80]
        assert time.monotonic() < deadline
    finally:
        for s in slow:
            s.close()


def test_twenty_computers_request_and_release_at_once(net_smp):
    n = net_smp
    computers = [n.computer() for _ in range(20)]
    secrets = {c.name: n.secret(c) for c in computers}

    def one(c):
        cl = SmpClient(n.url, c.name, secrets[c.name], cacert=n.cacert, timeout=60)
        r = cl.step("request", "capture")
        cl.step("release", "capture")
        return r["store_id"]

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(one, computers, timeout=120))
    elapsed = time.monotonic() - t0
    assert len(set(ids)) == 20
    assert elapsed < 60, f"20 clients took {elapsed:.1f}s"
    print(f"20 concurrent request+release over HTTPS: {elapsed:.2f}s")


def test_the_client_pins_the_certificate_fingerprint(net_smp):
    n = net_smp
    c = n.computer()
    pem = open(n.cacert).read()
    der = ssl.PEM_cert_to_DER_cert(pem)
    assert n.sha256 == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    base = ["client", "request", "capture", "--smp", n.url, "--computer", c.name, "--secret-file", n.secret_file(c)]
    assert n.smp.cli(*base, "--sha256", n.sha256.replace(":", "").lower(), uid=c, check=False).code == 0
    wrong = n.smp.cli(*base, "--sha256", "00" * 32, uid=c, check=False)
    assert wrong.code == 7 and "fingerprint" in wrong.err
    untrusted = n.smp.cli(*base, uid=c, check=False)            # self-signed, no --cacert: not trusted
    assert untrusted.code == 7 and "certificate" in untrusted.err


def test_an_unreachable_smp_is_retried_then_exit_6(net_smp):
    n = net_smp
    c = n.computer()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                    # nothing listens there
    t0 = time.monotonic()
    res = n.smp.cli("client", "request", "capture", "--smp", f"https://127.0.0.1:{port}", "--computer", c.name,
                    "--secret-file", n.secret_file(c), "--cacert", n.cacert, "--retries", "2",
                    "--retry-delay", "0.3", uid=c, check=False)
    assert res.code == 6
    assert res.err.count("attempt") == 3
    assert time.monotonic() - t0 >= 0.6


def test_status_shows_the_network_services(net_smp):
    st = net_smp.smp.status()
    assert st["smb"]["port"] == net_smp.smb_port
    assert st["http"]["url"] == net_smp.url
    assert st["http"]["certificate"].endswith("tls/cert.pem")
    assert len(st["http"]["sha256"].split(":")) == 32
    text = net_smp.smp.cli("status").out
    assert net_smp.url in text and st["http"]["sha256"] in text
