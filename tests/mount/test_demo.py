"""The README's second command, ``tools/demo.sh``, runs end to end and leaves nothing behind."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from smpfs import testing

ROOT = Path(__file__).resolve().parents[2]


def _mounts() -> set[str]:
    return {line.split()[4] for line in open("/proc/self/mountinfo") if " fuse.smpfs " in line}


def test_the_demo_migrates_and_cleans_up():
    uids = f"{testing.next_uid()} {testing.next_uid()}"
    r = subprocess.run(["bash", str(ROOT / "tools" / "demo.sh")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, SMPFS_DEMO_UIDS=uids), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    for step in ("Released capture of PC-OLD", "both copies identical to the profile", "found nowhere",
                 "unmounted cleanly"):
        assert step in r.stdout, step
    demo_dir = re.search(r"==> done: unmounted and removed (\S+)", r.stdout).group(1)
    assert not os.path.exists(demo_dir)
    assert not [m for m in _mounts() if m.startswith(demo_dir + "/")], "the demo left a mount behind"
