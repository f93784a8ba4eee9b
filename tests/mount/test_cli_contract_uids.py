"""The CLI contract against a real, mounted SMP, as real uids: every command of
the click tree run by a non-root uid (a computer's, and one mapped to none)
gets an exit code from the README's table, never a traceback, and every admin
command gets 7, mounted or not. Plus what the admin sees of it: the audit log
names refusals ``denied`` with the computer the uid resolves to, and records
mounts, unmounts, fsck and log-level changes; restore retries wait for a
capture released meanwhile; ``role remove`` takes a mounted SMP down."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_cli_contract import COMMANDS, EXIT_CODES, IDS, NOT_ADMIN, STEPS, plausible_args  # noqa: E402

from smpfs.testing import mounted  # noqa: E402


def check(r, path, expect=None):
    assert r.code in EXIT_CODES, (path, r.code, r.err)
    assert "Traceback" not in r.out + r.err, (path, r.err)
    if expect is not None:
        assert r.code in expect, (path, r.code, r.err)
    if r.code:
        assert r.err.startswith("smpfs: ") and "\n  hint: " in r.err, (path, r.err)


@pytest.fixture(scope="module")
def walk_smp():
    with mounted() as smp:
        smp.pc = smp.add_computer("PC-WALK")
        smp.args_dir = smp.root / "args"
        smp.args_dir.mkdir()
        os.chmod(smp.args_dir, 0o777)
        yield smp


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_every_command_as_a_non_root_uid_mounted(walk_smp, path, cmd):
    smp = walk_smp
    args = plausible_args(cmd, smp.args_dir)
    for who in (smp.pc.uid, 64999):                      # a computer's uid, and a uid mapped to none
        r = smp.cli(*path, *args, uid=who, check=False)
        check(r, path, None if path in NOT_ADMIN else {7})
        rj = smp.cli("--json", *path, *args, uid=who, check=False)
        if rj.code:
            err = json.loads(rj.err)["error"]
            assert err["exit"] == rj.code and err["hint"], (path, rj.err)


def test_every_admin_command_as_a_non_root_uid_unmounted(walk_smp):
    smp = walk_smp
    smp.umount()
    try:
        for path, cmd in COMMANDS:
            r = smp.cli(*path, *plausible_args(cmd, smp.args_dir), uid=smp.pc.uid, check=False)
            check(r, path, {6} if path in STEPS else None if path in NOT_ADMIN else {7})
    finally:
        smp.mount()


def test_refusals_are_denied_and_name_the_resolved_computer(smp):
    old = smp.add_computer("PC-AUDIT")
    assert smp.cli("release", "capture", uid=old, check=False).code == 14
    assert smp.cli("status", uid=old, check=False).code == 7
    assert smp.cli("log-level", "debug", uid=old, check=False).code == 7
    entries = [json.loads(line) for line in smp.cli("log", "--json").out.splitlines()]
    refused = [e for e in entries if e["uid"] == old.uid]
    assert {e["action"] for e in refused} >= {"release_capture", "status", "log_level"}
    assert all(e["outcome"] == "denied" for e in refused), refused
    rel, = [e for e in refused if e["action"] == "release_capture"]
    assert {e["computer"] for e in refused} == {"PC-AUDIT"}   # resolved from the uid, never given


@pytest.mark.daemon_log(r"log level set to INFO")
def test_mount_umount_fsck_and_log_level_are_in_the_audit_log(smp):
    assert smp.cli("log-level", "info").code == 0
    smp.umount()
    assert smp.cli("fsck").code == 0
    smp.mount()
    actions = [(e["action"], e["outcome"]) for e in map(json.loads, smp.cli("log", "--json").out.splitlines())]
    for a in ("mount", "log_level", "umount", "fsck"):
        assert (a, "ok") in actions, (a, actions)
    assert [a for a, _ in actions].count("mount") == 2


def test_restore_retries_wait_for_a_capture_released_meanwhile(smp):
    old, new = smp.add_computer(), smp.add_computer()
    smp.associate(old, new)
    store = smp.request_capture(old)
    # the restore starts first and retries; the capture is released while it waits
    got = {}
    t = threading.Thread(target=lambda: got.update(r=smp.cli("request", "restore", "--retries", "40",
                                                              "--retry-delay", "0.25", uid=new, check=False)))
    t.start()
    time.sleep(1.5)
    smp.release_capture(old)
    t.join(60)
    r = got["r"]
    assert r.code == 0, r.err
    assert r.out.strip() == str(store) and "retry 1/40" in r.err


def test_role_remove_takes_a_mounted_smp_down_and_removes_everything():
    with mounted() as smp:
        pc = smp.add_computer()
        store = smp.request_capture(pc)
        smp.as_uid(pc, lambda: open(f"{store}/USMT.MIG", "wb").write(os.urandom(100_000)))
        folder = Path(smp.status()["folders"][0]["path"])
        r = smp.cli("role", "remove", "--yes")
        assert f"unmounted {smp.mountpoint}" in r.out and f"shredded store {store.name}" in r.out
        assert not smp.mounted and not smp.state.exists() and not folder.exists()
        assert smp.cli("status", check=False).code == 3
