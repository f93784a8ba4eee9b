#!/usr/bin/env python3
"""Planted bugs the test suite must catch: security- and durability-critical lines.

Each mutant is a small patch (exact search/replace pairs on distinctive lines)
and the test files expected to kill it. For each, the runner copies the
repository (smpfs/, tests/, pyproject.toml) to a temporary directory, applies
the patch, runs those tests there (pytest, with the copy first on the import
path, so daemons the tests start run the mutated code too) and prints one line:

    killed    <name>   (a test failed: good)
    survived  <name>   (every test passed: the suite misses this bug)
    stale     <name>   (the patch no longer applies: the code moved; update it)

It exits 1 if any mutant survived or went stale. Run it as root (mount tests):

    .venv/bin/python tools/mutants.py                 # all of them
    .venv/bin/python tools/mutants.py -k fsync        # those whose name contains "fsync"
    .venv/bin/python tools/mutants.py --list

tests/long/test_mutants.py runs it in the long tier (SMPFS_LONG=1). When you add
a defence, add its mutant here, with the tests that must kill it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mutant:
    name: str
    file: str
    patches: list[tuple[str, str]]        # (exact text, occurring once; its replacement)
    tests: list[str]
    why: str = ""


M = Mutant
MUTANTS = [
    # -- durability ------------------------------------------------------------------------
    M("durable-path-no-fsync", "smpfs/store/statestore.py",
      [("                        io.syncfs(fd)\n", "                        pass\n"),
       ("                            io.fsync(fd)\n", "                            pass\n"),
       ("                        io.fsync_dir(d)\n", "                        pass\n"),
       ("                    io.fsync(wal_fd)\n", "                    pass\n")],
      ["tests/unit/test_power_cut.py"], "the store's durable point syncs nothing"),
    M("fsync-of-one-file-leaves-other-block-files-unsynced", "smpfs/store/statestore.py",
      [("        counters = self.take_unsynced(None)\n", "        counters = self.take_unsynced(ino)\n")],
      ["tests/unit/test_power_cut.py"], "the WAL fsync makes rows durable whose block files are not"),
    M("fuse-fsync-does-nothing", "smpfs/mount/operations.py",
      [("            raise _fail(errno.EIO)\n        await self.stores.durable(st, local)\n",
        "            raise _fail(errno.EIO)\n")],
      ["tests/unit/test_power_cut.py"]),
    M("fuse-fsyncdir-does-nothing", "smpfs/mount/operations.py",
      [("            await self.stores.durable(self.stores.open[rowid], NO_BLOCKS)\n", "            pass\n")],
      ["tests/unit/test_power_cut.py"]),
    M("counter-file-not-fsynced-before-rename", "smpfs/store/counter.py",
      [("        io.fsync(fd)\n", "        pass\n")],
      ["tests/unit/test_power_cut.py"], "a nonce high-water mark that a power cut can empty"),
    M("release-acknowledged-before-durable", "smpfs/mount/daemon.py",
      [("            await self.freeze(rowid)                 # a release is acknowledged once durable\n",
        "            self.freeze_later([rowid])\n")],
      ["tests/mount/test_release_durable.py"], "the old computer is wiped while its state is in the page cache"),
    M("release-never-made-durable", "smpfs/mount/daemon.py",
      [("            await self.ops.stores.durable(st)\n            if st.db is not None:\n",
        "            if st.db is not None:\n")],
      ["tests/mount/test_release_durable.py"], "a released store durable only at the next timer tick"),
    M("store-removal-not-made-durable", "smpfs/store/layout.py",
      [("    diskio.io.rmtree(dying)\n    fsync_dir(folder)\n", "    diskio.io.rmtree(dying)\n")],
      ["tests/unit/test_power_cut.py"], "'deleted' recorded while the store's files may come back"),
    # -- crypto ----------------------------------------------------------------------------
    M("aead-associated-data-none", "smpfs/crypto/chunk.py",
      [("    return _AD.pack(_MAGIC, store_id, ino, blkno, i, last)\n", "    return None\n")],
      ["tests/unit/test_store.py", "tests/mount/test_crypto_at_rest.py"]),
    M("nonce-without-chunk-index", "smpfs/crypto/chunk.py",
      [("        aead.encrypt_into(_NONCE.pack(counter, i), piece,",
        "        aead.encrypt_into(_NONCE.pack(counter, 0), piece,"),
       ("            aead.decrypt_into(_NONCE.pack(counter, i), piece,",
        "            aead.decrypt_into(_NONCE.pack(counter, 0), piece,")],
      ["tests/unit/test_store.py", "tests/unit/test_crypto_vectors.py"], "every chunk of a block under one nonce"),
    M("key-wrap-not-bound-to-store", "smpfs/crypto/keys.py",
      [("    return nonce + AESGCM(master).encrypt(nonce, data_key, _WRAP_AD + store_id.encode())",
        "    return nonce + AESGCM(master).encrypt(nonce, data_key, _WRAP_AD)"),
       ("        return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], _WRAP_AD + store_id.encode())",
        "        return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], _WRAP_AD)")],
      ["tests/unit/test_store.py", "tests/unit/test_crypto_vectors.py"]),
    M("crypto-shredding-keeps-the-key", "smpfs/lifecycle/retention.py",
      [("    cur = transition(smp, cur, Status.DELETING, wrapped_key=None,",
        "    cur = transition(smp, cur, Status.DELETING,")],
      ["tests/unit/test_lifecycle.py", "tests/unit/test_power_cut.py"]),
    # -- access ----------------------------------------------------------------------------
    M("access-destination-may-write-after-release", "smpfs/lifecycle/access.py",
      [("        return RO if uid == store_row[\"dest_uid\"] else None",
        "        return RW if uid == store_row[\"dest_uid\"] else None")],
      ["tests/unit/test_lifecycle.py", "tests/mount/test_privilege.py"]),
    M("access-source-reads-after-release", "smpfs/lifecycle/access.py",
      [("        return RO if uid == store_row[\"dest_uid\"] else None",
        "        return RO if uid in (store_row[\"dest_uid\"], store_row[\"source_uid\"]) else None")],
      ["tests/unit/test_lifecycle.py", "tests/mount/test_privilege.py"]),
    M("access-root-reads-user-state", "smpfs/lifecycle/access.py",
      [("        return None                      # root administers the SMP, never reads user state",
        "        return RO")],
      ["tests/unit/test_lifecycle.py", "tests/mount/test_privilege.py"]),
    M("write-handle-not-rechecked-after-release", "smpfs/mount/operations.py",
      [("            if not h.writable or access_mod.level(rec.as_row(), h.uid) != \"rw\":",
        "            if not h.writable:")],
      ["tests/unit/test_layers.py"], "one layer of two: the store layer is tested alone too"),
    M("store-layer-never-read-only", "smpfs/store/statestore.py",
      [("        if self.read_only:\n            raise err(errno.EROFS)", "        pass")],
      ["tests/unit/test_store.py"], "one layer of two: the FUSE layer is tested alone too"),
    M("control-request-caller-uid-trusted", "smpfs/mount/control.py",
      [("            cmd, args = str(msg[\"cmd\"]), dict(msg.get(\"args\") or {})\n",
        "            cmd, args = str(msg[\"cmd\"]), dict(msg.get(\"args\") or {})\n"
        "            uid = int(msg.get(\"caller_uid\", args.pop(\"caller_uid\", uid)))\n")],
      ["tests/mount/test_privilege.py"]),
    M("non-root-chown-to-another-uid", "smpfs/mount/checks.py",
      [("            if not ((c.owns(a.uid) and attr.st_uid == a.uid) or c.has(CAP_CHOWN)):\n"
        "                raise _fail(errno.EPERM)", "            pass")],
      ["tests/mount/test_privilege.py"]),
    M("rename-exchange-link-counts-reversed", "smpfs/store/tree.py",
      [("                delta = 1 if stat.S_ISDIR(sa.mode) else -1",
        "                delta = -1 if stat.S_ISDIR(sa.mode) else 1")],
      ["tests/unit/test_store.py"]),
    # -- space and lifecycle --------------------------------------------------------------
    M("min-free-space-not-enforced", "smpfs/store/blocks.py",
      [("        if free - nbytes - pending < floor:", "        if False:")],
      ["tests/mount/test_enospc.py"]),
    M("capture-released-twice", "smpfs/lifecycle/release.py",
      [("    if s is None or s[\"status\"] != Status.CAPTURING:", "    if s is None:")],
      ["tests/unit/test_lifecycle.py"]),
    M("write-back-error-forgotten", "smpfs/store/blocks.py",
      [("            self._errors[job.ino] = error if isinstance(error, OSError) else err(errno.EIO, str(error))",
        "            pass")],
      ["tests/unit/test_layers.py"], "a block a worker failed to write, reported nowhere"),
]


def copy_repo(dest: Path) -> None:
    for name in ("smpfs", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def apply(m: Mutant, dest: Path) -> str | None:
    """Apply the patch in ``dest``; the reason it does not apply, or None."""
    path = dest / m.file
    text = path.read_text()
    for old, new in m.patches:
        n = text.count(old)
        if n != 1:
            return f"{m.file}: {n} occurrences of {old.strip()[:60]!r}"
        text = text.replace(old, new)
    path.write_text(text)
    return None


def run(m: Mutant, timeout: float, verbose: bool) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix=f"smpfs-mutant-{m.name}-") as tmp:
        dest = Path(tmp)
        os.chmod(dest, 0o755)                  # mount tests' other uids import from here
        copy_repo(dest)
        why = apply(m, dest)
        if why:
            return "stale", why
        env = dict(os.environ, PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1")
        env.pop("SMPFS_LONG", None)
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests]
        try:
            r = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed", f"timed out after {timeout:.0f} s"
        last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
        if verbose:
            print(r.stdout[-3000:], r.stderr[-2000:], sep="\n")
        if r.returncode == 0:
            return "survived", last
        if r.returncode in (4, 5):             # usage error, nothing collected: not a kill
            return "stale", f"pytest exit {r.returncode}: {last}"
        return "killed", last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", dest="match", help="only mutants whose name contains this")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per mutant")
    ap.add_argument("-v", action="store_true", help="show the test output")
    a = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not a.match or a.match in m.name]
    if a.list:
        for m in chosen:
            print(f"{m.name:55} {m.file:30} {' '.join(m.tests)}")
        return 0
    bad = 0
    for m in chosen:
        t0 = time.monotonic()
        verdict, detail = run(m, a.timeout, a.v)
        bad += verdict != "killed"
        print(f"{verdict:9} {m.name:55} {time.monotonic() - t0:6.0f} s  {detail}", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} mutants killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
