"""Recovery: open one state store with nothing but its recovery key.

For the day the SMP itself is gone (no state dir, no master key, no
daemon): ``smpfs recover --key KEY FOLDER/<store id> OUTDIR`` reads the
store's own ``store.db`` and block files straight from the storage folder
and writes the decrypted tree (content, modes, owners when root, times,
symlinks, hard links, xattrs) into OUTDIR.

* The store is opened read-only (see readonly.py): not a byte of it changes,
  and read-only media (a backup disk) work.
* It runs as root into directories others may write to, so it never follows
  a symlink and never acts on a path: OUTDIR is created here (an existing one
  is taken only if it is an empty directory, not a symlink), every entry is
  made relative to an open directory fd with ``O_NOFOLLOW``/``O_EXCL``, and
  owners, modes and times are set on fds. Directories stay root-only (0700)
  until everything in them is written.
* It is honest about damage: a file with a block that fails authentication
  is not left looking complete. What could be read is kept as
  ``NAME.damaged`` (root-only, unreadable ranges zero-filled) and every such
  file, and everything else not recovered, is listed in ``stats["errors"]``
  (the CLI then exits 20).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from ..crypto.chunk import BLOCK_SIZE
from ..crypto.keys import StoreKeys, parse_recovery_key
from ..errors import IntegrityError, KeyFileError, NotFound, SmpError, UsageError
from .layout import ROOT
from .statestore import StateStore

DAMAGED_SUFFIX = ".damaged"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def recover(key_text: str, store_path, outdir, progress=None) -> dict:
    store_path = Path(store_path)
    if not (store_path / "store.db").is_file():
        raise NotFound(f"{store_path} is not a state store (no store.db)",
                       "give the store's directory in the storage folder: FOLDER/<64 hex id>")
    store_id = store_path.name
    keys = StoreKeys.from_data_key(store_id, parse_recovery_key(key_text))
    st = StateStore(store_path, keys, read_only=True)
    try:
        try:
            st.listxattr(ROOT)
            st.readdir(ROOT, 0, 1)
        except IntegrityError:
            raise KeyFileError("that recovery key does not open this store")
        root_fd = open_outdir(outdir)
        stats = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "errors": []}
        try:
            _walk(st, root_fd, stats, progress)
        finally:
            os.close(root_fd)
    finally:
        st.close()
    return stats


def open_outdir(outdir) -> int:
    """Create OUTDIR (its parents as needed) and return an fd of it. An existing
    OUTDIR is taken only if it is an empty directory and not a symlink; it is
    then made the caller's own and 0700 before it is used."""
    path = os.path.abspath(os.fspath(outdir))
    parent, name = os.path.split(path)
    if not name:
        raise UsageError(f"cannot recover into {path}", "recover into a new or empty directory")
    os.makedirs(parent, exist_ok=True)
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
            created = True
        except FileExistsError:
            created = False
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UsageError(f"{path} is not a directory (a symlink or a file): refusing to recover into it",
                                 "recover into a new or empty directory")
            raise
    finally:
        os.close(pfd)
    if created:
        return fd
    try:
        if os.listdir(fd):
            raise UsageError(f"{path} is not empty", "recover into a new or empty directory")
        # someone else's empty directory: take it over first, so nobody can
        # plant anything in it while the store is written into it; look again after
        if os.fstat(fd).st_uid != os.geteuid():
            os.fchown(fd, os.geteuid(), os.getegid())
        os.fchmod(fd, 0o700)
        if os.listdir(fd):
            raise UsageError(f"{path} is not empty", "recover into a new or empty directory")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _walk(st, root_fd: int, stats: dict, progress) -> None:
    """Copy the tree depth first without recursion, creating everything
    relative to open directory fds (openat & co), so depth is limited by
    neither Python's recursion limit nor PATH_MAX."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:                              # one fd per directory level of the walk
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    seen: dict[int, tuple[str, bool]] = {}       # inode -> (path relative to OUTDIR, damaged?): hard links
    # each frame: [dir inode, its fd, its relative path, readdir cursor]
    stack: list[list[Any]] = [[ROOT, os.dup(root_fd), "", 0]]
    while stack:
        frame = stack[-1]
        ino, dfd, rel, after = frame
        try:
            batch = st.readdir(ino, after, 256)
        except (OSError, SmpError) as e:
            stats["errors"].append(f"{rel or '.'}/: entries not recovered: {_why(e)}")
            batch = []
        if not batch:                            # the directory is done: its mode and times last
            try:
                _finish(st, st.getattr(ino), dfd, stats, rel or ".")
            except (OSError, SmpError) as e:
                stats["errors"].append(f"{rel or '.'}: attributes not recovered: {_why(e)}")
            os.close(dfd)
            stack.pop()
            continue
        frame[3] = batch[-1][0]
        for _cursor, name, a in batch:
            child_rel = f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name)
            try:
                fd = _create(st, a, dfd, name, seen, child_rel, root_fd, stats, progress)
            except (OSError, SmpError) as e:
                stats["errors"].append(f"{child_rel}: not recovered: {_why(e)}")
                continue
            if fd is not None:
                stack.append([a.ino, fd, child_rel, 0])


def _why(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def _open_beneath(root_fd: int, rel: str) -> tuple[int, str]:
    """The fd of ``rel``'s directory (every component opened without following
    a symlink, from ``root_fd``) and its last component."""
    *dirs, last = rel.split("/")
    fd = os.dup(root_fd)
    try:
        for d in dirs:
            nfd = os.open(d, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd, last


def _create(st, a, dfd, name: bytes, seen, rel, root_fd, stats, progress):
    """Create one entry under ``dfd``; return an fd if it is a directory to descend."""
    mode = a.mode
    if stat.S_ISDIR(mode):
        os.mkdir(name, 0o700, dir_fd=dfd)
        stats["dirs"] += 1
        return os.open(name, _DIR_FLAGS, dir_fd=dfd)
    if a.ino in seen:
        first, damaged = seen[a.ino]
        if damaged:
            name = os.fsencode(name) + DAMAGED_SUFFIX.encode()      # the same damaged content
            stats["errors"].append(f"{rel}: not fully recovered: a hard link of {first[:-len(DAMAGED_SUFFIX)]}"
                                   f"; linked as {rel}{DAMAGED_SUFFIX}")
        sfd, sname = _open_beneath(root_fd, first)
        try:
            os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(sfd)
        stats["links"] += 1
        return None
    if stat.S_ISLNK(mode):
        os.symlink(st.readlink(a.ino), name, dir_fd=dfd)
        seen[a.ino] = (rel, False)
        if os.geteuid() == 0:
            os.chown(name, a.uid, a.gid, dir_fd=dfd, follow_symlinks=False)
        os.utime(name, ns=(a.atime_ns, a.mtime_ns), dir_fd=dfd, follow_symlinks=False)
        return None
    if stat.S_ISREG(mode):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dfd)
        bad = 0
        try:
            bad = _copy_content(st, a, fd)
            if bad:
                # never leave a damaged file looking complete
                os.rename(name, os.fsencode(name) + DAMAGED_SUFFIX.encode(), src_dir_fd=dfd, dst_dir_fd=dfd)
                rel += DAMAGED_SUFFIX
                stats["errors"].append(
                    f"{rel[:-len(DAMAGED_SUFFIX)]}: not fully recovered: {bad} byte(s) fail authentication or"
                    f" are missing; what could be read is in {rel} (unreadable ranges are zeros)")
            else:
                _finish(st, a, fd, stats, rel)
        finally:
            os.close(fd)
        seen[a.ino] = (rel, bool(bad))
        stats["files"] += 1
        stats["bytes"] += a.size
        if progress:
            progress(stats)
        return None
    if stat.S_ISFIFO(mode):
        os.mkfifo(name, 0o600, dir_fd=dfd)
    else:
        os.mknod(name, stat.S_IFMT(mode) | 0o600, a.rdev, dir_fd=dfd)
    seen[a.ino] = (rel, False)
    # an O_PATH fd (never opens a device or blocks on a fifo) pins the node just made;
    # its /proc/self/fd link reaches that very inode for chmod/chown/utime
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        if stat.S_IFMT(os.fstat(fd).st_mode) != stat.S_IFMT(mode):
            raise OSError(errno.EEXIST, f"{rel} was replaced while it was being made")
        pinned = f"/proc/self/fd/{fd}"
        if os.geteuid() == 0:
            os.chown(pinned, a.uid, a.gid)
        os.chmod(pinned, stat.S_IMODE(mode))
        os.utime(pinned, ns=(a.atime_ns, a.mtime_ns))
    finally:
        os.close(fd)
    return None


def _copy_content(st, a, fd: int) -> int:
    """Write a file's content into ``fd``; return how many bytes could not be read."""
    bad = 0
    pos = 0
    while pos < a.size:
        n = min(BLOCK_SIZE - pos % BLOCK_SIZE, a.size - pos)
        try:
            data = st.read(a.ino, pos, n)
        except OSError:
            data = b""
            bad += n
        if data:
            os.pwrite(fd, data, pos)
        pos += n
    os.ftruncate(fd, a.size)
    return bad


def _finish(st, a, fd: int, stats: dict, rel: str) -> None:
    """Xattrs, owner (as root), mode and times of an open file or directory."""
    try:
        xnames = st.listxattr(a.ino)
    except SmpError as e:
        stats["errors"].append(f"{rel}: extended attributes not recovered: {e}")
        xnames = []
    for xname in xnames:
        try:
            os.setxattr(fd, xname, st.getxattr(a.ino, xname))
        except SmpError as e:
            stats["errors"].append(f"{rel}: extended attribute {os.fsdecode(xname)} not recovered: {e}")
        except OSError:
            pass                                 # e.g. a trusted.* name as non-root: not ours to set
    if os.geteuid() == 0:
        os.fchown(fd, a.uid, a.gid)
    os.fchmod(fd, stat.S_IMODE(a.mode))
    os.utime(fd, ns=(a.atime_ns, a.mtime_ns))
