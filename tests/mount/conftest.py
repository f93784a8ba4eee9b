"""A mounted SMP that also serves SMB and HTTPS on loopback ports."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess

import pytest

from smpfs import testing


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
def network_smp():
    why = testing.fuse_available()
    if why:
        pytest.skip(why)
    for tool in ("smbd", "pdbedit"):
        if subprocess.run(["sh", "-c", f"command -v {tool} || test -x /usr/sbin/{tool}"],
                          capture_output=True).returncode:
            pytest.skip(f"{tool} is not installed (apt-get install samba)")
    n = NetSmp(testing.TestSmp(_tmpdir(),
                               min_free="1MB", max_clients=1000))
    try:
        yield n.start()
    finally:
        n.stop()


def _tmpdir():
    import tempfile
    from pathlib import Path
    d = Path(tempfile.mkdtemp(prefix="smpfs-net-", dir=os.environ.get("SMPFS_TEST_TMP")))
    os.chmod(d, 0o711)
    return d


@pytest.fixture(scope="module")
def net_smp():
    """One networked SMP per test module; give each test its own computers."""
    with network_smp() as n:
        yield n


@pytest.fixture
def net_smp_fresh(request):
    with network_smp() as n:
        request.node._smpfs = n.smp
        yield n
