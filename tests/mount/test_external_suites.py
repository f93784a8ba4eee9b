"""External test suites from Debian packages, run in a store as its computer's uid.

* ``fio`` writes and verifies (``--verify=crc32c``) sequential and random
  patterns, through the page cache and with ``O_DIRECT``, several jobs at once;
* ``stress-ng`` filesystem stressors, with ``--verify`` where they check data;
* ``wimlib-imagex`` (Debian ``wimtools``, a real Windows-imaging tool)
  captures the profile tree into a WIM inside the store, applies it into the
  store, captures that back out and applies it on the local disk: the result
  must equal the original.

Every tool must exit 0: a verify error, a stressor failure or a changed file
is a failed test. Longer runs: tests/long/test_external_suites_long.py.
"""
from __future__ import annotations

import os
import re
import shutil

import pytest
from test_tools import assert_same_tree, make_tree, snapshot

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("fio", "stress-ng", "wimlib-imagex")),
    reason="fio, stress-ng and wimtools are installed by tools/setup.sh")


@pytest.fixture(scope="module")
def msmp(smp_module):
    return smp_module


@pytest.fixture
def env(msmp, request):
    request.node._smpfs = msmp
    comp = msmp.add_computer()
    store = str(msmp.request_capture(comp))
    work = msmp.root / f"work-{comp.uid}"
    work.mkdir(mode=0o700)
    os.chown(work, comp.uid, comp.uid)
    return msmp, comp, store, str(work)


def _q(p: str) -> str:
    return "'" + p.replace("'", "'\\''") + "'"


def run_fio(smp, comp, store: str, size: str = "8M", numjobs: int = 2) -> None:
    jobs = [("seq-buffered", "write", "128k", ""), ("rand-buffered", "randwrite", "4k", ""),
            ("seq-direct", "write", "64k", "--direct=1"), ("rand-direct", "randwrite", "4k", "--direct=1")]
    for name, rw, bs, extra in jobs:
        d = f"{store}/fio-{name}"
        smp.as_uid(comp, os.mkdir, d)
        r = smp.run(f"cd {_q(d)} && fio --name={name} --directory={_q(d)} --size={size} --bs={bs} --rw={rw} "
                    f"--numjobs={numjobs} --verify=crc32c --do_verify=1 --verify_fatal=1 "
                    f"--group_reporting --output-format=normal {extra}", who=comp, check=False)
        assert r.returncode == 0, f"fio {name} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
        errs = re.findall(r"err= *(\d+)", r.stdout)
        assert errs and set(errs) == {"0"}, f"fio {name}: {r.stdout[-3000:]}"


def test_fio_verifies_what_it_wrote(env):
    smp, comp, store, _ = env
    run_fio(smp, comp, store)


STRESSORS = ("--hdd 2 --hdd-bytes 4M --dir 1 --dentry 1 --rename 1 --chmod 1 --utime 1 --xattr 1 "
             "--seek 1 --seek-size 4M --iomix 1 --iomix-bytes 4M --sync-file 1 --sync-file-bytes 4M "
             "--filename 1 --fstat 1 --lockf 1 --flock 1")


def run_stress_ng(smp, comp, store: str, timeout: int = 3, stressors: str = STRESSORS) -> None:
    d = f"{store}/stress"
    smp.as_uid(comp, os.mkdir, d)
    r = smp.run(f"stress-ng --temp-path {_q(d)} --verify --timeout {timeout} --metrics-brief {stressors}",
                who=comp, check=False, cwd="/tmp")
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"stress-ng failed ({r.returncode}):\n{out[-4000:]}"
    assert "successful run completed" in out and " fail" not in out.lower(), out[-4000:]


def test_stress_ng_filesystem_stressors(env):
    smp, comp, store, _ = env
    run_stress_ng(smp, comp, store)


def _coarse(snap: dict) -> dict:
    """WIM keeps times in 100 ns units."""
    for v in snap.values():
        if isinstance(v, dict) and "mtime_ns" in v:
            v["mtime_ns"] //= 100
    return snap


def test_wimlib_capture_and_apply_through_a_store(env):
    smp, comp, store, work = env
    smp.as_uid(comp, make_tree, f"{work}/src")
    steps = [f"wimlib-imagex capture {_q(work)}/src {_q(store)}/profile.wim PROFILE --unix-data",
             f"mkdir {_q(store)}/applied && wimlib-imagex apply {_q(store)}/profile.wim 1 {_q(store)}/applied "
             f"--unix-data",
             f"wimlib-imagex capture {_q(store)}/applied {_q(work)}/back.wim BACK --unix-data",
             f"wimlib-imagex apply {_q(work)}/back.wim 1 {_q(work)}/out --unix-data",
             f"wimlib-imagex verify {_q(store)}/profile.wim"]
    for cmd in steps:
        r = smp.run(cmd, who=comp, check=False)
        assert r.returncode == 0, f"{cmd}\nfailed ({r.returncode}): {r.stderr[-3000:]}"
    want = _coarse(smp.as_uid(comp, snapshot, f"{work}/src"))
    assert_same_tree(want, _coarse(smp.as_uid(comp, snapshot, f"{store}/applied")), "applied into the store")
    assert_same_tree(want, _coarse(smp.as_uid(comp, snapshot, f"{work}/out")), "captured out of the store")
