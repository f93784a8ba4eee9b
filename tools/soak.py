#!/usr/bin/env python3
"""Soak test: the model-based random driver of tests/mount/test_model.py, for as long as asked.

Sets up its own SMP (``smpfs.testing.mounted()``: a temporary state dir and
mount, always torn down) and runs rounds of :func:`run_model` -- each round a
new pair of computers, a capture in segments with remounts in between,
release, a read-only check as the destination and an fsck -- until the time
is up. Every round's seed is printed; a failure prints the command that
replays exactly that round. Needs root and /dev/fuse.

    sudo .venv/bin/python tools/soak.py --minutes 30
    sudo .venv/bin/python tools/soak.py --seed 12345 --rounds 1      # replay one round
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "mount"))
sys.path.insert(0, str(HERE.parent))

from test_model import run_model  # noqa: E402

from smpfs.testing import SkipNoFuse, mounted  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    ap.add_argument("--seed", type=int, help="seed of the first round (default: random); "
                    "round N uses seed+N")
    ap.add_argument("--rounds", type=int, help="stop after this many rounds")
    ap.add_argument("--segments", type=int, default=8, help="remounts per round (default 8)")
    ap.add_argument("--ops", type=int, default=1500, help="operations per segment (default 1500)")
    ap.add_argument("--json", action="store_true", help="print the totals as JSON at the end")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.segments < 1 or args.ops < 1 or (args.rounds is not None and args.rounds < 1):
        ap.error("--minutes, --segments, --ops and --rounds must be positive")

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"soak: seed {seed}, {args.minutes:g} min, {args.segments} segments x {args.ops} ops per round",
          flush=True)
    deadline = time.monotonic() + args.minutes * 60
    totals: Counter = Counter()
    rounds = 0
    try:
        with mounted() as smp:
            while time.monotonic() < deadline and (args.rounds is None or rounds < args.rounds):
                rseed = seed + rounds
                t0 = time.monotonic()
                print(f"round {rounds}: seed {rseed}", flush=True)
                try:
                    stats = run_model(smp, rseed, args.segments, args.ops,
                                      log=lambda m: print(m, flush=True))
                except BaseException as e:
                    traceback.print_exc()
                    try:
                        tail = (smp.state / "smpfs.log").read_text(errors="replace").splitlines()[-80:]
                        print("--- the daemon's log (last 80 lines) ---\n" + "\n".join(tail))
                    except OSError:
                        pass
                    print(f"\nsoak: FAILED in round {rounds} (seed {rseed}) after "
                          f"{totals['ops']} ops in earlier rounds: {type(e).__name__}", flush=True)
                    print(f"replay: {sys.executable} {Path(__file__)} --seed {rseed} --rounds 1 "
                          f"--segments {args.segments} --ops {args.ops}", flush=True)
                    return 1
                totals.update(stats)
                rounds += 1
                print(f"round {rounds - 1}: ok, {stats['ops']} ops, {stats['bytes_written'] / 2**20:.0f} MiB "
                      f"written, {stats['bytes_checked'] / 2**20:.0f} MiB checked in "
                      f"{time.monotonic() - t0:.0f}s", flush=True)
    except SkipNoFuse as e:
        print(f"soak: cannot run here: {e}", file=sys.stderr)
        return 2
    print(f"soak: {rounds} round(s), {totals['ops']} operations model-checked, "
          f"{args.segments * rounds} remounts, no mismatch (seed {seed})", flush=True)
    if args.json:
        print(json.dumps(dict(totals, rounds=rounds, seed=seed), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
