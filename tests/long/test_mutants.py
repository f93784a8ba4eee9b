"""The planted-bug list (tools/mutants.py): every mutant must be killed by the
default suite's tests named for it. Long: each mutant runs its test files in a
copy of the repository (about 15 minutes in all on two cores)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_planted_bug_is_caught_by_the_default_suite():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "mutants.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=4 * 3600)
    print(r.stdout)
    lines = [ln for ln in r.stdout.splitlines() if ln.split(" ", 1)[0] in ("killed", "survived", "stale")]
    assert len(lines) >= 20, r.stdout + r.stderr
    assert r.returncode == 0, "\n".join(ln for ln in lines if not ln.startswith("killed"))
