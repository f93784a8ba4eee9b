"""The state stores over SMB: the real smbd that the mount runs, on a loopback
port, used with real clients (``smbclient`` and the ``smbprotocol`` package),
Request/Release over HTTPS with ``smpfs client``."""
from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

smbclient = pytest.importorskip("smbclient", reason="pip install smbprotocol (the test extras)")
from smpfs.testnet import authfile, side_by_side_over_the_network  # noqa: E402

MiB = 1 << 20
STATUS = {0xC0000022: "ACCESS_DENIED", 0xC000006D: "LOGON_FAILURE", 0xC00000A2: "WRITE_PROTECTED",
          0xC0000034: "NOT_FOUND", 0xC00000CC: "BAD_NETWORK_NAME"}


class Smb:
    """One SMB user (its own connections) on the test SMP."""

    def __init__(self, n, user: str, password: str):
        self.kw = dict(username=user, password=password, port=n.smb_port, connection_cache={},
                       encrypt=True, connection_timeout=20)

    def unc(self, result: dict, *rest: str) -> str:
        parts = [p for p in result["unc"].split("\\") if p]
        return "\\\\127.0.0.1\\" + "\\".join(parts[1:] + list(rest))

    def write(self, path, data: bytes) -> None:
        with smbclient.open_file(path, mode="wb", **self.kw) as f:
            f.write(data)

    def read(self, path) -> bytes:
        with smbclient.open_file(path, mode="rb", **self.kw) as f:
            return f.read()

    def listdir(self, path):
        return smbclient.listdir(path, **self.kw)

    def close(self):
        for conn in list(self.kw["connection_cache"].values()):
            try:
                conn.disconnect(True)
            except Exception:  # noqa: BLE001  (already gone)
                pass


def outcome(fn) -> str:
    """'ok', or the NT status an SMB call was refused with."""
    from smbprotocol.exceptions import SMBOSError
    try:
        fn()
        return "ok"
    except SMBOSError as e:
        return STATUS.get(e.ntstatus, hex(e.ntstatus or 0))


@pytest.fixture
def users(net_smp):
    made = []

    def make(c, password=None):
        u = Smb(net_smp, c if isinstance(c, str) else c.name, password or net_smp.secret(c))
        made.append(u)
        return u
    yield make
    for u in made:
        u.close()


def _share(result) -> str:
    return result["unc"].split("\\")[3]


def test_the_access_table_holds_over_smb_cell_by_cell(net_smp, users):
    n = net_smp
    src, dst, other = n.computer(), n.computer(), n.computer()
    n.smp.associate(src, dst)
    r = n.client_json(src, "request", "capture")
    s_src, s_dst, s_other = users(src), users(dst), users(other)
    f = s_src.unc(r, "USMT.MIG")
    # capture: the source reads and writes; the destination and a third computer get nothing
    assert outcome(lambda: s_src.write(f, b"state")) == "ok"
    assert outcome(lambda: smbclient.mkdir(s_src.unc(r, "dir"), **s_src.kw)) == "ok"
    assert s_src.read(f) == b"state" and sorted(s_src.listdir(s_src.unc(r))) == ["USMT.MIG", "dir"]
    for who in (s_dst, s_other):
        assert outcome(lambda w=who: w.read(f)) == "ACCESS_DENIED"
        assert outcome(lambda w=who: w.listdir(w.unc(r))) == "ACCESS_DENIED"
        assert outcome(lambda w=who: w.write(w.unc(r, "x"), b"x")) == "ACCESS_DENIED"
    # what the FUSE layer saw: the file belongs to the source's own uid (no force user)
    path = n.smp.mountpoint / _share(r) / r["store_id"] / "USMT.MIG"
    assert n.smp.as_uid(src, lambda: os.stat(path).st_uid) == src.uid
    n.client(src, "release", "capture", check=True)
    # released: the source is out, the destination waits for its restore request
    assert outcome(lambda: s_src.read(f)) == "ACCESS_DENIED"
    assert outcome(lambda: s_src.write(f, b"late")) in ("ACCESS_DENIED", "WRITE_PROTECTED")
    n.client(dst, "request", "restore", check=True)
    assert s_dst.read(f) == b"state", "the destination reads after the release"
    assert outcome(lambda: s_dst.write(f, b"changed")) in ("WRITE_PROTECTED", "ACCESS_DENIED")
    assert outcome(lambda: s_dst.write(s_dst.unc(r, "new"), b"x")) in ("WRITE_PROTECTED", "ACCESS_DENIED")
    assert outcome(lambda: smbclient.remove(f, **s_dst.kw)) in ("WRITE_PROTECTED", "ACCESS_DENIED")
    assert s_dst.read(f) == b"state"
    for who in (s_src, s_other):
        assert outcome(lambda w=who: w.read(f)) == "ACCESS_DENIED"
    n.client(dst, "release", "restore", check=True)
    assert outcome(lambda: s_other.read(f)) == "ACCESS_DENIED"


def test_logons_only_for_computers_with_their_current_secret(net_smp, users):
    n = net_smp
    c = n.computer()
    r = n.client_json(c, "request", "capture")
    good = users(c)
    assert outcome(lambda: good.write(good.unc(r, "f"), b"1")) == "ok"
    wrong = users(c.name, "not-its-secret")
    assert outcome(lambda: wrong.listdir(wrong.unc(r))) == "LOGON_FAILURE"
    for user in ("root", "daemon", "nobody", "NOSUCHPC"):            # host users that are no computer
        u = users(user, "x")
        assert outcome(lambda u=u: u.listdir(u.unc(r))) == "LOGON_FAILURE"
    old = n.secret(c)
    new = n.smp.cli("computer", "secret", c.name, "--rotate").out.strip()
    time.sleep(0.5)                                          # the passdb follows at once; allow the pdbedit run
    stale = users(c.name, old)
    assert outcome(lambda: stale.listdir(stale.unc(r))) == "LOGON_FAILURE"
    fresh = users(c.name, new)
    assert fresh.read(fresh.unc(r, "f")) == b"1"
    # a computer added while mounted can log on at once
    late = n.computer()
    rl = n.client_json(late, "request", "capture")
    lu = users(late)
    assert outcome(lambda: lu.write(lu.unc(rl, "g"), b"2")) == "ok"


def test_hidden_shares_are_not_listed(net_smp):
    n = net_smp
    c = n.computer()
    r = subprocess.run(["smbclient", "-L", "//127.0.0.1", "-p", str(n.smb_port), "-A", authfile(n, c)],
                       capture_output=True, text=True, timeout=60)
    assert "SMPSTORED_" not in r.stdout + r.stderr
    share = n.smp.status()["folders"][0]["share_name"]
    r = subprocess.run(["smbclient", f"//127.0.0.1/{share}", "-p", str(n.smb_port), "-A", authfile(n, c),
                        "-c", "ls"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr          # hidden, yet there for whoever names it


def test_data_written_over_smb_is_ciphertext_at_rest(net_smp, users):
    n = net_smp
    c = n.computer()
    r = n.client_json(c, "request", "capture")
    marker = b"SMBMARK" + os.urandom(6).hex().encode()
    m = marker.decode()
    u = users(c)
    smbclient.mkdir(u.unc(r, f"dir-{m}"), **u.kw)
    u.write(u.unc(r, f"dir-{m}", f"file-{m}.txt"), b"secret " + marker + b" secret")
    big = bytearray(random.Random(3).randbytes(3 * MiB))
    for off in range(0, len(big) - len(marker), 40_000):
        big[off:off + len(marker)] = marker
    u.write(u.unc(r, "big.bin"), bytes(big))
    assert u.read(u.unc(r, "big.bin")) == bytes(big)
    n.client(c, "release", "capture", check=True)            # everything captured is durable
    roots = [n.smp.state, *[Path(f["path"]) for f in n.smp.status()["folders"]]]
    probe = n.smp.state / "probe"
    probe.write_bytes(marker)                                 # the search finds plaintext where there is some
    found = subprocess.run(["grep", "-r", "-a", "-l", "-F", "--", m, *map(str, roots)],
                           capture_output=True, text=True)
    probe.unlink()
    leaks = [f for f in found.stdout.split() if f != str(probe)]
    context = subprocess.run(["grep", "-r", "-a", "-o", "-F", "-m", "3", "--", m, *leaks],
                             capture_output=True, text=True).stdout if leaks else ""
    assert found.stdout.split() == [str(probe)], f"plaintext marker at rest: {found.stdout}\n{context}"


def test_a_side_by_side_migration_over_the_network(net_smp, seed):
    t = side_by_side_over_the_network(net_smp, files=1000, big_mib=256, seed=seed)
    print(f"1,000 files + 256 MiB over SMB: put {t['put_s']:.1f}s, get {t['get_s']:.1f}s")


@pytest.mark.daemon_log(r"the last mount did not end cleanly")
def test_smbd_and_https_do_not_outlive_a_killed_daemon(net_smp_fresh):
    import signal
    import socket
    n = net_smp_fresh
    n.smp.kill(signal.SIGKILL)
    deadline = time.monotonic() + 15
    served = True
    while served and time.monotonic() < deadline:
        with socket.socket() as s1, socket.socket() as s2:
            served = s1.connect_ex(("127.0.0.1", n.smb_port)) == 0 or s2.connect_ex(("127.0.0.1", n.http_port)) == 0
        time.sleep(0.1)
    assert not served, "smbd or HTTPS still served after the daemon was killed"
    n.smp.mount()                                   # and the next mount serves again
    c = n.computer()
    assert n.client(c, "request", "capture").code == 0


def test_no_samba_process_outlives_the_mount(net_smp_fresh):
    """Listing shares makes smbd start samba-dcerpcd in a session of its own:
    it (and its RPC workers) stop with the mount, like smbd."""
    n = net_smp_fresh
    c = n.computer()
    r = subprocess.run(["smbclient", "-L", "//127.0.0.1", "-p", str(n.smb_port), "-A", authfile(n, c)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    conf = n.smp.state / "smb" / "smb.conf"

    def ours():
        return [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, f"--configfile={conf}")]
    assert ours(), "the share listing started no Samba helper: this test no longer tests anything"
    n.smp.umount()
    deadline = time.monotonic() + 10
    while ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ours(), "Samba processes of this SMP still run after its unmount"


def _cmdline_has(pid: str, arg: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return arg.encode() in f.read().split(b"\0")
    except OSError:
        return False
