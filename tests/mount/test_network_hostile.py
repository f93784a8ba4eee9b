"""A hostile local user against the network services of a running SMP: floods of
wrong logins and retried requests against the audit log, idle connections
against HTTPS's connection slots and smbd's processes, a squatted runtime
directory, and JSON nested too deep. Real mounts, real smbd and HTTPS on
127.0.0.0/8 only; every flood is bounded in count and time."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import ssl
import time

from smpfs.lifecycle.audit import REFUSAL_ROWS_PER_WINDOW, REFUSALS_PER_WINDOW

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
