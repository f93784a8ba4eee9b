"""A disk that forgets what was not made durable: the power-cut simulator.

:class:`PowerCutDisk` is a :class:`smpfs.store.diskio.DiskIO` (install it with
``diskio.set_io``). Every call still reaches the real files (the code under
test reads back what it wrote), and the simulator keeps, beside them, the
*durable image*: what a machine would find after losing power right now.
See test_power_cut.py for the model's rules and assumptions.

Identity of a file is its inode number plus a generation the simulator bumps
whenever it sees the inode created (so a reused inode number does not inherit
the durable data of the file that had it before).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from smpfs.store.diskio import DiskIO

SQLITE_SIDE = ("-wal", "-shm", "-journal")


def _is_sqlite(name: str) -> bool:
    return name.endswith(".db") or any(name.endswith(".db" + s) for s in SQLITE_SIDE)


def snapshot_db(path: str) -> bytes:
    """The committed content of a sqlite database, as one file image. Read
    from a copy of the database and its WAL: opening it in place would create
    -wal/-shm files (in a directory being removed, say)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        for suffix in ("", "-wal"):
            try:
                shutil.copyfile(path + suffix, os.path.join(tmp, "db" + suffix))
            except FileNotFoundError:
                if not suffix:
                    raise
        src = sqlite3.connect(os.path.join(tmp, "db"))
        mem = sqlite3.connect(":memory:")
        try:
            src.backup(mem)
            return mem.serialize()
        finally:
            src.close()
            mem.close()


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass
class Image:
    """A durable state: directory listings, file contents, sqlite databases."""
    root: tuple
    dirs: dict = field(default_factory=dict)     # dir key -> {name: (kind, key)}
    data: dict = field(default_factory=dict)     # file key -> bytes
    dbs: dict = field(default_factory=dict)      # path relative to root -> db image

    def copy(self) -> Image:
        return Image(self.root, dict(self.dirs), dict(self.data), dict(self.dbs))

    def materialize(self, dest: Path) -> None:
        """Write this state as a directory tree at ``dest`` (which must not exist)."""
        os.mkdir(dest)
        self._build(self.root, str(dest), "")

    def _build(self, key, dpath: str, rel: str) -> None:
        for name, (kind, ck) in self.dirs.get(key, {}).items():
            p, r = os.path.join(dpath, name), os.path.join(rel, name)
            if kind == "d":
                os.mkdir(p, 0o700)
                self._build(ck, p, r)
            elif kind == "s":
                if name.endswith(".db") and r in self.dbs:
                    _write(p, self.dbs[r])
            elif kind == "f":
                _write(p, self.data.get(ck, b""))     # never synced: empty (delayed allocation)


class PowerCutDisk(DiskIO):
    """Records durability per file and per directory under ``root``.

    ``full_sync_dbs``: sqlite databases run with ``synchronous=FULL`` (every
    commit durable): their committed state is durable at any moment. Every
    other database under ``root`` is durable as of the last ``fsync`` of its
    WAL (``synchronous=NORMAL``) or ``syncfs``.
    ``on_event(what)`` is called before every call that changes or syncs
    anything: each is a cut point.
    """

    def __init__(self, root, full_sync_dbs=()):
        self.root = os.path.realpath(root)
        self.gen: dict[int, int] = {}
        self.events = 0
        self.on_event = None
        self.version = 0
        self._full = {}
        for p in full_sync_dbs:
            rp = os.path.realpath(p)
            conn = sqlite3.connect(f"file:{rp}?mode=ro", uri=True, check_same_thread=False)
            self._full[os.path.relpath(rp, self.root)] = [conn, None]
        self.durable = self.current()
        self.poll()

    # -- identity and the current state -------------------------------------------------

    def _key(self, st) -> tuple:
        return (st.st_ino, self.gen.get(st.st_ino, 0))

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def _listing(self, path: str) -> dict:
        out = {}
        for name in os.listdir(path):
            st = os.lstat(os.path.join(path, name))
            if _is_sqlite(name):
                kind = "s"
            elif stat.S_ISDIR(st.st_mode):
                kind = "d"
            elif stat.S_ISREG(st.st_mode):
                kind = "f"
            else:
                kind = "o"
            out[name] = (kind, self._key(st))
        return out

    def current(self) -> Image:
        """What is on the (real) disk now, as if all of it were durable."""
        img = Image(self._key(os.lstat(self.root)))
        for dpath, _dirs, files in os.walk(self.root):
            img.dirs[self._key(os.lstat(dpath))] = self._listing(dpath)
            for name in files:
                p = os.path.join(dpath, name)
                if _is_sqlite(name):
                    if name.endswith(".db"):
                        img.dbs[os.path.relpath(p, self.root)] = snapshot_db(p)
                    continue
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):
                    with open(p, "rb") as f:
                        img.data[self._key(st)] = f.read()
        return img

    def poll(self) -> int:
        """Note commits of the full-sync databases (durable as they happen); the current version."""
        for rel, slot in self._full.items():
            v = slot[0].execute("PRAGMA data_version").fetchone()[0]
            if v != slot[1]:
                slot[1] = v
                self.durable.dbs[rel] = snapshot_db(os.path.join(self.root, rel))
                self.version += 1
        return self.version

    def freeze(self) -> Image:
        return self.durable.copy()

    def mixed(self, rng, p: float = 0.5) -> Image:
        """A state a real disk may also be in: each directory listing and each
        file's content either durable or as it is now (written back early).
        sqlite databases stay as durable (see the test module)."""
        now = self.current()
        img = self.durable.copy()
        for k, v in now.dirs.items():
            if rng.random() < p:
                img.dirs[k] = v
        for k, v in now.data.items():
            if rng.random() < p:
                img.data[k] = v
        return img

    def close_all(self) -> None:
        for slot in self._full.values():
            slot[0].close()

    # -- events --------------------------------------------------------------------------

    def _event(self, what: str) -> None:
        self.events += 1
        if self.on_event is not None:
            self.on_event(what)

    def _path_of(self, fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def _sync_fd(self, fd: int) -> None:
        path = self._path_of(fd)
        if path.endswith(" (deleted)") or not self._inside(path):
            return
        st = os.fstat(fd)
        name = os.path.basename(path)
        if stat.S_ISDIR(st.st_mode):
            self.durable.dirs[self._key(st)] = self._listing(path)
        elif _is_sqlite(name):
            db = path[:-len("-wal")] if name.endswith("-wal") else path
            if db.endswith(".db"):
                self.durable.dbs[os.path.relpath(db, self.root)] = snapshot_db(db)
        else:
            with open(f"/proc/self/fd/{fd}", "rb") as f:      # the same file, even opened write-only
                self.durable.data[self._key(st)] = f.read()
        self.version += 1

    # -- the interface --------------------------------------------------------------------

    def open(self, path, flags, mode=0o777, *, dir_fd=None):
        self._event("open")
        created = bool(flags & os.O_CREAT) and not os.path.lexists(path)
        fd = os.open(path, flags, mode, dir_fd=dir_fd)
        if created:
            ino = os.fstat(fd).st_ino
            self.gen[ino] = self.gen.get(ino, 0) + 1
        return fd

    def write(self, fd, data):
        self._event("write")
        return os.write(fd, data)

    def pwrite(self, fd, data, offset):
        self._event("pwrite")
        return os.pwrite(fd, data, offset)

    def fallocate(self, fd, offset, length):
        self._event("fallocate")
        return os.posix_fallocate(fd, offset, length)

    def fsync(self, fd):
        self._event("fsync")
        self._sync_fd(fd)

    def fdatasync(self, fd):
        self._event("fdatasync")
        self._sync_fd(fd)

    def syncfs(self, fd):
        self._event("syncfs")
        self.durable = self.current()
        self.version += 1

    def rename(self, src, dst):
        self._event("rename")
        os.rename(src, dst)

    def unlink(self, path):
        self._event("unlink")
        os.unlink(path)

    def mkdir(self, path, mode=0o777):
        self._event("mkdir")
        os.mkdir(path, mode)
        ino = os.lstat(path).st_ino
        self.gen[ino] = self.gen.get(ino, 0) + 1

    def rmdir(self, path):
        self._event("rmdir")
        os.rmdir(path)
