"""Integration tests of a migration tool against a real, mounted SMP.

The tool under test here is a stand-in: `tar` captures a user profile into
USMT/USMT.MIG and restores it, run as each computer's own uid. Replace the
two commands in scanstate() and loadstate() with your own tool.
"""
import errno
import os
import unittest

import pytest

from smpfs.testing import mounted


def scanstate(smp, computer, profile, store):
    """Capture: run the tool as the source computer's uid, writing into the store."""
    smp.run(["mkdir", f"{store}/USMT"], who=computer)
    smp.run(["tar", "-C", profile, "-cf", f"{store}/USMT/USMT.MIG", "."], who=computer)


def loadstate(smp, computer, store, target):
    """Restore: run the tool as the destination computer's uid, reading the store."""
    smp.run(["tar", "-C", target, "-xf", f"{store}/USMT/USMT.MIG"], who=computer)


def make_profile(smp):
    """A small user profile in smp.root (a temporary dir every uid can traverse)."""
    profile = smp.root / "profile"
    (profile / "Documents").mkdir(parents=True)
    (profile / "Documents" / "report.txt").write_text("quarterly numbers\n")
    (profile / "mailbox.pst").write_bytes(os.urandom(3 << 20))
    smp.run(["chmod", "-R", "a+rX", profile])     # the tool runs as another uid
    return profile


def test_side_by_side_migration(smp):
    old, new = smp.add_computer("PC-OLD"), smp.add_computer("PC-NEW")   # each gets a fresh uid
    smp.associate(old, new)
    profile = make_profile(smp)

    # Request State Store, Capture User State, Release State Store: as PC-OLD
    store = smp.request_capture(old)
    scanstate(smp, old, profile, store)
    # while capturing, nobody but PC-OLD gets in: not PC-NEW, not root
    with pytest.raises(PermissionError):
        smp.as_uid(new, os.listdir, store)
    with pytest.raises(PermissionError):
        os.listdir(store)
    smp.release_capture(old)

    # Request State Store, Restore User State: as PC-NEW
    assert smp.request_restore(new) == store
    target = smp.root / "restored"
    target.mkdir()
    os.chown(target, new.uid, new.uid)
    loadstate(smp, new, store, target)
    assert (target / "Documents" / "report.txt").read_text() == "quarterly numbers\n"
    assert (target / "mailbox.pst").read_bytes() == (profile / "mailbox.pst").read_bytes()

    # the released store is read-only for PC-NEW and closed to PC-OLD
    with pytest.raises(OSError) as e:
        smp.as_uid(new, lambda: open(f"{store}/USMT/extra", "w"))
    assert e.value.errno == errno.EROFS
    with pytest.raises(PermissionError):
        smp.as_uid(old, os.listdir, store)
    # refusals come back as CLI failures with the documented exit code
    r = smp.cli("release", "capture", uid=old, check=False)
    assert r.code == 14 and "no capture to release" in r.err

    # Release State Store: the retention timer (default: 1 day) starts
    smp.release_restore(new)
    assert smp.advance("23h") == []                 # fast-forward: nothing due yet
    deleted = smp.advance("2h")
    assert [d["store_id"] for d in deleted] == [store.name]
    assert not os.path.exists(store)
    assoc, = smp.status()["associations"]
    assert (assoc["source"], assoc["dest"], assoc["status"]) == ("PC-OLD", "PC-NEW", "deleted")


class InPlaceRefreshTest(unittest.TestCase):
    """The same helpers without pytest fixtures: smpfs.testing.mounted()."""

    def test_in_place_refresh(self):
        with mounted() as smp:
            pc = smp.add_computer()
            store = smp.request_capture(pc)      # no association: an in-place one is made
            smp.as_uid(pc, lambda: open(f"{store}/USMT.MIG", "wb").write(b"user state"))
            smp.release_capture(pc)
            self.assertEqual(smp.request_restore(pc), store)
            data = smp.as_uid(pc, lambda: open(f"{store}/USMT.MIG", "rb").read())
            self.assertEqual(data, b"user state")
            with self.assertRaises(OSError) as e:   # read-only once released
                smp.as_uid(pc, lambda: os.remove(f"{store}/USMT.MIG"))
            self.assertEqual(e.exception.errno, errno.EROFS)
