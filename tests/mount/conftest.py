"""Fixtures of the mount tier: a mounted SMP that also serves SMB and HTTPS
on loopback ports (smpfs.testnet)."""
from __future__ import annotations

import pytest

from smpfs.testing import SkipNoFuse
from smpfs.testnet import network_mounted


@pytest.fixture(scope="module")
def net_smp():
    """One networked SMP per test module; give each test its own computers."""
    try:
        with network_mounted() as n:
            yield n
    except SkipNoFuse as e:
        pytest.skip(str(e))


@pytest.fixture
def net_smp_fresh(request):
    """A networked SMP of the test's own."""
    try:
        with network_mounted() as n:
            request.node._smpfs = n.smp
            yield n
    except SkipNoFuse as e:
        pytest.skip(str(e))
