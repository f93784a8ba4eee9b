"""mount(8)/fstab helper and systemd integration (Type=notify, SIGTERM)."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from smpfs.errors import UsageError
from smpfs.mount import helper as mounthelper
from smpfs.testing import TestSmp, _traversable_tmpdir, fuse_available

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))
HELPER = Path(sys.executable).parent / "mount.fuse.smpfs"


@pytest.fixture
def unmounted():
    smp = TestSmp(_traversable_tmpdir("smpfs-sys-"))
    smp.init()
    smp.mountpoint.mkdir()
    try:
        yield smp
    finally:
        smp.teardown()


def test_mount_helper_parses_fstab_options():
    assert mounthelper.parse(["/var/lib/smpfs", "/srv/smp", "-o", "rw,_netdev,noauto,debug"]) == \
        ("/var/lib/smpfs", "/srv/smp", {"debug": True})
    with pytest.raises(UsageError, match="unknown smpfs mount option"):
        mounthelper.parse(["/s", "/m", "-o", "bogus"])
    with pytest.raises(UsageError):
        mounthelper.parse(["/s"])


def test_mount_helper_mounts_like_mount8_would(unmounted):
    smp = unmounted
    r = subprocess.run([str(HELPER), str(smp.state), str(smp.mountpoint), "-o", "rw,defaults,_netdev"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert smp.mounted
    fstype = [ln.split()[2] for ln in open("/proc/mounts") if ln.split()[1] == str(smp.mountpoint)]
    assert fstype == ["fuse.smpfs"]
    smp.umount()
    assert not smp.mounted
    r = subprocess.run([str(HELPER), str(smp.state), str(smp.mountpoint), "-o", "nosuchopt"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nosuchopt" in r.stderr


def test_systemd_notify_and_clean_stop_on_sigterm(unmounted):
    smp = unmounted
    sock_path = smp.root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), INVOCATION_ID="test")
    proc = subprocess.Popen([sys.executable, "-m", "smpfs", "--state", str(smp.state), "mount",
                             "--foreground", str(smp.mountpoint)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert b"READY=1" in sock.recv(4096)
        assert smp.mounted
        # a store with data written, then SIGTERM as systemd's stop would send
        comp = smp.add_computer()
        store = smp.request_capture(comp)
        smp.as_uid(comp, lambda: open(f"{store}/f", "wb").write(b"kept" * 1000))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert b"STOPPING=1" in sock.recv(4096)
        assert not smp.mounted
        out = proc.stdout.read().decode()
        assert "unmounted" in out            # logged to stderr, i.e. the journal
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    smp.mount()
    assert smp.as_uid(comp, lambda: open(f"{store}/f", "rb").read()) == b"kept" * 1000
    smp.umount()


@pytest.mark.daemon_log(r"log level set to")
def test_log_level_changes_a_running_daemon_and_is_for_root_only(smp):
    r = smp.cli("log-level", "debug")
    assert "log level: debug" in r.out
    log = (smp.state / "smpfs.log").read_text()
    assert "log level set to DEBUG" in log
    comp = smp.add_computer()
    denied = smp.cli("log-level", "info", uid=comp, check=False)
    assert denied.code == 7 and "root" in denied.err
    assert smp.cli("log-level", "info").out.strip() == "log level: info"
    bad = smp.cli("log-level", "loud", check=False)
    assert bad.code == 2
    # the log and daemon.json are for root alone
    assert (smp.state / "smpfs.log").stat().st_mode & 0o077 == 0


def _smpfs(*args):
    return subprocess.run([sys.executable, "-m", "smpfs", *map(str, args)], capture_output=True, text=True)


def test_mount_and_umount_refuse_with_clear_errors(smp):
    other = smp.root / "other-mnt"
    other.mkdir()
    # a mountpoint that does not exist
    r = _smpfs("--state", smp.state, "mount", smp.root / "nowhere")
    assert r.returncode == 5 and "does not exist" in r.stderr
    # the same SMP a second time, elsewhere
    r = _smpfs("--state", smp.state, "mount", other)
    assert r.returncode == 5 and "already mounted" in r.stderr
    assert not os.path.ismount(other)
    # another SMP onto a busy mountpoint
    second = smp.root / "second-state"
    assert _smpfs("--state", second, "init").returncode == 0
    r = _smpfs("--state", second, "mount", smp.mountpoint)
    assert r.returncode == 5 and "busy" in r.stderr
    # a state dir that is not there
    r = _smpfs("--state", smp.root / "no-state", "mount", other)
    assert r.returncode == 3 and "does not exist" in r.stderr
    # umount while a computer still holds a file open: refused, the mount stays
    comp = smp.add_computer()
    store = smp.request_capture(comp)
    from smpfs.testing import HeldFile
    with HeldFile(comp, store / "open-file", os.O_CREAT | os.O_WRONLY):
        r = _smpfs("--state", smp.state, "umount", smp.mountpoint)
        assert r.returncode == 5 and "busy" in r.stderr
        assert smp.mounted
    smp.umount()
    assert not smp.mounted
    r = _smpfs("--state", smp.state, "umount", smp.mountpoint)
    assert r.returncode == 6 and "not mounted" in r.stderr
