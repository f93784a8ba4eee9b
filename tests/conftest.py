"""Shared by every tier: markers, seeds, and the daemon-log check of mount tests.

Tiers (each a directory, each a marker set here):

* ``tests/unit``  -- no root, no FUSE: crypto, store, lifecycle, CLI parsing.
  ``tools/test.sh unit`` runs it as any user in seconds.
* ``tests/mount`` -- real FUSE mounts, as root, acting as other uids.
* ``tests/long``  -- soak and long conformance runs; they run only with
  ``SMPFS_LONG=1`` (skipped otherwise).

Like S3QL's suite, a mount test fails if a daemon it started logged a
warning, an error or a traceback that the test did not declare with
``@pytest.mark.daemon_log(r"regex", ...)``.
"""
from __future__ import annotations

import os
import random
import re

import pytest

from smpfs import testing

TIERS = ("unit", "mount", "long")


def pytest_configure(config):
    config.addinivalue_line("markers", "unit: no root and no FUSE needed")
    config.addinivalue_line("markers", "mount: mounts real FUSE filesystems as root")
    config.addinivalue_line("markers", "long: soak/long runs, only with SMPFS_LONG=1")
    config.addinivalue_line("markers", "daemon_log(*patterns): daemon log lines (warnings, errors) "
                                       "this test expects; any other fails it")
    config.addinivalue_line("markers", "min_count(n): the test adds what it checked to its module's "
                                       "TALLY['n'] and fails if that is below n")


def pytest_collection_modifyitems(config, items):
    long_on = bool(os.environ.get("SMPFS_LONG"))
    for item in items:
        parts = item.nodeid.split("/")
        tier = parts[1] if len(parts) > 2 and parts[0] == "tests" and parts[1] in TIERS else None
        if tier:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "long" and not long_on:
            item.add_marker(pytest.mark.skip(reason="long tier: set SMPFS_LONG=1"))


def _check_logs(smps, allowed: list[re.Pattern]) -> list[str]:
    bad = []
    for s in smps:
        for line in s.log_problems():
            if not any(p.search(line) for p in allowed):
                bad.append(line)
    return bad


@pytest.fixture(autouse=True)
def _daemon_log_clean(request):
    """Fail the test if a daemon logged a problem it did not declare."""
    first = len(testing.created)
    before = list(testing.created)
    for s in before:                       # module-scoped SMPs: only what this test adds
        s.log_problems()
    yield
    if request.node.get_closest_marker("unit"):
        return
    allowed = [re.compile(p) for m in request.node.iter_markers("daemon_log") for p in m.args]
    bad = _check_logs(before + testing.created[first:], allowed)
    if bad:
        pytest.fail("the daemon logged problems this test did not expect (declare them with "
                    "@pytest.mark.daemon_log):\n" + "\n".join(bad[:30]), pytrace=False)


@pytest.fixture
def seed(request):
    """A random seed, printed on failure; ``SMPFS_SEED=N`` replays one."""
    s = os.environ.get("SMPFS_SEED")
    value = int(s) if s else random.SystemRandom().randrange(1 << 32)
    request.node.user_properties.append(("seed", value))
    print(f"seed: {value}  (replay: SMPFS_SEED={value} pytest {request.node.nodeid})")
    return value


@pytest.fixture(autouse=True)
def _min_count(request):
    """A count or coverage test (``@pytest.mark.min_count(N)``) adds what it
    checked to its module's ``TALLY["n"]``; it fails below N (a run that
    quietly checked less -- an early return, a loop that lost its cases --
    does not pass). Set ``SMPFS_SHOW_COUNTS=1`` to print each count."""
    mark = request.node.get_closest_marker("min_count")
    if mark is None:
        yield
        return
    tally = request.module.TALLY
    before = tally["n"]
    yield
    got = tally["n"] - before
    if os.environ.get("SMPFS_SHOW_COUNTS"):
        print(f"\ncount {request.node.name}: {got} (minimum {mark.args[0]})")
    if got < mark.args[0]:
        pytest.fail(f"{request.node.name} checked {got}, below its minimum of {mark.args[0]}", pytrace=False)
