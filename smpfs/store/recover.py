"""Recovery: open one state store with nothing but its recovery key.

For the day the SMP itself is gone (no state dir, no master key, no
daemon): ``smpfs recover --key KEY FOLDER/<store id> OUTDIR`` reads the
store's own ``store.db`` and block files straight from the storage folder
and writes the decrypted tree (content, modes, owners when root, times,
symlinks, hard links, xattrs) into OUTDIR. The store is never modified.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..crypto.chunk import BLOCK_SIZE
from ..crypto.keys import StoreKeys, parse_recovery_key
from ..errors import IntegrityError, KeyFileError, NotFound, UsageError
from .layout import ROOT
from .statestore import StateStore


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
        _walk(st, outdir, stats, progress)
    finally:
        st.abandon()
    return stats


def _walk(st, outdir: Path, stats: dict, progress) -> None:
    """Copy the tree depth first without recursion, creating everything
    relative to open directory fds (openat & co), so depth is limited by
    neither Python's recursion limit nor PATH_MAX."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:                              # one fd per directory level of the walk
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    root_fd = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY)
    seen: dict[int, str] = {}                    # inode -> path relative to OUTDIR (hard links)
    # each frame: [dir inode, its fd, its relative path, readdir cursor]
    stack = [[ROOT, root_fd, "", 0]]
    while stack:
        frame = stack[-1]
        ino, dfd, rel, after = frame
        batch = st.readdir(ino, after, 256)
        if not batch:                            # the directory is done: its mode and times last
            a = st.getattr(ino)
            _finish(st, a, dfd, stats)
            os.close(dfd)
            stack.pop()
            continue
        frame[3] = batch[-1][0]
        for _cursor, name, a in batch:
            child_rel = f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name)
            try:
                fd = _create(st, a, dfd, name, seen, child_rel, root_fd, stats, progress)
            except OSError as e:
                stats["errors"].append(f"{child_rel}: {e.strerror}")
                continue
            if fd is not None:
                stack.append([a.ino, fd, child_rel, 0])


def _create(st, a, dfd, name: bytes, seen, rel, root_fd, stats, progress):
    """Create one entry under ``dfd``; return an fd if it is a directory to descend."""
    mode = a.mode
    if stat.S_ISDIR(mode):
        os.mkdir(name, 0o700, dir_fd=dfd)
        stats["dirs"] += 1
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
    if a.ino in seen:
        os.link(seen[a.ino], name, src_dir_fd=root_fd, dst_dir_fd=dfd, follow_symlinks=False)
        stats["links"] += 1
        return None
    seen[a.ino] = rel
    if stat.S_ISLNK(mode):
        os.symlink(st.readlink(a.ino), name, dir_fd=dfd)
        if os.geteuid() == 0:
            os.chown(name, a.uid, a.gid, dir_fd=dfd, follow_symlinks=False)
        os.utime(name, ns=(a.atime_ns, a.mtime_ns), dir_fd=dfd, follow_symlinks=False)
        return None
    if stat.S_ISREG(mode):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        try:
            pos = 0
            while pos < a.size:
                data = st.read(a.ino, pos, BLOCK_SIZE)
                if not data:
                    break
                os.write(fd, data)
                pos += len(data)
            os.ftruncate(fd, a.size)
            _finish(st, a, fd, stats)
        finally:
            os.close(fd)
        stats["files"] += 1
        stats["bytes"] += a.size
        if progress:
            progress(stats)
        return None
    if stat.S_ISFIFO(mode):
        os.mkfifo(name, 0o600, dir_fd=dfd)
    else:
        os.mknod(name, mode, a.rdev, dir_fd=dfd)
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=dfd) \
        if stat.S_ISFIFO(mode) else None
    if fd is not None:
        try:
            _finish(st, a, fd, stats)
        finally:
            os.close(fd)
    else:
        os.chmod(name, stat.S_IMODE(mode), dir_fd=dfd)
        os.utime(name, ns=(a.atime_ns, a.mtime_ns), dir_fd=dfd)
    return None


def _finish(st, a, fd: int, stats: dict) -> None:
    """Xattrs, owner (as root), mode and times of an open file or directory."""
    for xname in st.listxattr(a.ino):
        try:
            os.setxattr(fd, xname, st.getxattr(a.ino, xname))
        except OSError:
            pass
    if os.geteuid() == 0:
        os.fchown(fd, a.uid, a.gid)
    os.fchmod(fd, stat.S_IMODE(a.mode))
    os.utime(fd, ns=(a.atime_ns, a.mtime_ns))
