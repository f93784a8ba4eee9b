"""POSIX permission checks inside a store, as ext4 makes them.

The access table (:mod:`smpfs.lifecycle.access`) decides who reaches a store
at all. Inside it, the computer's processes meet the usual rules: owner /
group / other mode bits, the sticky bit, and the capabilities the caller
holds (``CAP_CHOWN``, ``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``,
``CAP_FOWNER``, ``CAP_FSETID``; ``CAP_MKNOD`` the kernel checks itself).

FUSE sends only the caller's fsuid, fsgid and pid. Supplementary groups and
effective capabilities are read from ``/proc/PID/status`` (one read gives
both) and kept for :data:`CRED_TTL` seconds per (pid, uid, gid): a process
that changes its groups or capabilities is seen with the new ones within
that time.

Why the kernel's caches may be kept (``default_permissions`` is off, so the
kernel checks no directory search permission itself, and a name it has
cached is walked without asking us): inside a store only one uid ever gets
in (the access table), so a cached name is only ever reused by that uid. A
name is cached only when that uid, with no supplementary group and no
capability, may search its directory: names reached
thanks to a group or a capability are given with entry timeout 0, so
another process of the same uid without them is asked again
(:meth:`Perms.cacheable`).
"""
from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass

CAP_CHOWN = 1 << 0
CAP_DAC_OVERRIDE = 1 << 1
CAP_DAC_READ_SEARCH = 1 << 2
CAP_FOWNER = 1 << 3
CAP_FSETID = 1 << 4
CAP_MKNOD = 1 << 27

R, W, X = 4, 2, 1
REACH = W | X                  # what adding or removing a name needs on its directory
CRED_TTL = 1.0                 # seconds a process's groups and capabilities are trusted


@dataclass(frozen=True)
class Cred:
    """Who asks: fsuid, fsgid, supplementary groups, effective capabilities.
    ``alias`` is a uid the caller stands in for (the source computer's, for
    the destination at restore: what the source owned, the destination owns)."""
    uid: int
    gid: int
    groups: frozenset = frozenset()
    caps: int = 0
    alias: int = -1

    def has(self, cap: int) -> bool:
        return bool(self.caps & cap)

    def owns(self, uid: int) -> bool:
        return uid == self.uid or uid == self.alias

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


def read_status(pid: int) -> tuple[frozenset, int]:
    """(supplementary groups, effective capabilities) of process ``pid``;
    none of either if it is gone."""
    groups: frozenset = frozenset()
    caps = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    groups = frozenset(int(g) for g in line[7:].split())
                elif line.startswith(b"CapEff:"):
                    caps = int(line[7:].strip(), 16)
                    break                          # CapEff comes after Groups
    except (OSError, ValueError):
        pass
    return groups, caps


class Creds:
    """Callers' credentials, cached briefly per (pid, uid, gid)."""

    def __init__(self, ttl: float = CRED_TTL):
        self.ttl = ttl
        self._cache: dict[tuple[int, int, int], tuple[float, frozenset, int]] = {}

    def of(self, pid: int, uid: int, gid: int, alias: int = -1) -> Cred:
        key = (pid, uid, gid)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or now - hit[0] > self.ttl:
            if len(self._cache) > 4096:
                self._cache = {k: v for k, v in self._cache.items() if now - v[0] <= self.ttl}
            groups, caps = read_status(pid)
            hit = self._cache[key] = (now, groups, caps)
        return Cred(uid, gid, hit[1], hit[2], alias)


def allowed(c: Cred, mode: int, uid: int, gid: int, want: int) -> bool:
    """May ``c`` get ``want`` (R|W|X bits) on an inode of ``mode``/``uid``/``gid``?
    (generic_permission: the class bits, then CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH.)"""
    if c.owns(uid):
        bits = (mode >> 6) & 7
    elif c.in_group(gid):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    if want & ~bits == 0:
        return True
    is_dir = stat.S_ISDIR(mode)
    if c.caps & CAP_DAC_OVERRIDE:
        # read and write always; execute a directory always, a file if anyone may
        if not (want & X) or is_dir or mode & 0o111:
            return True
    if c.caps & CAP_DAC_READ_SEARCH:
        if want == R or (is_dir and not (want & W)):
            return True
    return False


def may_delete(c: Cred, dmode: int, duid: int, fuid: int) -> bool:
    """The sticky-bit rule, once write and search on the directory are granted."""
    if not dmode & stat.S_ISVTX:
        return True
    return c.owns(fuid) or c.owns(duid) or c.has(CAP_FOWNER)


def owner_or(c: Cred, uid: int) -> bool:
    """The owner, or CAP_FOWNER (chmod, utime with explicit times, ...)."""
    return c.owns(uid) or c.has(CAP_FOWNER)


def access_want(mask: int) -> int:
    return (R if mask & os.R_OK else 0) | (W if mask & os.W_OK else 0) | (X if mask & os.X_OK else 0)


class Perms:
    """The mount's permission checker: callers' credentials, and the mode,
    owner and group of every store inode the kernel knows (kept from the
    attributes given to it), so a check costs no database query on the hot path."""

    def __init__(self, creds: Creds | None = None):
        self.creds = creds or Creds()
        self.attrs: dict[int, tuple[int, int, int]] = {}     # global ino -> (mode, uid, gid)

    def remember(self, entry) -> None:
        self.attrs[entry.st_ino] = (entry.st_mode, entry.st_uid, entry.st_gid)

    def drop(self, ino: int) -> None:
        self.attrs.pop(ino, None)

    def plain(self, uid: int, gid: int, alias: int) -> Cred:
        """The caller without groups or capabilities (no /proc read)."""
        return Cred(uid, gid, alias=alias)

    def full(self, ctx, alias: int) -> Cred:
        return self.creds.of(ctx.pid, ctx.uid, ctx.gid, alias)

    def check(self, ctx, alias: int, attr: tuple[int, int, int], want: int) -> Cred | None:
        """The caller's credentials if it may get ``want`` on ``attr``, else None.
        Groups and capabilities are read only when the mode bits alone refuse."""
        mode, uid, gid = attr
        c = self.plain(ctx.uid, ctx.gid, alias)
        if allowed(c, mode, uid, gid, want):
            return c
        c = self.full(ctx, alias)
        return c if allowed(c, mode, uid, gid, want) else None

    @staticmethod
    def cacheable(uid: int, alias: int, attr: tuple[int, int, int]) -> bool:
        """May the kernel cache names under this directory? Only if the uid
        alone, with no group or capability, may search it (see the module doc)."""
        mode, f_uid, _ = attr
        return bool(mode & (0o100 if f_uid in (uid, alias) else 0o001))
