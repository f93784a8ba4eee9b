"""Where a storage folder may be: what ``folder add`` and ``init --folder`` check
before they create or record anything.

A storage folder is refused (:class:`UsageError`, exit 2, each with a hint) when
it is

- a relative path (relative to what: the caller's directory, the daemon's, the
  state dir where the default folder lives? smpfs does not guess);
- on an smpfs mount: this SMP's own (the daemon would wait on itself for ever)
  or another SMP's; or it contains one (sizing the folder would walk into it);
- ``/``;
- the state directory, inside it (except ``STATE/store``, the default folder)
  or containing it; inside another SMP's state directory;
- inside or containing another storage folder of this SMP;
- another SMP's storage folder, inside one, or inside a state store (recognised
  by what smpfs leaves there: the commit reserve ``.smpfs-reserve``, store
  directories with a ``store.json``, ``.deleting-*`` leftovers);
- writable by anyone but root (its owner: the user running smpfs), or below a
  directory that lets someone else rename it away and put another in its place
  (writable by others without the sticky bit, or owned by another user).

A folder smpfs creates is made 0711 and owned by root. An existing folder is
never chmod'ed or chown'ed: it is refused, with the command that fixes it.

Nothing at or under an smpfs mount is ever stat()ed here: mounts are read from
/proc/self/mountinfo and symlinks are resolved one component at a time, each
checked against that table before it is looked at. A stat() of this SMP's own
mount from inside its daemon, or of a dead one, hangs or fails.
"""
from __future__ import annotations

import os
import re
import stat
from collections import deque

from ..errors import UsageError

SMPFS_FSTYPE = "fuse.smpfs"
#: The default storage folder, the one directory inside the state dir that may be a folder.
DEFAULT_FOLDER = "store"
RESERVE_FILE = ".smpfs-reserve"        # store/reserve.py: every folder that held a store has one
_STORE_ID = re.compile(r"[0-9a-f]{64}")
_MAX_LINKS = 40


def fuse_mounts() -> dict[str, str]:
    """Mountpoint -> filesystem type of every FUSE mount this process sees
    (from /proc/self/mountinfo: no stat(), which would hang on a dead or stuck mount)."""
    out = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fstype = right.split()[0] if right else ""
                if fstype.startswith("fuse"):
                    out[_unescape(left.split()[4])] = fstype
    except OSError:
        pass
    return out


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def smpfs_mounts() -> list[str]:
    """The mountpoints of every smpfs mount (this SMP's and any other's)."""
    return [m for m, t in fuse_mounts().items() if t == SMPFS_FSTYPE]


def within(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it (both absolute and normalised)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def _mount_of(path: str, mounts) -> str | None:
    found = [m for m in mounts if within(path, m)]
    return max(found, key=len) if found else None


def resolve(path: str, mounts=()) -> tuple[str, str | None]:
    """(``path`` with every symlink resolved, the mount of ``mounts`` it is on or None).

    Like realpath, but nothing at or under one of ``mounts`` is looked at: from
    the first component on one, the rest is joined as it is written. A missing
    component ends the resolution the same way. :class:`UsageError` for a path
    that cannot be looked at (permission, a file in the way, a symlink loop)."""
    parts = deque(p for p in path.split("/") if p)
    cur, links = "/", 0
    if _mount_of(cur, mounts):
        return os.path.normpath(path), _mount_of(cur, mounts)
    while parts:
        name = parts.popleft()
        if name == ".":
            continue
        if name == "..":
            cur = os.path.dirname(cur)            # cur has no symlinks: its parent is what .. is
            continue
        nxt = os.path.join(cur, name)
        mount = _mount_of(nxt, mounts)
        if mount is not None:
            return os.path.normpath(os.path.join(nxt, *parts)), mount
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            return os.path.normpath(os.path.join(nxt, *parts)), None
        except OSError as e:
            raise UsageError(f"cannot use {path} as a storage folder: {nxt}: {e.strerror}",
                             "give the path of a directory root can reach, or of one to create there")
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise UsageError(f"cannot use {path} as a storage folder: too many symbolic links",
                                 "give the path of the directory itself")
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = "/"
            parts.extendleft(reversed([p for p in target.split("/") if p]))
            continue
        if parts and not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"cannot use {path} as a storage folder: {nxt} is not a directory",
                             "give the path of a directory, or of one to create in an existing directory")
        cur = nxt
    return cur, _mount_of(cur, mounts)


def check_absolute(path, cwd: str | None = None) -> str:
    """``path`` as a string if it is absolute; a relative one is refused, never
    guessed (the caller's directory? the daemon's? the state dir, where the
    default folder is?). ``cwd``: the caller's, to suggest a path in the hint."""
    raw = str(path)
    if not raw or "\0" in raw:
        raise UsageError("invalid storage folder path", "give an absolute path, e.g. /srv/smpstore")
    if not raw.startswith("/"):
        hint = "give an absolute path, e.g. /srv/smpstore; a relative path is refused, not resolved"
        if cwd:
            hint += f" (for the current directory: {os.path.join(cwd, raw)})"
        raise UsageError(f"storage folder {raw} is a relative path", hint)
    return raw


def _refuse(message: str, hint: str):
    raise UsageError(message, hint)


def check_placement(raw: str, state_dir, folders: list[dict], own_mount) -> tuple[str, dict | None]:
    """Refuse a storage folder at ``raw`` for any of the reasons in this module's
    docstring that can be decided before it exists; return its resolved path
    and the row of ``folders`` that is the same directory, if one is.

    ``folders``: this SMP's folder rows (removed ones too); ``own_mount``: where
    this SMP is mounted, if it is."""
    raw = check_absolute(raw)
    mounts = smpfs_mounts()
    real, mount = resolve(raw, mounts)
    where = "e.g. /srv/smpstore (a directory on a local disk)"
    if mount is not None:
        if own_mount is not None and os.path.normpath(str(own_mount)) == mount:
            _refuse(f"{raw} is inside this SMP's own mount ({mount}): the SMP cannot store its stores in itself",
                    f"choose a directory outside {mount}, {where}")
        _refuse(f"{raw} is inside an smpfs mount ({mount}, another SMP's)",
                f"choose a directory outside every smpfs mount, {where}")
    if real == "/":
        _refuse("/ cannot be a storage folder", f"make a directory for the stores, {where}")
    inner = [m for m in mounts if within(m, real)]
    if inner:
        _refuse(f"{raw} contains an smpfs mount ({inner[0]})",
                f"choose a directory that holds no mount of an SMP, {where}")
    state, _ = resolve(str(state_dir))
    default = os.path.join(state, DEFAULT_FOLDER)
    if real == state:
        _refuse(f"{raw} is the SMP's state directory",
                f"choose a directory of its own, {where} ({default} is the default folder)")
    if within(state, real):
        _refuse(f"{raw} contains the SMP's state directory ({state})", f"choose a directory outside it, {where}")
    if within(real, state) and real != default:
        _refuse(f"{raw} is inside the SMP's state directory ({state}); only {default}, the default folder, may be",
                f"choose a directory outside {state}, {where}")
    ours, match = set(), None
    for row in folders:
        try:
            path = resolve(row["path"], mounts)[0]
        except UsageError:
            path = os.path.normpath(row["path"])
        ours.add(path)
        ours.add(row["path"])
        if path == real and (match is None or row["removed_at"] is None):
            match = row
        if row["removed_at"] is not None or path == real:
            continue
        if within(real, path):
            _refuse(f"{raw} is inside the storage folder {path}",
                    f"storage folders do not nest: choose a directory outside {path}")
        if within(path, real):
            _refuse(f"{raw} contains the storage folder {path}",
                    f"storage folders do not nest: choose a directory outside {path}")
    _check_other_smp(raw, real, state, ours)
    return real, match


def _check_other_smp(raw: str, real: str, state: str, ours: set) -> None:
    """Refuse what another SMP left: its state dir, its folders, its stores."""
    d = real
    while True:
        if d != state and all(os.path.lexists(os.path.join(d, n)) for n in ("smp.db", "master.key")):
            what = "is" if d == real else "is inside"
            _refuse(f"{raw} {what} another SMP's state directory ({d})",
                    "choose a directory of its own, e.g. /srv/smpstore")
        if os.path.lexists(os.path.join(d, "store.json")) and _STORE_ID.fullmatch(os.path.basename(d)):
            _refuse(f"{raw} is inside a state store ({d})", "choose a directory of its own, e.g. /srv/smpstore")
        if d not in ours and (os.path.lexists(os.path.join(d, RESERVE_FILE)) or (d == real and _holds_stores(d))):
            what = "is" if d == real else "is inside"
            _refuse(f"{raw} {what} another SMP's storage folder ({d}): it holds smpfs's files",
                    "choose another directory; if that SMP is gone for good, recover what you need from it "
                    "(smpfs recover) and empty it first")
        if d == "/":
            return
        d = os.path.dirname(d)


def _holds_stores(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.name.startswith(".deleting-") or (
                        _STORE_ID.fullmatch(e.name) and os.path.lexists(os.path.join(path, e.name, "store.json"))):
                    return True
    except (NotADirectoryError, FileNotFoundError):
        return False
    except OSError as e:
        raise UsageError(f"cannot use {path} as a storage folder: {e.strerror}",
                         "give a directory root can read")
    return False


def unsafe_parent(real: str, top: str = "/") -> str | None:
    """The first directory above ``real``, up to ``top``, that lets a user other
    than the SMP's owner rename ``real`` (and put another directory in its
    place), if any."""
    me = os.geteuid()
    d = os.path.dirname(real)
    while True:
        st = os.stat(d)
        writable = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0)
        if st.st_uid not in (0, me) or (writable and not st.st_mode & stat.S_ISVTX):
            return d
        if d in ("/", top):
            return None
        d = os.path.dirname(d)


def check_safe(raw: str, real: str, state_dir) -> None:
    """Refuse a folder that a user other than root (the SMP's owner) could write
    to or swap for another: see :func:`unsafe_parent`. The default folder,
    STATE/store, is checked up to the state dir: where the state dir itself may
    be is ``init``'s decision, not the folder's."""
    me = os.geteuid()
    owner = "root" if me == 0 else f"uid {me}"
    state, _ = resolve(str(state_dir))
    try:
        parent = unsafe_parent(real, state if real == os.path.join(state, DEFAULT_FOLDER) else "/")
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            st = None                    # to be created: only where it will be matters
    except OSError as e:
        raise UsageError(f"cannot use {raw} as a storage folder: {e.strerror}",
                         "give the path of a directory root can reach")
    if parent is not None:
        raise UsageError(f"{raw} is in {parent}, which lets other users rename it and put another in its place",
                         f"use a directory under one only {owner} can write (or with the sticky bit, as /tmp)")
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{raw} exists and is not a directory", "give a directory, or a path to create one at")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != me or mode & 0o002 or (mode & 0o020 and st.st_gid != 0):
        raise UsageError(
            f"{raw} is writable by others or not owned by {owner} (owner uid {st.st_uid}, mode {mode:04o}):"
            " anyone who can write there could plant files the SMP would use",
            f"use a new directory (smpfs creates it 0711), or: chown {me}:{os.getegid()} {real} && chmod 0711 {real}")
