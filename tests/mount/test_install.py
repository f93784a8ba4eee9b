"""tools/install-system.sh installs smpfs for real, inside a throw-away root.

The install runs in a private mount namespace (``unshare -m``) where /opt,
/usr/local, /usr/sbin and /etc/systemd/system are overlays on a tmpfs: the
script writes to the real paths, the host sees none of it, and everything is
gone when the namespace ends. In there: the wheel is built and installed into
/opt/smpfs with /usr/bin/python3, a non-root uid runs the linked ``smpfs``,
mount(8) mounts an SMP through the installed helper, ``systemd-analyze
verify`` accepts the unit it wrote (and refuses one naming a missing smpfs),
a second run changes nothing it should not, and --uninstall leaves nothing.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "install-system.sh"
OVERLAID = ("/opt", "/usr/local", "/usr/sbin", "/etc/systemd/system")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a mount namespace)"
    for tool in ("unshare", "systemd-analyze", "git"):
        if not shutil.which(tool):
            return f"{tool} is missing (apt-get install util-linux systemd git)"
    if not os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3 is missing"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        "d=$(mktemp -d) && mount -t tmpfs t $d && mkdir $d/u $d/w && "
                        "mount -t overlay o -o lowerdir=/opt,upperdir=$d/u,workdir=$d/w /opt"],
                       capture_output=True, text=True)
    if r.returncode:
        return f"no overlay mounts in a private mount namespace here: {r.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "")


def in_throwaway_root(script: str, tmp: Path) -> subprocess.CompletedProcess:
    """Run bash ``script`` in a private mount namespace with OVERLAID writable
    and discarded afterwards."""
    setup = "set -euo pipefail\n" f"t={tmp}\n" "mount -t tmpfs tmpfs $t\n"
    for i, d in enumerate(OVERLAID):
        setup += (f"mkdir -p $t/u{i} $t/w{i}\n"
                  f"mount -t overlay overlay -o lowerdir={d},upperdir=$t/u{i},workdir=$t/w{i} {d}\n")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", setup + script],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    print(r.stdout, r.stderr)
    return r


def test_install_system_installs_a_wheel_in_opt_links_it_and_writes_a_verified_unit(tmp_path):
    ns = tmp_path / "ns"
    ns.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(tmp_path, 0o711)
    os.chmod(work, 0o777)
    r = in_throwaway_root(f"""
before=$(ls /usr/local/bin /usr/local/sbin /usr/sbin /etc/systemd/system /opt | md5sum)
./tools/install-system.sh
# what it installed, where it says
test -f /opt/smpfs/pyvenv.cfg && grep -q '^home = /usr/bin' /opt/smpfs/pyvenv.cfg
/opt/smpfs/bin/python -c 'import smpfs.cli, smpfs.mount.daemon, smpfs.store.statestore'
test "$(readlink /usr/local/bin/smpfs)" = /opt/smpfs/bin/smpfs
test "$(readlink /usr/local/sbin/mount.fuse.smpfs)" = /opt/smpfs/bin/mount.fuse.smpfs
test "$(readlink /sbin/mount.fuse.smpfs)" = /opt/smpfs/bin/mount.fuse.smpfs
test ! -e /opt/smpfs/lib/python3*/site-packages/__editable__*
grep -qx 'ExecStart=/opt/smpfs/bin/smpfs mount --foreground %f' /etc/systemd/system/smpfs@.service
echo VERSION-AS-NOBODY $(setpriv --reuid 65534 --regid 65534 --clear-groups env PATH=/usr/local/bin:/usr/bin \\
    smpfs --version)
# systemd accepts the unit it wrote, and would refuse one naming a smpfs that is not there
systemd-analyze verify /etc/systemd/system/smpfs@.service smpfs@srv-smp.service
echo VERIFY-OK
sed 's#^ExecStart=/opt/smpfs/bin/smpfs#ExecStart=/opt/smpfs/bin/nowhere#' /etc/systemd/system/smpfs@.service \\
    > {work}/smpfs-bad@.service
if systemd-analyze verify {work}/smpfs-bad@.service 2>{work}/bad.txt; then echo VERIFY-BAD-PASSED; fi
# an SMP mounted by mount(8) through the installed helper, run by the installed python
smpfs --state {work}/state init --server SMPINST >/dev/null
mkdir {work}/mnt
trap 'fusermount3 -uz {work}/mnt 2>/dev/null || true' EXIT
mount -t fuse.smpfs {work}/state {work}/mnt
echo MOUNTED $(smpfs --state {work}/state --json status | /opt/smpfs/bin/python -c \\
    'import json,sys; print(json.load(sys.stdin)["mountpoint"])')
tr '\\0' ' ' < /proc/$(/opt/smpfs/bin/python -c \\
    'import json; print(json.load(open("{work}/state/daemon.json"))["pid"])')/cmdline; echo
smpfs --state {work}/state umount {work}/mnt
# again: the same install, upgraded in place
./tools/install-system.sh >/dev/null
test "$(readlink /usr/local/bin/smpfs)" = /opt/smpfs/bin/smpfs && echo SECOND-RUN-OK
./tools/install-system.sh --uninstall
test ! -e /opt/smpfs && test ! -e /usr/local/bin/smpfs && test ! -e /sbin/mount.fuse.smpfs
test ! -e /usr/local/sbin/mount.fuse.smpfs && test ! -e /etc/systemd/system/smpfs@.service
after=$(ls /usr/local/bin /usr/local/sbin /usr/sbin /etc/systemd/system /opt | md5sum)
test "$before" = "$after" && echo NOTHING-LEFT
""", ns)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "VERSION-AS-NOBODY smpfs, version" in out
    assert "VERIFY-OK" in out and "VERIFY-BAD-PASSED" not in out
    assert "nowhere" in (work / "bad.txt").read_text()
    assert f"MOUNTED {work}/mnt" in out
    assert re.search(r"/opt/smpfs/bin/python3? -P -m smpfs --state", out)    # the daemon: the installed smpfs
    assert "SECOND-RUN-OK" in out and "NOTHING-LEFT" in out


def test_install_system_stages_into_a_root_naming_the_final_paths(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    r = subprocess.run([str(SCRIPT), "--root", str(stage), "--prefix", "/opt/smpfs-test"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    venv = stage / "opt" / "smpfs-test"
    assert (venv / "bin" / "smpfs").read_text().startswith("#!/opt/smpfs-test/bin/python")
    assert os.readlink(stage / "usr/local/bin/smpfs") == "/opt/smpfs-test/bin/smpfs"
    unit = (stage / "etc/systemd/system/smpfs@.service").read_text()
    assert "ExecStart=/opt/smpfs-test/bin/smpfs mount --foreground %f" in unit
    assert str(stage) not in unit and str(stage) not in (venv / "pyvenv.cfg").read_text()
    # the unit's own comment still explains its placeholders; only its settings name the paths
    template = (ROOT / "tools/systemd/smpfs@.service").read_text()
    comment = [line for line in template.splitlines() if line.startswith("#")]
    assert [line for line in unit.splitlines() if line.startswith("#")] == comment
    assert any("@SMPFS@" in line for line in comment) and "Documentation=file:///opt/smpfs-test/share/doc" in unit
    assert "@SMPFS@" not in "".join(line for line in unit.splitlines() if not line.startswith("#"))
    # it says what it wrote where it wrote it: in the staging root, not on this system
    said = [line for line in r.stdout.splitlines() if line.startswith(("linked ", "wrote ", "installing "))]
    assert len(said) == 3, r.stdout
    for line in said:
        paths = re.findall(r"(/[^\s,()]+)", line.split(" -> ")[0].split(" (")[0])
        assert paths and all(p.startswith(str(stage)) for p in paths if not p.endswith(".whl")), line
    # it runs from where it was staged too (its python is /usr/bin/python3's)
    r2 = subprocess.run([str(venv / "bin" / "python"), "-m", "smpfs", "--version"], capture_output=True, text=True)
    assert r2.returncode == 0 and "smpfs, version" in r2.stdout
    r3 = subprocess.run([str(SCRIPT), "--root", str(stage), "--prefix", "/opt/smpfs-test", "--uninstall"],
                        capture_output=True, text=True, cwd=ROOT)
    assert r3.returncode == 0, r3.stderr
    removed = [line for line in r3.stdout.splitlines() if line.startswith("removed ")]
    assert len(removed) >= 3 and all(line.startswith(f"removed {stage}/") for line in removed), r3.stdout
    assert not venv.exists() and not (stage / "usr/local/bin/smpfs").exists()
    assert not (stage / "etc/systemd/system/smpfs@.service").exists()


def test_install_system_refuses_a_prefix_it_did_not_make(tmp_path):
    stage = tmp_path / "stage"
    (stage / "opt" / "smpfs").mkdir(parents=True)
    (stage / "opt" / "smpfs" / "precious").write_text("x")
    r = subprocess.run([str(SCRIPT), "--root", str(stage)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "not made by this script" in r.stderr
    r = subprocess.run([str(SCRIPT), "--root", str(stage), "--uninstall"], capture_output=True, text=True)
    assert r.returncode == 0 and (stage / "opt" / "smpfs" / "precious").exists()
