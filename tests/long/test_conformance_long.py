"""Long conformance runs (``SMPFS_LONG=1``; skipped otherwise).

* The model test (tests/mount/test_model.py) -- every POSIX operation it
  knows, the permission probes (ext4's rules for the owner without
  capabilities) and the sparse-file operations (st_blocks never counts a
  hole) -- for at least 100,000 operations, with a remount between segments,
  the read-only check as the destination and fsck at the end.
  ``SMPFS_LONG_SEGMENTS`` and ``SMPFS_LONG_OPS`` change its size;
  ``SMPFS_MODEL_SEED`` replays a run.
* fio and stress-ng as in tests/mount/test_external_suites.py, larger and longer.

Run: ``SMPFS_LONG=1 ./tools/test.sh -s tests/long/test_conformance_long.py``
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mount"))

from test_external_suites import STRESSORS, run_fio, run_stress_ng  # noqa: E402
from test_model import _seed, run_model  # noqa: E402

SEGMENTS = int(os.environ.get("SMPFS_LONG_SEGMENTS", "20"))
OPS = int(os.environ.get("SMPFS_LONG_OPS", "5000"))


def test_model_with_permissions_and_sparse_files(smp):
    seed = _seed()
    print(f"model seed: {seed}  (replay: SMPFS_MODEL_SEED={seed})")
    stats = run_model(smp, seed, SEGMENTS, OPS)
    print("model stats:", json.dumps(stats, sort_keys=True))
    assert stats["ops"] >= SEGMENTS * OPS
    if SEGMENTS * OPS >= 100_000:
        assert stats["perm_probes"] >= 1000 and stats["op_sparse"] >= 1000, stats


def test_fio_and_stress_ng_longer(smp):
    comp = smp.add_computer()
    store = str(smp.request_capture(comp))
    run_fio(smp, comp, store, size="64M", numjobs=4)
    run_stress_ng(smp, comp, store, timeout=30,
                  stressors=STRESSORS.replace("--hdd 2", "--hdd 4") + " --link 1 --symlink 1")
