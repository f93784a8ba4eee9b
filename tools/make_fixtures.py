#!/usr/bin/env python3
"""Generate tests/fixtures/format1/: a state dir whose stores were made by
store format 1, with the code of that format (taken from git history, not
rewritten), so a test can prove today's smpfs still opens and reads them.

Run once from the repository root (the output is committed as data; running
it again makes new random keys and ids):

    .venv/bin/python tools/make_fixtures.py

Two stores, one per variant of format 1 that exists in the wild:

* ``noinline``: made by the code before inline blocks (commit OLD_COMMIT):
  ``blocks`` has no ``data`` column, every block is a file;
* ``inline``: made by the code that added inline blocks but kept the format
  number at 1 (commit INLINE_COMMIT): small blocks live in ``blocks.data``.

``manifest.json`` lists what each store holds (store id, owner uid, and per
path: type, mode, size, sha256, symlink target, xattrs), written from what
the generator put in, not from reading it back.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OLD_COMMIT = "df2b75a^"          # format 1, before inline blocks
INLINE_COMMIT = "df2b75a"        # format 1 with blocks.data (inline blocks)
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "format1"

# What each store gets. Content is derived from a fixed seed, so the manifest
# can be recomputed here; the uid is the store's source computer.
BUILD = r'''
import hashlib, json, os, random, stat, sys
from pathlib import Path
from smpfs.smp import Smp
from smpfs import api, key
from smpfs.statestore import StateStore, ROOT

state, name, uid, seed, init = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
s = Smp.init(state, server="SMP01") if init else Smp.open(state)
api.dispatch(s, 0, "computer_add", {"name": name, "uid": uid})
sid = api.dispatch(s, uid, "request_capture", {})["store_id"]
row = s.store(sid)
keys = key.StoreKeys.from_data_key(sid, s.data_key(row))
st = StateStore(Path(s.folder(row["folder_id"])["path"]) / sid, keys)
rnd = random.Random(seed)
F = stat.S_IFREG
man = {}
def put(parent, nm, data, mode=0o644):
    a = st.mknode(parent, nm, F | mode, uid, uid)
    st.write(a.ino, 0, data)
    return a.ino
small = b"small file, one block " * 3
big = rnd.randbytes((1 << 20) + 300_000)            # two blocks, the second short
mid = rnd.randbytes(40_000)                          # one block over 16 KiB: a file even when inlining
i_small = put(ROOT, b"small.txt", small)
put(ROOT, b"big.bin", big, 0o600)
put(ROOT, b"mid.bin", mid)
put(ROOT, b"empty", b"")
sp = st.mknode(ROOT, b"sparse", F | 0o644, uid, uid).ino
st.write(sp, 3 << 20, b"tail after a hole")
d = st.mknode(ROOT, b"dir", stat.S_IFDIR | 0o750, uid, uid).ino
put(d, "n\u00e4me w\u00efth \u00fcnicode".encode(), b"nested")
st.mknode(ROOT, b"link", stat.S_IFLNK | 0o777, uid, uid, target=b"small.txt")
st.link(i_small, ROOT, b"hard")
st.setxattr(i_small, b"user.k", b"the value")
st.setattr(i_small, mtime_ns=1_600_000_000_123_456_789)
st.close()
api.dispatch(s, uid, "release_capture", {})
s.close()
print(sid)
'''


def extract(commit: str, dest: Path) -> None:
    """The whole smpfs package as it was at ``commit``, into ``dest/smpfs``."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", commit, "smpfs/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for f in files:
        out = dest / f
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{f}"],
                                       check=True, capture_output=True).stdout)


def expected(seed: int, uid: int) -> dict:
    import hashlib
    import random
    rnd = random.Random(seed)
    small = b"small file, one block " * 3
    big = rnd.randbytes((1 << 20) + 300_000)
    mid = rnd.randbytes(40_000)

    def f(data, mode=0o644, **kw):
        return {"type": "file", "mode": mode, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), **kw}
    sparse = bytes(3 << 20) + b"tail after a hole"
    return {
        "small.txt": f(small, xattrs={"user.k": "the value"}, nlink=2, mtime_ns=1_600_000_000_123_456_789),
        "hard": f(small, xattrs={"user.k": "the value"}, nlink=2),
        "big.bin": f(big, 0o600),
        "mid.bin": f(mid),
        "empty": f(b""),
        "sparse": f(sparse),
        "dir": {"type": "dir", "mode": 0o750},
        "dir/n\u00e4me w\u00efth \u00fcnicode": f(b"nested"),
        "link": {"type": "symlink", "target": "small.txt"},
    }


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"made_by": {}, "stores": {}}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        for i, (variant, commit, uid, seed) in enumerate(
                [("noinline", OLD_COMMIT, 1001, 11), ("inline", INLINE_COMMIT, 1002, 12)]):
            pkg = Path(tmp) / f"pkg-{variant}"
            extract(commit, pkg)
            env = dict(os.environ, PYTHONPATH=str(pkg))
            sid = subprocess.run([sys.executable, "-c", BUILD, str(state), f"PC-{variant.upper()}",
                                  str(uid), str(seed), "1" if i == 0 else "0"],
                                 check=True, capture_output=True, text=True, env=env, cwd=tmp).stdout.strip()
            rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], check=True,
                                 capture_output=True, text=True).stdout.strip()
            manifest["made_by"][variant] = rev
            manifest["stores"][variant] = {"store_id": sid, "uid": uid, "files": expected(seed, uid)}
        for p in state.rglob("*"):
            if p.name.endswith(("-wal", "-shm")) or p.name in (".smpfs-reserve", "control.sock", "daemon.json",
                                                                 "smpfs.log"):
                p.unlink()
        shutil.copytree(state, OUT / "state")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
