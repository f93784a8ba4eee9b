"""Recovery: open one state store with nothing but its recovery key.

For the day the SMP itself is gone (no state dir, no master key, no
daemon): ``smpfs recover --key KEY FOLDER/<store id> OUTDIR`` reads the
store's own ``store.db`` and block files straight from the storage folder
and writes the decrypted tree (content, modes, owners when root, times,
symlinks, hard links, xattrs) into OUTDIR. The store is never modified.
"""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
from pathlib import Path

from .chunk import BLOCK_SIZE
from .errors import IntegrityError, KeyFileError, NotFound, UsageError
from .key import StoreKeys, parse_recovery_key
from .statestore import ROOT, StateStore


def recover(key_text: str, store_path, outdir, progress=None) -> dict:
    store_path = Path(store_path)
    outdir = Path(outdir)
    if not (store_path / "store.db").is_file():
        raise NotFound(f"{store_path} is not a state store (no store.db)",
                       "give the store's directory in the storage folder: FOLDER/<64 hex id>")
    store_id = store_path.name
    keys = StoreKeys.from_data_key(store_id, parse_recovery_key(key_text))
    if outdir.exists() and any(outdir.iterdir()):
        raise UsageError(f"{outdir} is not empty", "recover into a new or empty directory")
    outdir.mkdir(parents=True, exist_ok=True)
    st = StateStore(store_path, keys)
    st.read_only = True
    try:
        try:
            st.listxattr(ROOT)
            st.readdir(ROOT, 0, 1)
        except IntegrityError:
            raise KeyFileError("that recovery key does not open this store")
        stats = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "errors": []}
        seen: dict[int, Path] = {}
        dirs: list[tuple[Path, object]] = []
        _copy_dir(st, ROOT, outdir, seen, dirs, stats, progress)
        for path, a in reversed(dirs):           # directory times last, deepest first
            os.utime(path, ns=(a.atime_ns, a.mtime_ns))
    finally:
        st.abandon()
    return stats


def _copy_dir(st, ino, dest, seen, dirs, stats, progress):
    after = 0
    while True:
        batch = st.readdir(ino, after)
        if not batch:
            break
        for cursor, name, a in batch:
            after = cursor
            path = dest / os.fsdecode(name)
            try:
                _copy_one(st, a, path, seen, dirs, stats, progress)
            except OSError as e:
                stats["errors"].append(f"{path}: {e.strerror}")
    a = st.getattr(ino)
    os.chmod(dest, stat.S_IMODE(a.mode))
    dirs.append((dest, a))


def _copy_one(st, a, path, seen, dirs, stats, progress):
    mode = a.mode
    if stat.S_ISDIR(mode):
        path.mkdir()
        stats["dirs"] += 1
        _copy_dir(st, a.ino, path, seen, dirs, stats, progress)
    elif a.ino in seen:
        os.link(seen[a.ino], path)
        stats["links"] += 1
        return
    elif stat.S_ISLNK(mode):
        os.symlink(st.readlink(a.ino), path)
    elif stat.S_ISREG(mode):
        with open(path, "wb") as f:
            pos = 0
            while pos < a.size:
                data = st.read(a.ino, pos, BLOCK_SIZE)
                if not data:
                    break
                f.write(data)
                pos += len(data)
            f.truncate(a.size)
        stats["files"] += 1
        stats["bytes"] += a.size
        if progress:
            progress(stats)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(path)
    else:
        os.mknod(path, mode, a.rdev)
    seen[a.ino] = path
    for xname in st.listxattr(a.ino):
        try:
            os.setxattr(path, xname, st.getxattr(a.ino, xname), follow_symlinks=False)
        except OSError:
            pass
    if os.geteuid() == 0:
        os.chown(path, a.uid, a.gid, follow_symlinks=False)
    if not stat.S_ISLNK(mode):
        if not stat.S_ISDIR(mode):
            os.chmod(path, stat.S_IMODE(mode))
            os.utime(path, ns=(a.atime_ns, a.mtime_ns))
    else:
        os.utime(path, ns=(a.atime_ns, a.mtime_ns), follow_symlinks=False)
