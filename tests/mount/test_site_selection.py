"""A site of two SMPs, each a whole smpfs (own state dir, mount, HTTPS endpoint
and smbd on its own loopback ports), and `smpfs client ... --site` choosing
between them as ConfigMgr's client does: the SMPs of the computer's boundary
group in order, the next one when an SMP is full, in restore-only mode or
down, the SMP that holds the store for a restore, and a refusal (exit 17)
for a computer in no boundary group."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time

import pytest

from smpfs.testing import SkipNoFuse
from smpfs.testnet import network_mounted


@pytest.fixture(scope="module")
def site():
    """SMP1 (one client per folder) and SMP2, both serving HTTPS and SMB."""
    try:
        with contextlib.ExitStack() as stack:
            smp1 = stack.enter_context(network_mounted(max_clients=1))
            smp2 = stack.enter_context(network_mounted())
            yield Site(smp1, smp2)
    except SkipNoFuse as e:
        pytest.skip(str(e))


class Site:
    def __init__(self, smp1, smp2):
        self.smp1, self.smp2 = smp1, smp2
        self.dir = smp1.smp.root
        self.file = self.write("site.toml", 'names = ["HQ-*"]')

    def write(self, name: str, match: str) -> str:
        """A site file whose one boundary group (matched by ``match``) has [SMP1, SMP2]."""
        path = self.dir / name
        path.write_text(f"""
[site]
retries = 0
retry_delay = 0.2
timeout = 5

[smp.SMP1]
url = "{self.smp1.url}"
sha256 = "{self.smp1.sha256}"

[smp.SMP2]
url = "{self.smp2.url}"
sha256 = "{self.smp2.sha256}"

[group.HQ]
{match}
smps = ["SMP1", "SMP2"]
""")
        os.chmod(path, 0o644)
        return str(path)

    def computer(self, name: str, on=("smp1", "smp2")):
        """A computer registered with the same uid and secret on the given SMPs:
        the secret is made by the first and given to the others (`computer add --secret-file`)."""
        first, *others = [getattr(self, n) for n in on]
        c = first.computer(name)
        for n in others:
            n.smp.cli("computer", "add", c.name, "--uid", c.uid, "--secret-file", first.secret_file(c))
            n.write_secret(c, first.secret(c))           # the same file content, for the SMB auth below
        self.secret_file = {**getattr(self, "secret_file", {}), c.name: first.secret_file(c)}
        return c

    def client(self, c, action: str, kind: str, *extra, site_file=None, as_json=True):
        """`smpfs client ACTION KIND --site FILE --json` as the computer's own uid: (code, json, stderr).
        With --json it prints one object only: the answer on stdout, or the error on stderr."""
        res = self.smp1.smp.cli("client", action, kind, "--site", site_file or self.file, "--computer", c.name,
                                "--secret-file", self.secret_file[c.name], *(["--json"] if as_json else []),
                                *extra, uid=c, check=False)
        if not as_json:
            return res.code, res.out, res.err
        if res.code == 0:
            assert res.err == "", res.err
            return res.code, json.loads(res.out), res.err
        assert res.out == "", res.out
        return res.code, json.loads(res.err), res.err

    def smb(self, n, c, unc: str, commands: str) -> str:
        """smbclient against SMP ``n`` as computer ``c`` (its one secret), in the store of ``unc``."""
        share, store = unc.split("\\")[3], unc.split("\\")[4]
        auth = self.dir / f"{c.name}.smbauth"
        auth.write_text(f"username = {c.name}\npassword = {n.secret(c)}\ndomain = WORKGROUP\n")
        os.chmod(auth, 0o600)
        r = subprocess.run(["smbclient", f"//127.0.0.1/{share}", "-p", str(n.smb_port), "-A", str(auth),
                            "-m", "SMB3", "--client-protection=encrypt", "-D", store, "-c", commands],
                           capture_output=True, text=True, timeout=60, cwd=self.dir)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "NT_STATUS" not in out, out[-2000:]
        return out


def refused(attempts, smp):
    return [a for a in attempts if a.get("event") == "refused" and a["smp"] == smp]


def test_captures_go_to_the_first_smp_of_the_group_with_room_and_restores_find_their_own(site):
    # SMP1 in restore-only mode: a new capture goes to SMP2, saying why it moved on
    site.smp1.smp.cli("config", "--restore-only", "on")
    a = site.computer("HQ-A")
    code, r, err = site.client(a, "request", "capture")
    assert code == 0, err
    assert r["smp"] == "SMP2" and r["groups"] == ["HQ"]
    assert [x["outcome"] for x in refused(r["attempts"], "SMP1")] == ["RestoreOnlyMode"]
    smp1, = refused(r["attempts"], "SMP1")
    assert smp1["reason"].startswith("restore-only") and smp1["next"] == "asking SMP2"
    # without --json the same, as lines on stderr (the step asked again returns the same store)
    code, out, err = site.client(a, "request", "capture", as_json=False)
    assert code == 0 and out.strip() == r["unc"], err
    assert "SMP1" in err and "restore-only" in err and "asking SMP2" in err
    assert f":{site.smp2.smb_port}/" in r["smb_url"]
    # SMP2's smbd takes the secret HQ-A was given by SMP1 (added to SMP2 with --secret-file)
    (site.dir / "USMT.MIG").write_bytes(b"state of HQ-A\n")
    site.smb(site.smp2, a, r["unc"], "put USMT.MIG")

    # site check shows it: both reachable, SMP1 restore-only
    probe = site.computer("HQ-PROBE")
    res = site.smp1.smp.cli("site", "check", site.file, "--computer", probe.name, "--secret-file",
                            site.secret_file[probe.name], "--json")
    smps = {s["name"]: s for s in json.loads(res.out)["smps"]}
    assert smps["SMP1"]["reachable"] and smps["SMP1"]["state"]["restore_only"] in (True, 1)
    assert smps["SMP2"]["reachable"] and not smps["SMP2"]["state"]["restore_only"]
    assert smps["SMP1"]["sha256"] == site.smp1.sha256
    assert smps["SMP1"]["state"]["folders"][0]["max_clients"] == 1

    # SMP1 takes captures again: the first computer lands on it, the second finds it full
    site.smp1.smp.cli("config", "--restore-only", "off")
    b, c = site.computer("HQ-B"), site.computer("HQ-C")
    code, r, err = site.client(b, "request", "capture")
    assert code == 0 and r["smp"] == "SMP1" and not refused(r["attempts"], "SMP1"), err
    b_unc = r["unc"]
    code, r, err = site.client(c, "request", "capture")
    assert code == 0 and r["smp"] == "SMP2", err
    assert [x["outcome"] for x in refused(r["attempts"], "SMP1")] == ["NoStorageRoom"]

    # the computer writes over SMB to the SMP that granted its store, with its one secret
    (site.dir / "USMT.MIG").write_bytes(b"state of HQ-B\n" * 1000)
    site.smb(site.smp1, b, b_unc, "put USMT.MIG")

    # releases and restores find each computer's own SMP (in-place: the same computer)
    for who, where in ((a, "SMP2"), (b, "SMP1"), (c, "SMP2")):
        code, r, err = site.client(who, "release", "capture")
        assert code == 0 and r["smp"] == where, err
        code, r, err = site.client(who, "request", "restore")
        assert code == 0 and r["smp"] == where, err
        if who is b:
            assert r["unc"] == b_unc
            (site.dir / "USMT.MIG").unlink()
            site.smb(site.smp1, b, r["unc"], "get USMT.MIG")
            assert (site.dir / "USMT.MIG").read_bytes() == b"state of HQ-B\n" * 1000
    code, r, err = site.client(a, "release", "restore")
    assert code == 0 and r["smp"] == "SMP2" and [x["outcome"] for x in refused(r["attempts"], "SMP1")] == [
        "NothingToRelease"], err


def test_a_computer_in_no_boundary_group_is_refused_with_exit_17_and_no_smp_asked(site):
    e = site.computer("BR-E")
    code, r, err = site.client(e, "request", "capture")
    assert code == 17, err
    assert "in no boundary group" in err and "127.0.0.1" in err
    assert set(r) == {"error", "attempts"} and set(r["error"]) == {"class", "exit", "message", "hint"}
    assert r["error"]["exit"] == 17 and r["error"]["class"] == "OutsideBoundaryGroups"
    assert [x["event"] for x in r["attempts"]] == ["boundary"]
    # the same computer, by its address: a group with 127.0.0.0/8 takes it; one with 10.0.0.0/24 does not
    by_addr = site.write("site-addr.toml", 'ranges = ["127.0.0.0/8"]')
    code, r, err = site.client(e, "request", "capture", site_file=by_addr)
    assert code == 0 and r["smp"] in ("SMP1", "SMP2"), err
    assert "address 127.0.0.1" in r["attempts"][0]["why"]["HQ"]
    elsewhere = site.write("site-elsewhere.toml", 'ranges = ["10.0.0.0/24"]')
    code, r, err = site.client(e, "request", "restore", site_file=elsewhere)
    assert code == 17, err


def test_requests_fall_back_to_smp2_when_smp1_is_down_within_the_retry_budget(site):
    d = site.computer("HQ-D")
    site.smp1.smp.umount()                                # SMP1 stops serving HTTPS and SMB
    t0 = time.monotonic()
    code, r, err = site.client(d, "request", "capture", "--retries", "2", "--retry-delay", "0.2")
    took = time.monotonic() - t0
    assert code == 0 and r["smp"] == "SMP2", err
    assert [x["outcome"] for x in refused(r["attempts"], "SMP1")] == ["Unreachable"]
    assert refused(r["attempts"], "SMP1")[0]["reason"].startswith("unreachable") and took < 10, (took, r)
    # site check, with no computer's credentials: who answers with the right certificate; exit 6 for SMP1
    res = site.smp2.smp.cli("site", "check", site.file, check=False)
    assert res.code == 6 and "1 SMP(s) did not answer" in res.err, res.err
    rows = {line.split()[0]: line for line in res.out.splitlines() if line.startswith("SMP")}
    assert "no: cannot reach" in rows["SMP1"] and " yes " in rows["SMP2"], res.out
    # a store only SMP1 holds cannot be found while it is down: every round asks again, then exit 6
    f = site.computer("HQ-F", on=("smp2",))
    t0 = time.monotonic()
    code, r, err = site.client(f, "request", "restore", "--retries", "2", "--retry-delay", "0.2")
    assert code == 6 and r["error"]["exit"] == 6 and "(after 3 rounds)" in r["error"]["message"], err
    assert [x["round"] for x in refused(r["attempts"], "SMP1")] == [1, 2, 3]
    assert time.monotonic() - t0 < 10


@pytest.fixture(autouse=True)
def _smbclient_present():
    if not shutil.which("smbclient"):
        pytest.skip("smbclient is not installed (apt-get install smbclient)")
