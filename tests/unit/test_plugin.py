"""The pytest plugin as a user's project sees it: a pinnable uid range, and
mounted() / the smp fixture skipping (never failing) where FUSE or root is missing."""
from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_uid_base_option_pins_the_uids(pytester):
    pytester.makepyfile("""
        from smpfs import testing
        def test_uids():
            assert [testing.next_uid() for _ in range(3)] == [70000, 70001, 70002]
    """)
    pytester.runpytest_inprocess("--smpfs-uid-base", "70000", "-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_uid_base_ini_option_pins_the_uids(pytester):
    pytester.makeini("[pytest]\nsmpfs_uid_base = 80000\n")
    pytester.makepyfile("""
        from smpfs import testing
        def test_uids():
            assert testing.next_uid() == 80000
    """)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_uid_base_out_of_range_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(): pass\n")
    r = pytester.runpytest_inprocess("--smpfs-uid-base", "5", "-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "outside" in r.stderr.str()


def test_mounted_and_the_fixture_skip_without_fuse(pytester):
    pytester.makepyfile("""
        import unittest
        import pytest
        from smpfs import testing
        from smpfs.testing import mounted

        @pytest.fixture(autouse=True)
        def no_fuse(monkeypatch):
            monkeypatch.setattr(testing, "fuse_available", lambda: "/dev/fuse is missing")

        def test_plain():
            with mounted() as smp:
                raise AssertionError("never reached")

        def test_fixture(smp):
            raise AssertionError("never reached")

        class T(unittest.TestCase):
            def test_unittest(self):
                with mounted():
                    raise AssertionError("never reached")
    """)
    r = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    r.assert_outcomes(skipped=3)
    assert "/dev/fuse is missing" in r.stdout.str()
