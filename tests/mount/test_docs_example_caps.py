"""A capture tool that needs a capability, tested against a real, mounted SMP.

Like USMT's scanstate running as SYSTEM, this stand-in (`tar`) reads user
profiles it does not own: it runs as the computer's uid with one Linux
capability, CAP_DAC_READ_SEARCH (read any file), through `smp.run(...,
caps=[...])`. The capability opens the profiles, not the SMP: smpfs decides
access to a store by the caller's uid alone, so another computer's uid holding
the same capability still cannot read the store.
"""
import os

import pytest


def make_private_profiles(smp):
    """Two users' profiles, each readable by its owner only (0700 / 0600)."""
    home = smp.root / "home"
    for user, uid in (("alice", 3101), ("bob", 3102)):
        d = home / user / "Documents"
        d.mkdir(parents=True)
        (d / "notes.txt").write_text(f"{user}'s notes\n")
        for p in (d / "notes.txt", d, d.parent):
            os.chown(p, uid, uid)
        os.chmod(d.parent, 0o700)
        os.chmod(d, 0o700)
        os.chmod(d / "notes.txt", 0o600)
    os.chmod(home, 0o755)
    return home


def scanstate(smp, computer, home, store, caps=()):
    """Capture every profile under home into the store, as the computer's uid."""
    return smp.run(["tar", "-C", home, "-cf", f"{store}/USMT.MIG", "."], who=computer, caps=caps, check=False)


def test_capture_tool_with_a_capability(smp):
    pc, other = smp.add_computer("PC-LAB"), smp.add_computer("PC-OTHER")
    home = make_private_profiles(smp)
    store = smp.request_capture(pc)

    # without the capability, the tool cannot read the profiles
    r = scanstate(smp, pc, home, store)
    assert r.returncode != 0 and "Permission denied" in r.stderr

    # with CAP_DAC_READ_SEARCH it reads them all, and writes the store as its uid
    r = scanstate(smp, pc, home, store, caps=["dac_read_search"])
    assert r.returncode == 0, r.stderr
    listing = smp.run(["tar", "-tf", f"{store}/USMT.MIG"], who=pc).stdout
    assert "./alice/Documents/notes.txt" in listing and "./bob/Documents/notes.txt" in listing

    # the capability does not open someone else's store: smpfs checks the uid
    r = smp.run(["cat", f"{store}/USMT.MIG"], who=other, caps=["dac_read_search", "dac_override"], check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    with pytest.raises(PermissionError):
        os.listdir(store)                        # nor does root's: root administers, it does not read

    smp.release_capture(pc)
    assert smp.request_restore(pc) == store      # in-place: the same computer restores it
    r = smp.run(["tar", "-xOf", f"{store}/USMT.MIG", "./bob/Documents/notes.txt"], who=pc)
    assert r.stdout == "bob's notes\n"
