#!/usr/bin/env python3
"""SMB benchmark: a 1 GiB file put and got over SMB on loopback, in one run,
against three servers that differ only in what is behind the share:

* ``samba-plain``      smbd serving a plain directory;
* ``samba-gocryptfs``  smbd serving a gocryptfs mount (``-allow_other``);
* ``smpfs``            the mount's own smbd serving a store in capture.

All three are smpfs's SMB service (smpfs.network.smb: the same smb.conf, SMB
3.1.1 with encryption required, no oplocks), logged on as the same computer
account mapped to the same uid; the client is ``smbclient`` with encryption.
Before every get the page cache is dropped. Run as root from the repository:

    sudo .venv/bin/python tools/bench_smb.py [--size-mib 1024] [--repeat 3] [--json out.json]

``tools/bench.py --cases smb`` runs this too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smpfs.lifecycle import api  # noqa: E402
from smpfs.lifecycle.smp import Smp  # noqa: E402
from smpfs.network.smb import SmbService  # noqa: E402
from smpfs.testnet import free_port  # noqa: E402

UID = 61000
NAME = "BENCH01"


def sh(*argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def drop_caches():
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


class Host:
    """What SmbService needs of a daemon: a mountpoint (and call, unused here)."""

    def __init__(self, mountpoint: Path):
        self.mountpoint = mountpoint


def smbclient(port: int, auth: Path, share: str, cmd: str) -> float:
    t0 = time.monotonic()
    r = subprocess.run(["smbclient", f"//127.0.0.1/{share}", "-p", str(port), "-A", str(auth), "-m", "SMB3",
                        "--client-protection=encrypt", "-c", cmd], capture_output=True, text=True, timeout=3600)
    dt = time.monotonic() - t0
    if r.returncode or "NT_STATUS" in r.stdout + r.stderr:
        raise RuntimeError(f"smbclient {cmd!r}: {(r.stdout + r.stderr)[-500:]}")
    return dt


def share_of(state: Path) -> str:
    smp = Smp.open(state)
    try:
        return smp.share_name(smp.query_one("SELECT * FROM folders LIMIT 1"))
    finally:
        smp.close()


async def serve_dir(state: Path, top: Path, run_case):
    """smpfs's SMB service with an ordinary directory, ``top/SHARE``, as the share."""
    share = share_of(state)
    svc = SmbService(state, "127.0.0.1", free_port())
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run, Host(top))
        try:
            return await trio.to_thread.run_sync(run_case, svc.port, share, "")
        finally:
            await svc.stop()
            nursery.cancel_scope.cancel()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dir", help="work directory (default: a fresh one under /var/tmp)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--targets", default="samba-plain,samba-gocryptfs,smpfs")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (it mounts and drops caches)")
    work = Path(a.dir or tempfile.mkdtemp(prefix="smpfs-benchsmb-", dir="/var/tmp"))
    os.chmod(work, 0o711)
    results: dict = {}
    mounts: list[Path] = []
    smpfs_mnt = None
    state = work / "state"
    try:
        src = work / "src.bin"
        with open(src, "wb") as f:                     # random: nothing compresses
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
        smp = Smp.init(state, server="BENCHSMP")
        api.dispatch(smp, 0, "computer_add", {"name": NAME, "uid": UID})
        secret = api.dispatch(smp, 0, "computer_secret", {"name": NAME})["secret_value"]
        smp.close()
        auth = work / "auth"
        auth.write_text(f"username = {NAME}\npassword = {secret}\ndomain = WORKGROUP\n")
        os.chmod(auth, 0o600)

        def case(port, share, subdir):
            prefix = f"cd {subdir}; " if subdir else ""
            puts, gets = [], []
            for i in range(a.repeat):
                puts.append(smbclient(port, auth, share, f"{prefix}put {src} f{i}.bin"))
                drop_caches()
                gets.append(smbclient(port, auth, share, f"{prefix}get f{i}.bin /dev/null"))
            mib = a.size_mib
            return {"put_mib_s": mib / statistics.median(puts), "get_mib_s": mib / statistics.median(gets),
                    "put_s": puts, "get_s": gets}

        targets = a.targets.split(",")
        if "samba-plain" in targets:
            top = work / "plain"
            (top / share_of(state)).mkdir(parents=True)
            os.chown(top / share_of(state), UID, UID)
            results["samba-plain"] = trio.run(serve_dir, state, top, case)
        if "samba-gocryptfs" in targets and shutil.which("gocryptfs"):
            top = work / "gc"
            cipher, mnt = work / "gc-cipher", top / share_of(state)
            cipher.mkdir()
            mnt.mkdir(parents=True)
            pw = work / "gc-pass"
            pw.write_text("benchmark\n")
            sh("gocryptfs", "-init", "-q", "-passfile", str(pw), str(cipher))
            sh("gocryptfs", "-q", "-allow_other", "-passfile", str(pw), str(cipher), str(mnt))
            mounts.append(mnt)
            os.chown(mnt, UID, UID)
            results["samba-gocryptfs"] = trio.run(serve_dir, state, top, case)
        if "smpfs" in targets:
            smpfs_mnt = work / "smpfs-mnt"
            smpfs_mnt.mkdir()
            cli = [sys.executable, "-m", "smpfs", "--state", str(state)]
            port = free_port()
            sh(*cli, "config", "--smb-port", f"127.0.0.1:{port}")
            sh(*cli, "mount", str(smpfs_mnt), cwd=str(Path(__file__).resolve().parents[1]))
            r = json.loads(sh(*cli, "request", "capture", NAME, "--json").stdout)
            share = r["unc"].split("\\")[3]
            results["smpfs"] = case(port, share, r["store_id"])
    finally:
        if smpfs_mnt is not None:
            subprocess.run([sys.executable, "-m", "smpfs", "--state", str(state), "umount", str(smpfs_mnt)],
                           capture_output=True, cwd=str(Path(__file__).resolve().parents[1]))
        for m in mounts:
            subprocess.run(["fusermount3", "-u", str(m)], capture_output=True)
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"| case ({a.size_mib} MiB over SMB, loopback) | samba-plain | samba-gocryptfs | smpfs "
          "| smpfs vs gocryptfs |")
    print("|---|---|---|---|---|")
    for key, label in (("put_mib_s", "put (smbclient put)"), ("get_mib_s", "get, cold (smbclient get)")):
        row = [f"{results[t][key]:.0f} MiB/s" if t in results else "-"
               for t in ("samba-plain", "samba-gocryptfs", "smpfs")]
        ratio = (f"{results['smpfs'][key] / results['samba-gocryptfs'][key]:.2f}x"
                 if "smpfs" in results and "samba-gocryptfs" in results else "-")
        print(f"| {label} | {' | '.join(row)} | {ratio} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
