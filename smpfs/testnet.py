"""Test helpers for the SMP on the network: a mounted SMP that also serves SMB
and HTTPS on loopback ports, and ways to act as a remote computer.

    with network_mounted() as n:          # or the net_smp fixtures in tests/mount
        c = n.computer()                  # a computer whose secret is in n.secret_file(c)
        r = n.client_json(c, "request", "capture")      # smpfs client, as c's uid
        ...                               # SMB to 127.0.0.1:n.smb_port as c.name / n.secret(c)

Everything is torn down even on failure, and nothing may still listen after.
"""
from __future__ import annotations

import contextlib
import filecmp
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import smpfs.network.client  # noqa: F401  (a child forked as a computer's uid may not read the
from smpfs import testing  # interpreter's library: import what the client needs first)

__all__ = ["NetSmp", "network_mounted", "free_port", "authfile", "smbclient_cli", "side_by_side_over_the_network"]

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

class NetSmp:
    """A TestSmp with --smb-port and --http on 127.0.0.1, and what clients need."""

    def __init__(self, smp: testing.TestSmp):
        self.smp = smp
        self.smb_port = free_port()
        self.http_port = free_port()
        self.url = f"https://127.0.0.1:{self.http_port}"

    def start(self):
        self.smp.init()
        self.smp.cli("config", "--smb-port", f"127.0.0.1:{self.smb_port}", "--http", f"127.0.0.1:{self.http_port}")
        self.smp.mount()
        st = self.smp.status()
        self.cacert, self.sha256 = st["http"]["certificate"], st["http"]["sha256"]
        os.chmod(self.smp.state / "tls", 0o711)             # clients (other uids) read the certificate
        os.chmod(self.cacert, 0o644)
        return self

    def computer(self, name=None) -> testing.Computer:
        """A computer with its secret in ``secret_file(c)`` (readable by its uid only)."""
        c = self.smp.add_computer(name)
        self.write_secret(c)
        return c

    def secret(self, c) -> str:
        return self.smp.cli("computer", "secret", c.name).out.strip()

    def secret_file(self, c) -> str:
        return str(self.smp.root / f"{c.name}.secret")

    def write_secret(self, c, value: str | None = None) -> str:
        value = value or self.secret(c)
        path = self.secret_file(c)
        with open(path, "w") as f:
            f.write(value + "\n")
        os.chown(path, c.uid, c.uid)
        os.chmod(path, 0o600)
        return value

    def client(self, c, action: str, kind: str, *extra, check: bool = False, secret_file=None):
        """``smpfs client ACTION KIND`` run as the computer's own uid (no root)."""
        res = self.smp.cli("client", action, kind, "--smp", self.url, "--computer", c.name,
                           "--secret-file", secret_file or self.secret_file(c), "--cacert", self.cacert,
                           "--retry-delay", "0.2", *extra, uid=c, check=check)
        return res

    def client_json(self, c, action: str, kind: str, *extra) -> dict:
        res = self.client(c, action, kind, "--json", *extra, check=True)
        return json.loads(res.out)

    def audit(self) -> list[dict]:
        return [json.loads(line) for line in self.smp.cli("log", "--json").out.splitlines() if line.strip()]

    def stop(self):
        try:
            if self.smp.mounted:
                with contextlib.suppress(Exception):
                    self.smp.umount()        # stops smbd and HTTPS first, then unmounts
        finally:
            self.smp.teardown()
        # nothing of ours may be left listening
        for port in (self.smb_port, self.http_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after unmount"


@contextlib.contextmanager
def network_mounted(**kw):
    """A mounted SMP serving SMB and HTTPS on free loopback ports; always torn down.
    Raises testing.SkipNoFuse when FUSE, root or Samba is missing."""
    why = testing.fuse_available()
    if why:
        raise testing.SkipNoFuse(why)
    if not (shutil.which("smbd", path="/usr/sbin:/usr/bin:/sbin:/bin")
            and shutil.which("pdbedit", path="/usr/sbin:/usr/bin:/sbin:/bin")):
        raise testing.SkipNoFuse("Samba is not installed (apt-get install samba libnss-wrapper)")
    root = Path(tempfile.mkdtemp(prefix="smpfs-net-", dir=os.environ.get("SMPFS_TEST_TMP")))
    os.chmod(root, 0o711)
    n = NetSmp(testing.TestSmp(root, min_free=kw.get("min_free", "1MB"), max_clients=kw.get("max_clients", 1000)))
    try:
        yield n.start()
    finally:
        n.stop()


# -- SMB with the smbclient tool -------------------------------------------------------

def authfile(n, c, secret=None) -> str:
    path = n.smp.root / f"{c.name}.smbauth"
    path.write_text(f"username = {c.name}\npassword = {secret or n.secret(c)}\ndomain = WORKGROUP\n")
    os.chmod(path, 0o600)
    return str(path)


def smbclient_cli(n, c, share: str, commands: str, timeout=600) -> str:
    """The ``smbclient`` tool as computer ``c``; fails on any NT_STATUS error it prints."""
    r = subprocess.run(["smbclient", f"//127.0.0.1/{share}", "-p", str(n.smb_port), "-A", authfile(n, c),
                        "-m", "SMB3", "--client-protection=encrypt", "-c", commands],
                       capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "NT_STATUS" not in out, out[-2000:]
    return out



def _profile_tree(root: Path, rnd: random.Random, files: int, big_mib: int) -> None:
    for i in range(files):
        d = root / "Users" / "alice" / ("AppData/Roaming" if i % 3 else "Documents") / f"d{i % 37:02d}" / f"s{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:04d}.dat").write_bytes(rnd.randbytes(rnd.randrange(0, 9000)))
    big = root / "USMT" / "USMT.MIG"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:
        block = rnd.randbytes(MiB)
        for i in range(big_mib):
            f.write(block[i:] + block[:i])


def side_by_side_over_the_network(n, files: int, big_mib: int, seed: int) -> dict:
    """request capture -> put a profile over SMB -> release -> request restore ->
    get it all over SMB, compare byte for byte -> release restore -> retention deletes."""
    src, dst = n.computer(), n.computer()
    n.smp.associate(src, dst)
    work = Path(tempfile.mkdtemp(prefix="smpfs-net-mig-", dir=os.environ.get("SMPFS_TEST_TMP")))
    try:
        out_dir, back_dir = work / "out", work / "back"
        out_dir.mkdir()
        back_dir.mkdir()
        _profile_tree(out_dir, random.Random(seed), files, big_mib)
        r = n.client_json(src, "request", "capture")
        share, sid = r["unc"].split("\\")[3], r["store_id"]
        assert r["smb_url"] == f"smb://127.0.0.1:{n.smb_port}/{share}/{sid}"
        t0 = time.monotonic()
        smbclient_cli(n, src, share, f"cd {sid}; lcd {out_dir}; prompt off; recurse on; mput *")
        t_put = time.monotonic() - t0
        n.client(src, "release", "capture", check=True)
        r2 = n.client_json(dst, "request", "restore")
        assert r2["store_id"] == sid
        t0 = time.monotonic()
        smbclient_cli(n, dst, share, f"cd {sid}; lcd {back_dir}; prompt off; recurse on; mget *")
        t_get = time.monotonic() - t0
        cmp = filecmp.dircmp(out_dir, back_dir)
        _assert_same(cmp)
        count = sum(len(fs) for _, _, fs in os.walk(back_dir))
        assert count == files + 1
        n.client(dst, "release", "restore", check=True)
        deleted = n.smp.advance("400d")
        assert sid in [d["store_id"] for d in deleted]
        assert not (Path(n.smp.status()["folders"][0]["path"]) / sid).exists()
        return {"put_s": t_put, "get_s": t_get}
    finally:
        subprocess.run(["rm", "-rf", str(work)])


def _assert_same(cmp: filecmp.dircmp) -> None:
    assert not cmp.left_only and not cmp.right_only, (cmp.left_only, cmp.right_only)
    _match, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    for sub in cmp.subdirs.values():
        _assert_same(sub)
