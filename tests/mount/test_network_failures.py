"""When the network services cannot serve: a port another process holds, an
smbd that dies, an unmount that fails because the mount is busy. The mount
either serves what it was configured to, or says so: no dead mount, no
silent loss of SMB or HTTPS, and `smpfs status` tells the truth."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from smpfs import testing
from smpfs.lifecycle.smp import daemon_alive, fuse_mounts
from smpfs.testnet import NetSmp, authfile


@contextlib.contextmanager
def port_taken(port: int, timeout: float = 0.0):
    """Another process's listener on 127.0.0.1:port (retried for ``timeout`` s)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.bind(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                s.close()
                raise
            time.sleep(0.02)
    s.listen()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def net_config(request):
    """An SMP configured to serve SMB and HTTPS on loopback ports, not mounted."""
    why = testing.fuse_available()
    if why:
        pytest.skip(why)
    if not shutil.which("smbd", path="/usr/sbin:/usr/bin:/sbin:/bin"):
        pytest.skip("Samba is not installed")
    root = Path(tempfile.mkdtemp(prefix="smpfs-netfail-", dir=os.environ.get("SMPFS_TEST_TMP")))
    os.chmod(root, 0o711)
    n = NetSmp(testing.TestSmp(root))
    request.node._smpfs = n.smp
    try:
        n.smp.init()
        n.smp.cli("config", "--smb-port", f"127.0.0.1:{n.smb_port}", "--http", f"127.0.0.1:{n.http_port}")
        n.smp.mountpoint.mkdir()
        os.chmod(n.smp.mountpoint, 0o755)
        yield n
    finally:
        n.stop()


def smbd_of(state: Path) -> list[int]:
    """pids of the smbd processes serving this SMP (by their smb.conf)."""
    conf = str(state / "smb" / "smb.conf")
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"smbd") and conf.encode() in argv:
            out.append(int(pid))
    return out


def assert_failed_cleanly(n, res, what: str, port: int) -> None:
    assert res.code == 5, res.err
    assert res.err.count("hint:") == 1, f"one hint, not several:\n{res.err}"
    assert what in res.err and str(port) in res.err, res.err
    assert str(n.smp.mountpoint) not in fuse_mounts(), "the failed mount left a mount behind"
    assert not os.path.ismount(n.smp.mountpoint)
    assert not daemon_alive(n.smp.state) and not (n.smp.state / "daemon.json").exists()
    assert smbd_of(n.smp.state) == [], "smbd outlived the failed mount"
    log = (n.smp.state / "smpfs.log").read_text()
    for bad in ("internal error", "ExceptionGroup", "Traceback", "this is a bug"):
        assert bad not in log, f"{bad!r} in the daemon log:\n{log[-3000:]}"
    status = n.smp.status()
    assert status["mountpoint"] is None and status["dead_mount"] is None


@pytest.mark.daemon_log(r"not mounted: cannot serve HTTPS")
def test_a_taken_https_port_fails_the_mount_and_leaves_nothing_mounted(net_config):
    n = net_config
    with port_taken(n.http_port):
        res = n.smp.cli("mount", n.smp.mountpoint, check=False)
    assert_failed_cleanly(n, res, "HTTPS", n.http_port)
    n.smp.mount()                                        # the port free again: it mounts and serves
    assert n.smp.status()["http"]["serving"] is True
    n.smp.umount()


@pytest.mark.daemon_log(r"not mounted: cannot serve SMB")
def test_a_taken_smb_port_fails_the_mount_like_https(net_config):
    n = net_config
    with port_taken(n.smb_port):
        res = n.smp.cli("mount", n.smp.mountpoint, check=False)
    assert_failed_cleanly(n, res, "SMB", n.smb_port)
    n.smp.mount()
    st = n.smp.status()
    assert st["smb"]["serving"] is True and st["smb"]["pid"] in smbd_of(n.smp.state)
    n.smp.umount()


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.2)


def smb_ls(n, c, share: str) -> subprocess.CompletedProcess:
    return subprocess.run(["smbclient", f"//127.0.0.1/{share}", "-p", str(n.smb_port), "-A", authfile(n, c),
                           "-m", "SMB3", "--client-protection=encrypt", "-c", "ls"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.daemon_log(r"smbd exited \(-9\)", r"restarting smbd failed", r"smbd exited .*Can't load")
def test_status_says_when_smbd_died_and_smbd_is_restarted(net_smp_fresh):
    n = net_smp_fresh
    c = n.computer()
    share = n.smp.status()["folders"][0]["share_name"]
    st = n.smp.status()["smb"]
    assert st["serving"] is True and st["problem"] is None
    # smbd dies, and cannot start again for a while (its configuration is gone)
    conf = n.smp.state / "smb" / "smb.conf"
    conf.rename(conf.with_name("smb.conf.away"))
    try:
        os.kill(st["pid"], signal.SIGKILL)
        down = wait_for(lambda: (s := n.smp.status()["smb"])["serving"] is False and s, 20,
                        "status says SMB is down")
        assert "smbd exited" in down["problem"], down
        text = n.smp.cli("status").out
        assert "NOT SERVED" in next(line for line in text.splitlines() if line.startswith("smb:")), text
        assert smb_ls(n, c, share).returncode != 0
    finally:
        conf.with_name("smb.conf.away").rename(conf)
    # then it is restarted (with a growing delay) and serves again
    up = wait_for(lambda: (s := n.smp.status()["smb"])["serving"] and s, 60, "smbd restarted")
    assert up["pid"] != st["pid"] and up["pid"] in smbd_of(n.smp.state)
    assert "NOT SERVED" not in n.smp.cli("status").out
    r = smb_ls(n, c, share)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_busy_umount_leaves_smb_and_https_serving(net_smp_fresh):
    n = net_smp_fresh
    c = n.computer()
    share = n.smp.status()["folders"][0]["share_name"]
    user = subprocess.Popen(["sleep", "120"], cwd=n.smp.mountpoint)      # a shell sitting in the mount
    try:
        res = n.smp.cli("umount", n.smp.mountpoint, check=False)
        assert res.code == 5 and "busy" in res.err and "fuser" in res.err, res.err
        assert res.err.count("hint:") == 1 and "could not be started again" not in res.err, res.err
        assert n.smp.mounted
        st = n.smp.status()
        assert st["smb"]["serving"] is True and st["http"]["serving"] is True, (st["smb"], st["http"])
        assert "NOT SERVED" not in n.smp.cli("status").out
        # and they really serve: Request over HTTPS, a listing over SMB
        assert n.client(c, "request", "capture").code == 0
        r = smb_ls(n, c, share)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        user.kill()
        user.wait()
    n.smp.umount()                                      # nothing uses it now: unmounted, ports free
    assert not n.smp.mounted
    for port in (n.smb_port, n.http_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
