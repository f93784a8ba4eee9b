"""The network migration at a larger size, and many clients at once
(SMPFS_LONG=1; the mount tier runs the small variants)."""
from __future__ import annotations

import concurrent.futures
import time

import pytest

from smpfs.network.client import SmpClient, run_step
from smpfs.testing import SkipNoFuse
from smpfs.testnet import network_mounted, side_by_side_over_the_network


@pytest.fixture
def net_smp():
    try:
        with network_mounted() as n:
            yield n
    except SkipNoFuse as e:
        pytest.skip(str(e))


def test_a_side_by_side_migration_of_5000_files_and_1_gib_over_the_network(net_smp, seed):
    t = side_by_side_over_the_network(net_smp, files=5000, big_mib=1024, seed=seed)
    print(f"5,000 files + 1 GiB over SMB: put {t['put_s']:.1f}s, get {t['get_s']:.1f}s")


def test_sixty_computers_request_and_release_at_once(net_smp):
    n = net_smp
    computers = [n.smp.add_computer() for _ in range(60)]
    secrets = {c.name: n.secret(c) for c in computers}

    def one(c):
        cl = SmpClient(n.url, c.name, secrets[c.name], cacert=n.cacert, timeout=120)
        r = run_step(cl, "request", "capture", retries=10, retry_delay=0.5)
        run_step(cl, "release", "capture", retries=10, retry_delay=0.5)
        return r["store_id"]

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        ids = list(pool.map(one, computers, timeout=600))
    assert len(set(ids)) == 60
    print(f"60 concurrent request+release over HTTPS: {time.monotonic() - t0:.1f}s")
