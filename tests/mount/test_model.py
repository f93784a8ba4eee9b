"""Model-based random testing of the mounted filesystem (an fsx-style driver).

Random operations run through the real mount as the capturing computer's uid
-- writes at random offsets and sizes (many across the 1 MiB block
boundaries), truncates up and down, renames, hard links, unlink while open,
mkdir/rmdir, chmod, utime, xattrs, symlinks, close and reopen, and a share
of operations that must fail with a known errno -- and every read, stat,
listing, xattr and link target is compared with an in-memory model.

Permissions are those of ext4: the driver runs as a capture tool holding
``CAP_DAC_OVERRIDE`` and ``CAP_DAC_READ_SEARCH`` (so the random modes it
sets do not stop it), and *permission probes* run in a child that drops
them, whose every answer (EACCES or not) must be what the model's modes say
for the owner. Files track the 1 MiB blocks written to them, and ``st_blocks``
must never count more than those (holes are not stored).

A run is a number of *segments*. Each segment is one forked child running as
the computer's uid (no fork per operation); between segments the SMP is
unmounted and mounted again, and the next segment starts by checking the
whole tree against the model. After the last segment the capture is
released and the destination computer checks everything read-only; then
``smpfs fsck --no-repair`` (unmounted) must find nothing at all.

Everything is driven by one seed. It is printed; a failure message names it
and the last operations, and ``SMPFS_MODEL_SEED=<seed>`` replays the run.
``tools/soak.py`` reuses :func:`run_model` for as long as asked.
CI runs 5 segments of 700 operations; ``SMPFS_LONG=1`` 10 of 3,000.
"""
from __future__ import annotations

import collections
import errno
import json
import os
import random
import re
import stat
import time

from smpfs.testing import set_caps

MiB = 1 << 20
BLOCK = 1 << 20                     # smpfs's content block (st_blocks counts whole stored blocks)
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1 << 1, 1 << 2
DRIVER_CAPS = CAP_DAC_OVERRIDE | CAP_DAC_READ_SEARCH
DEST_CAPS = CAP_DAC_READ_SEARCH     # the restoring tool reads everything
MAX_SIZE = 3 * MiB + 4099           # largest file the driver makes
MAX_ENTRIES = 70                    # names in the whole tree
F, D, L = "file", "dir", "symlink"
PATH_ROOM = 3800                    # bytes of path the driver uses at most (PATH_MAX is 4096)
CLOCK_SLACK = 50_000_000            # ns: the kernel stamps some times from its coarse clock
_FMT = {F: stat.S_IFREG, D: stat.S_IFDIR, L: stat.S_IFLNK}

LONG = os.environ.get("SMPFS_LONG") == "1"
CI_SEGMENTS = int(os.environ.get("SMPFS_MODEL_SEGMENTS", "10" if LONG else "5"))
CI_OPS = int(os.environ.get("SMPFS_MODEL_OPS", "3000" if LONG else "700"))


# -- the model ------------------------------------------------------------------

class Node:
    __slots__ = ("kind", "mode", "data", "target", "children", "xattrs", "nlink",
                 "atime", "mtime", "mtime_min", "blocks")

    def __init__(self, kind: str, mode: int, target: bytes = b""):
        self.kind = kind
        self.mode = mode
        self.data = bytearray()
        self.target = target
        self.children: dict[bytes, int] = {}
        self.xattrs: dict[bytes, bytes] = {}
        self.nlink = 1                # names (files, symlinks); dirs compute theirs
        self.atime = None             # exact times, known after a utime
        self.mtime = None
        self.mtime_min = 0            # lower bound once modified
        self.blocks: set[int] = set()  # content blocks ever written (since truncated below them)

    def stored_max(self) -> int:
        """The most content bytes this file can have stored: its written blocks."""
        size = len(self.data)
        return sum(min(BLOCK, size - b * BLOCK) for b in self.blocks if b * BLOCK < size)

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, d):
        for k, v in d.items():
            setattr(self, k, v)


class Model:
    ROOT = 0

    def __init__(self):
        self.nodes: dict[int, Node] = {self.ROOT: Node(D, 0o700)}
        self.next_id = 1
        self.ops = 0

    def new(self, node: Node) -> int:
        nid = self.next_id
        self.next_id += 1
        self.nodes[nid] = node
        return nid

    def walk(self, nid: int = 0, prefix: bytes = b""):
        """(relative path, node id, parent id, name) of every name, parents first."""
        out = []
        for name, child in sorted(self.nodes[nid].children.items()):
            path = prefix + name
            out.append((path, child, nid, name))
            if self.nodes[child].kind == D:
                out += self.walk(child, path + b"/")
        return out

    def lookup(self, rel: bytes) -> int | None:
        nid = self.ROOT
        for part in rel.split(b"/") if rel else []:
            node = self.nodes[nid]
            if node.kind != D or part not in node.children:
                return None
            nid = node.children[part]
        return nid

    def dir_nlink(self, nid: int) -> int:
        return 2 + sum(1 for c in self.nodes[nid].children.values() if self.nodes[c].kind == D)

    def is_ancestor(self, anc: int, nid: int) -> bool:
        """Whether directory ``anc`` is ``nid`` or contains it."""
        if anc == nid:
            return True
        node = self.nodes[anc]
        return any(self.is_ancestor(c, nid) for c in node.children.values() if self.nodes[c].kind == D)

    def drop_unreferenced(self, open_ids=()) -> None:
        for nid in [n for n, node in self.nodes.items()
                    if node.kind != D and node.nlink == 0 and n not in open_ids]:
            del self.nodes[nid]


_LONG = re.compile(r"(L\d-)(x{20,})")


class ModelMismatch(AssertionError):
    pass


# -- the driver (runs in the child, as the computer's uid) --------------------------------

class Driver:
    def __init__(self, root: str, model: Model, seed, segment: int, uid: int, writable: bool = True):
        self.root = os.fsencode(root)
        self.m = model
        self.seed = seed
        self.segment = segment
        self.uid = uid                # who the files belong to (the source computer)
        self.writable = writable
        self.rng = random.Random(f"{seed}/{segment}")
        self.fds: dict[int, list] = {}        # fd -> [node id, readable, writable, append]
        self.history = collections.deque(maxlen=40)
        self.stats = collections.Counter()

    # -- helpers ---------------------------------------------------------------

    def p(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def fail(self, msg: str):
        ops = "\n    ".join(self.history)
        raise ModelMismatch(
            f"{msg}\n  seed={self.seed} segment={self.segment} op={self.m.ops}"
            f" (replay: SMPFS_MODEL_SEED={self.seed})\n  last operations:\n    {ops}")

    def note(self, text: str) -> None:
        text = _LONG.sub(lambda m: f"{m.group(1)}x*{len(m.group(2))}", text)
        self.history.append(f"[{self.segment}:{self.m.ops}] {text}")

    def expect_errno(self, want: int, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except OSError as e:
            if e.errno != want:
                self.fail(f"expected {errno.errorcode[want]}, got {errno.errorcode.get(e.errno, e.errno)}: {e}")
            self.stats["errors_checked"] += 1
            return
        self.fail(f"expected {errno.errorcode[want]}, but the call succeeded")

    def name(self) -> bytes:
        r = self.rng.random()
        if r < 0.70:
            return b"n%d" % self.rng.randrange(40)
        if r < 0.80:
            return f"é-{self.rng.randrange(10)} ü".encode()
        if r < 0.88:
            return b"\xff\xfe-%d" % self.rng.randrange(10)          # not UTF-8
        if r < 0.94:
            return b"sp ace;$(x)&'%d'" % self.rng.randrange(10)
        return (b"L%d-" % self.rng.randrange(5)) + b"x" * self.rng.randrange(200, 252)

    def diagnose(self, path) -> str:
        """Which component of ``path`` the mount cannot find, now and a moment later."""
        if not isinstance(path, bytes) or not path.startswith(self.root):
            return ""
        out = []
        for attempt in range(2):
            rel = path[len(self.root) + 1:]
            parts = rel.split(b"/") if rel else []
            for i in range(len(parts) + 1):
                sub = b"/".join(parts[:i])
                try:
                    os.lstat(self.p(sub))
                except OSError as e:
                    parent = b"/".join(parts[:i - 1])
                    try:
                        listing = sorted(os.listdir(self.p(parent)))
                    except OSError as e2:
                        listing = f"(listing failed: {e2})"
                    pnode = self.m.lookup(parent)
                    model_lists = sorted(self.m.nodes[pnode].children) if pnode is not None else None
                    out.append(f"attempt {attempt}: {sub!r} -> {errno.errorcode.get(e.errno)}; "
                               f"model has it: {self.m.lookup(sub) is not None}; "
                               f"parent lists {listing!r}; model lists {model_lists!r}")
                    break
            else:
                out.append(f"attempt {attempt}: every component of the path is there now")
            time.sleep(0.5)
        return "\n  diagnosis: " + "\n  diagnosis: ".join(out)

    def entries(self, kind=None, exclude_root=True):
        out = [e for e in self.m.walk() if kind is None or self.m.nodes[e[1]].kind == kind]
        return out

    def dirs(self):
        return [(b"", 0)] + [(e[0], e[1]) for e in self.entries(D)]

    def pick(self, seq):
        return self.rng.choice(seq) if seq else None

    def new_path(self):
        """A name not used in a random directory: (relative path, parent id, name)."""
        for _ in range(10):
            d, did = self.rng.choice(self.dirs())
            name = self.name()
            if len(self.root) + len(d) + len(name) > PATH_ROOM:
                continue
            if name not in self.m.nodes[did].children:
                return (d + b"/" + name if d else name), did, name
        return None

    def n_entries(self) -> int:
        return len(self.m.walk())

    def open_ids(self):
        return {v[0] for v in self.fds.values()}

    def touch_data(self, node: Node, t0: int) -> None:
        node.mtime = None
        node.mtime_min = t0

    def touch_dir(self, *dids, t0: int) -> None:
        """Adding or removing a name changes the directory's mtime."""
        for did in dids:
            if did in self.m.nodes:
                self.touch_data(self.m.nodes[did], t0)

    # -- checks ------------------------------------------------------------------

    def check_stat(self, st, nid: int, what: bytes) -> None:
        n = self.m.nodes[nid]
        self.stats["stats_checked"] += 1
        if stat.S_IFMT(st.st_mode) != _FMT[n.kind]:
            self.fail(f"{what!r}: type {stat.S_IFMT(st.st_mode):o}, model says {n.kind}")
        if nid != Model.ROOT and stat.S_IMODE(st.st_mode) != n.mode:
            self.fail(f"{what!r}: mode {stat.S_IMODE(st.st_mode):04o}, model {n.mode:04o}")
        nlink = self.m.dir_nlink(nid) if n.kind == D else n.nlink
        if st.st_nlink != nlink:
            self.fail(f"{what!r}: nlink {st.st_nlink}, model {nlink}")
        if n.kind == F and st.st_size != len(n.data):
            self.fail(f"{what!r}: size {st.st_size}, model {len(n.data)}")
        if n.kind == F and st.st_blocks * 512 > n.stored_max() + 511:
            self.fail(f"{what!r}: st_blocks {st.st_blocks} counts more than the {n.stored_max()} bytes "
                      f"written (blocks {sorted(n.blocks)}): holes must not count")
        if n.kind == L and st.st_size != len(n.target):
            self.fail(f"{what!r}: symlink size {st.st_size}, model {len(n.target)}")
        if nid != Model.ROOT and st.st_uid != self.uid:
            self.fail(f"{what!r}: owner {st.st_uid}, model {self.uid}")
        if n.atime is not None and st.st_atime_ns != n.atime:
            self.fail(f"{what!r}: atime {st.st_atime_ns}, utime set {n.atime}")
        if n.mtime is not None and st.st_mtime_ns != n.mtime:
            self.fail(f"{what!r}: mtime {st.st_mtime_ns}, utime set {n.mtime}")
        if n.mtime is None and n.mtime_min and not (
                n.mtime_min - CLOCK_SLACK <= st.st_mtime_ns <= time.time_ns() + CLOCK_SLACK):
            self.fail(f"{what!r}: mtime {st.st_mtime_ns} is not the time of the last change "
                      f"(at or after {n.mtime_min}, not in the future): writes and truncates set mtime")

    def check_data(self, got: bytes, nid: int, off: int, size: int, what) -> None:
        want = bytes(self.m.nodes[nid].data[off:off + size])
        self.stats["bytes_checked"] += len(got)
        if got != want:
            if len(got) != len(want):
                self.fail(f"{what!r}: read({off}, {size}) gave {len(got)} bytes, model {len(want)}")
            first = next(i for i in range(len(got)) if got[i] != want[i])
            self.fail(f"{what!r}: read({off}, {size}) differs from the model at offset {off + first} "
                      f"(got {got[first:first + 8].hex()}, want {want[first:first + 8].hex()})")

    def read_all(self, path: bytes) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    return b"".join(chunks)
                chunks.append(b)
        finally:
            os.close(fd)

    def check_node(self, rel: bytes, nid: int) -> None:
        path = self.p(rel)
        n = self.m.nodes[nid]
        self.check_stat(os.lstat(path), nid, rel)
        if n.kind == F:
            self.check_data(self.read_all(path), nid, 0, MAX_SIZE * 2, rel)
        elif n.kind == L:
            t = os.readlink(path)
            if t != n.target:
                self.fail(f"{rel!r}: readlink {t!r}, model {n.target!r}")
        else:
            names = sorted(os.listdir(path))
            if names != sorted(n.children):
                self.fail(f"{rel!r}: listing {names!r}, model {sorted(n.children)!r}")
            self.stats["listings_checked"] += 1
        if n.kind != L:
            got = {os.fsencode(x) for x in os.listxattr(path)}
            if got != set(n.xattrs):
                self.fail(f"{rel!r}: xattrs {sorted(got)!r}, model {sorted(n.xattrs)!r}")
            for k, v in n.xattrs.items():
                if os.getxattr(path, k) != v:
                    self.fail(f"{rel!r}: xattr {k!r} differs from the model")
            self.stats["xattrs_checked"] += len(n.xattrs)

    def check_all(self) -> None:
        self.check_node(b"", Model.ROOT)
        for rel, nid, _p, _n in self.m.walk():
            self.check_node(rel, nid)

    # -- operations (each returns False when it found nothing to act on) -------

    def op_create(self):
        if self.n_entries() >= MAX_ENTRIES:
            return False
        np = self.new_path()
        if np is None:
            return False
        rel, did, name = np
        mode = self.rng.choice([0o644, 0o600, 0o755, 0o400, 0o000, 0o777, self.rng.randrange(0o1000)])
        self.note(f"create {rel!r} {mode:o}")
        t0 = time.time_ns()
        fd = os.open(self.p(rel), os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
        node = Node(F, mode)
        node.mtime_min = t0
        nid = self.m.new(node)
        self.m.nodes[did].children[name] = nid
        self.touch_dir(did, t0=t0)
        if self.rng.random() < 0.6:
            self.fds[fd] = [nid, True, True, False]
        else:
            os.close(fd)
        self.check_stat(os.lstat(self.p(rel)), nid, rel)

    def op_open(self):
        files = self.entries(F)
        if not files or len(self.fds) > 12:
            return False
        rel, nid, _, _ = self.rng.choice(files)
        how = self.rng.choice(["r", "r", "w", "rw", "rw", "a", "trunc"])
        flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR, "a": os.O_RDWR | os.O_APPEND,
                 "trunc": os.O_RDWR | os.O_TRUNC}[how]
        self.note(f"open {rel!r} {how}")
        t0 = time.time_ns()
        fd = os.open(self.p(rel), flags)
        node = self.m.nodes[nid]
        if how == "trunc":                   # POSIX: O_TRUNC marks mtime, even of an empty file
            self.touch_data(node, t0)
            node.data = bytearray()
            node.blocks.clear()
        self.fds[fd] = [nid, how != "w", how != "r", how == "a"]
        self.check_stat(os.fstat(fd), nid, rel)

    def op_close(self):
        if not self.fds:
            return False
        fd = self.rng.choice(list(self.fds))
        nid = self.fds.pop(fd)[0]
        self.note(f"close fd {fd} (node {nid})")
        os.close(fd)
        if nid not in self.open_ids():
            self.m.drop_unreferenced(self.open_ids())

    def _size_and_offset(self, cur: int):
        r = self.rng.random()
        if r < 0.35:                                   # across a block boundary
            b = self.rng.randrange(1, 4) * MiB
            off = max(0, b - self.rng.randrange(1, 70000))
            size = self.rng.randrange(1, 140000)
        elif r < 0.50:                                 # big, spanning whole blocks
            off = self.rng.randrange(0, MiB + 1)
            size = self.rng.randrange(MiB // 2, 2 * MiB + 300)
        elif r < 0.75:                                 # small, anywhere
            off = self.rng.randrange(0, max(1, cur + 9000))
            size = self.rng.randrange(1, 5000)
        else:                                          # medium
            off = self.rng.randrange(0, max(1, cur + 200000))
            size = self.rng.randrange(1, 300000)
        if off + size > MAX_SIZE:
            off = max(0, MAX_SIZE - size)
        return off, min(size, MAX_SIZE - off)

    def _writable_fds(self):
        return [fd for fd, v in self.fds.items() if v[2]]

    def op_write(self):
        fds = self._writable_fds()
        if not fds:
            return False
        fd = self.rng.choice(fds)
        nid, readable, _w, append = self.fds[fd]
        node = self.m.nodes[nid]
        off, size = self._size_and_offset(len(node.data))
        data = self.rng.randbytes(size)
        t0 = time.time_ns()
        if append:
            off = len(node.data)
            if off + size > MAX_SIZE:
                return False
            self.note(f"append fd {fd} node {nid} +{size} at {off}")
            n = os.write(fd, data)
        else:
            self.note(f"pwrite fd {fd} node {nid} [{off}, {off + size})")
            n = os.pwrite(fd, data, off)
        if n != size:
            self.fail(f"write of {size} bytes wrote {n}")
        if off > len(node.data):
            node.data.extend(bytes(off - len(node.data)))
        node.data[off:off + size] = data
        node.blocks.update(range(off // BLOCK, (off + size - 1) // BLOCK + 1))
        self.touch_data(node, t0)
        self.stats["bytes_written"] += size
        if readable and self.rng.random() < 0.5:       # read the boundary region back
            lo = max(0, off - 100)
            self.check_data(os.pread(fd, size + 200, lo), nid, lo, size + 200, f"fd {fd}")

    def op_read(self):
        fds = [fd for fd, v in self.fds.items() if v[1]]
        if not fds:
            return False
        fd = self.rng.choice(fds)
        nid = self.fds[fd][0]
        cur = len(self.m.nodes[nid].data)
        off, size = self._size_and_offset(cur)
        if self.rng.random() < 0.2:
            off = self.rng.randrange(0, cur + 10)        # including at and past EOF
        self.note(f"pread fd {fd} node {nid} [{off}, {off + size})")
        self.check_data(os.pread(fd, size, off), nid, off, size, f"fd {fd}")
        self.check_stat(os.fstat(fd), nid, b"fd %d" % fd)

    def op_truncate(self):
        files = self.entries(F)
        fds = self._writable_fds()
        if not files and not fds:
            return False
        r = self.rng.random()
        if r < 0.3:
            size = self.rng.randrange(0, MAX_SIZE)
        elif r < 0.7:
            size = max(0, self.rng.randrange(0, 4) * MiB + self.rng.randrange(-3000, 3000))
        else:
            size = self.rng.randrange(0, 70000)
        size = min(size, MAX_SIZE)
        t0 = time.time_ns()
        if fds and (not files or self.rng.random() < 0.5):
            fd = self.rng.choice(fds)
            nid = self.fds[fd][0]
            self.note(f"ftruncate fd {fd} node {nid} -> {size}")
            os.ftruncate(fd, size)
        else:
            rel, nid, _, _ = self.rng.choice(files)
            self.note(f"truncate {rel!r} -> {size}")
            os.truncate(self.p(rel), size)
        node = self.m.nodes[nid]
        if size == len(node.data):              # POSIX: times change only if the size does
            node.mtime, node.mtime_min = None, 0
        self.touch_data(node, t0) if size != len(node.data) else None
        if size < len(node.data):
            del node.data[size:]
            node.blocks = {b for b in node.blocks if b * BLOCK < size}
        else:
            node.data.extend(bytes(size - len(node.data)))

    def op_fsync(self):
        if not self.fds:
            return False
        fd = self.rng.choice(list(self.fds))
        self.note(f"fsync fd {fd}")
        (os.fdatasync if self.rng.random() < 0.3 else os.fsync)(fd)

    def op_stat(self):
        ents = self.m.walk()
        if self.fds and self.rng.random() < 0.3:
            fd = self.rng.choice(list(self.fds))
            self.note(f"fstat fd {fd}")
            self.check_stat(os.fstat(fd), self.fds[fd][0], b"fd %d" % fd)
            return
        if not ents:
            return False
        rel, nid, _, _ = self.rng.choice(ents)
        self.note(f"lstat {rel!r}")
        self.check_stat(os.lstat(self.p(rel)), nid, rel)

    def op_check(self):
        ents = self.m.walk()
        if not ents:
            return False
        rel, nid, _, _ = self.rng.choice(ents)
        self.note(f"check {rel!r}")
        self.check_node(rel, nid)

    def op_listdir(self):
        rel, did = self.rng.choice(self.dirs())
        self.note(f"listdir {rel!r}")
        names = sorted(os.listdir(self.p(rel)))
        if names != sorted(self.m.nodes[did].children):
            self.fail(f"{rel!r}: listing {names!r}, model {sorted(self.m.nodes[did].children)!r}")
        self.stats["listings_checked"] += 1
        # readdir gives types too: compare them with lstat of every entry
        with os.scandir(self.p(rel)) as it:
            for e in it:
                k = self.m.nodes[self.m.nodes[did].children[e.name]].kind
                if (k == D) != e.is_dir(follow_symlinks=False) or (k == L) != e.is_symlink():
                    self.fail(f"{rel!r}: readdir type of {e.name!r} is wrong (model {k})")

    def op_mkdir(self):
        if self.n_entries() >= MAX_ENTRIES:
            return False
        np = self.new_path()
        if np is None:
            return False
        rel, did, name = np
        mode = self.rng.choice([0o755, 0o700, 0o777, 0o500, self.rng.randrange(0o1000)])
        self.note(f"mkdir {rel!r} {mode:o}")
        t0 = time.time_ns()
        os.mkdir(self.p(rel), mode)
        nid = self.m.new(Node(D, mode))
        self.m.nodes[nid].mtime_min = t0
        self.m.nodes[did].children[name] = nid
        self.touch_dir(did, t0=t0)
        self.check_stat(os.lstat(self.p(rel)), nid, rel)
        self.check_stat(os.lstat(self.p(rel.rpartition(b"/")[0])), did, b"parent")

    def op_rmdir(self):
        dirs = self.entries(D)
        if not dirs:
            return False
        rel, nid, pid, name = self.rng.choice(dirs)
        if self.m.nodes[nid].children:
            self.note(f"rmdir (not empty) {rel!r}")
            return self.expect_errno(errno.ENOTEMPTY, os.rmdir, self.p(rel))
        self.note(f"rmdir {rel!r}")
        t0 = time.time_ns()
        os.rmdir(self.p(rel))
        del self.m.nodes[pid].children[name]
        self.touch_dir(pid, t0=t0)
        del self.m.nodes[nid]
        self.expect_errno(errno.ENOENT, os.lstat, self.p(rel))

    def op_unlink(self):
        cands = self.entries(F) + self.entries(L)
        if not cands:
            return False
        open_ids = self.open_ids()
        held = [c for c in cands if c[1] in open_ids]
        rel, nid, pid, name = self.rng.choice(held if held and self.rng.random() < 0.6 else cands)
        self.note(f"unlink {rel!r}{' (open)' if nid in open_ids else ''}")
        if nid in open_ids:
            self.stats["unlinked_while_open"] += 1
        t0 = time.time_ns()
        os.unlink(self.p(rel))
        del self.m.nodes[pid].children[name]
        self.touch_dir(pid, t0=t0)
        self.m.nodes[nid].nlink -= 1
        self.m.drop_unreferenced(open_ids)
        self.expect_errno(errno.ENOENT, os.lstat, self.p(rel))
        for fd, v in self.fds.items():               # still readable and writable through its fds
            if v[0] == nid:
                self.check_stat(os.fstat(fd), nid, b"unlinked fd %d" % fd)

    def op_link(self):
        files = self.entries(F) + self.entries(L)
        if not files or self.n_entries() >= MAX_ENTRIES:
            return False
        rel, nid, _, _ = self.rng.choice(files)
        np = self.new_path()
        if np is None:
            return False
        new, did, name = np
        self.note(f"link {rel!r} -> {new!r}")
        t0 = time.time_ns()
        os.link(self.p(rel), self.p(new), follow_symlinks=False)
        self.m.nodes[did].children[name] = nid
        self.touch_dir(did, t0=t0)
        self.m.nodes[nid].nlink += 1
        self.check_stat(os.lstat(self.p(new)), nid, new)
        self.check_stat(os.lstat(self.p(rel)), nid, rel)

    def op_symlink(self):
        if self.n_entries() >= MAX_ENTRIES:
            return False
        np = self.new_path()
        if np is None:
            return False
        rel, did, name = np
        target = self.rng.choice([b"/etc/shadow", b"../../../../..", b"n1", b"\xff/x/../y",
                                  b"t" * self.rng.randrange(1, 1000)])
        self.note(f"symlink {rel!r} -> {target[:40]!r}")
        t0 = time.time_ns()
        os.symlink(target, self.p(rel))
        nid = self.m.new(Node(L, 0o777, target))
        self.m.nodes[nid].mtime_min = t0
        self.m.nodes[did].children[name] = nid
        self.touch_dir(did, t0=t0)
        self.check_node(rel, nid)

    def op_rename(self):
        ents = self.m.walk()
        if not ents:
            return False
        rel, sid, spid, sname = self.rng.choice(ents)
        src = self.m.nodes[sid]
        if self.rng.random() < 0.4:                     # onto an existing name
            rel2, did, dpid, dname = self.rng.choice(ents)
        else:
            np = self.new_path()
            if np is None:
                return False
            rel2, dpid, dname = np
            did = None
        if src.kind == D:                              # keep every path under PATH_MAX
            below = max((len(e[0]) - len(rel) for e in ents if e[0].startswith(rel + b"/")), default=0)
            if len(self.root) + len(rel2) + below > PATH_ROOM:
                return False
        self.note(f"rename {rel!r} -> {rel2!r}")
        if src.kind == D and self.m.is_ancestor(sid, dpid):
            return self.expect_errno(errno.EINVAL, os.rename, self.p(rel), self.p(rel2))
        if did is not None and self.m.nodes[did].kind == D and did != sid and self.m.is_ancestor(did, spid):
            # the target directory contains the source: not empty (checked before the types)
            return self.expect_errno(errno.ENOTEMPTY, os.rename, self.p(rel), self.p(rel2))
        if did is not None:
            dst = self.m.nodes[did]
            if did == sid:                               # same inode (or same path): nothing happens
                os.rename(self.p(rel), self.p(rel2))
                self.check_stat(os.lstat(self.p(rel)), sid, rel)
                self.check_stat(os.lstat(self.p(rel2)), sid, rel2)
                return
            if src.kind == D and dst.kind != D:
                return self.expect_errno(errno.ENOTDIR, os.rename, self.p(rel), self.p(rel2))
            if src.kind != D and dst.kind == D:
                return self.expect_errno(errno.EISDIR, os.rename, self.p(rel), self.p(rel2))
            if dst.kind == D and dst.children:
                return self.expect_errno(errno.ENOTEMPTY, os.rename, self.p(rel), self.p(rel2))
        t0 = time.time_ns()
        os.rename(self.p(rel), self.p(rel2))
        del self.m.nodes[spid].children[sname]
        self.touch_dir(spid, dpid, t0=t0)
        if did is not None:
            dst = self.m.nodes[did]
            if dst.kind == D:
                del self.m.nodes[did]
            else:
                dst.nlink -= 1
                self.m.drop_unreferenced(self.open_ids())
        self.m.nodes[dpid].children[dname] = sid
        self.expect_errno(errno.ENOENT, os.lstat, self.p(rel))
        self.check_stat(os.lstat(self.p(rel2)), sid, rel2)

    def op_chmod(self):
        ents = [e for e in self.m.walk() if self.m.nodes[e[1]].kind != L]
        if not ents:
            return False
        rel, nid, _, _ = self.rng.choice(ents)
        mode = self.rng.choice([0o644, 0o600, 0o000, 0o755, 0o1777, self.rng.randrange(0o1000)])
        self.note(f"chmod {rel!r} {mode:o}")
        os.chmod(self.p(rel), mode)
        self.m.nodes[nid].mode = mode
        self.check_stat(os.lstat(self.p(rel)), nid, rel)

    def op_utime(self):
        ents = self.m.walk()
        if not ents:
            return False
        rel, nid, _, _ = self.rng.choice(ents)
        node = self.m.nodes[nid]
        follow = node.kind != L
        if self.rng.random() < 0.15:
            self.note(f"utime {rel!r} now")
            t0 = time.time_ns()
            os.utime(self.p(rel), follow_symlinks=follow)
            node.atime = node.mtime = None
            node.mtime_min = t0
        else:
            a = self.rng.randrange(0, 1 << 33) * 10**9 + self.rng.randrange(10**9)
            m = self.rng.randrange(0, 1 << 33) * 10**9 + self.rng.randrange(10**9)
            self.note(f"utime {rel!r} ns=({a}, {m})")
            os.utime(self.p(rel), ns=(a, m), follow_symlinks=follow)
            node.atime, node.mtime = a, m
        self.check_stat(os.lstat(self.p(rel)), nid, rel)

    def _xattr_target(self):
        ents = [e for e in self.m.walk() if self.m.nodes[e[1]].kind != L]
        if self.rng.random() < 0.1:
            return b"", Model.ROOT
        return (self.rng.choice(ents)[:2]) if ents else None

    def op_setxattr(self):
        t = self._xattr_target()
        if t is None:
            return False
        rel, nid = t
        node = self.m.nodes[nid]
        if node.xattrs and self.rng.random() < 0.3:
            k = self.rng.choice(sorted(node.xattrs))
            self.note(f"removexattr {rel!r} {k!r}")
            os.removexattr(self.p(rel), k)
            del node.xattrs[k]
            return self.expect_errno(errno.ENODATA, os.getxattr, self.p(rel), k)
        k = b"user." + self.rng.choice([b"a", b"b", b"mig.%d" % self.rng.randrange(6), b"\xc3\xa9t\xc3\xa9"])
        size = self.rng.choice([0, 1, 100, self.rng.randrange(4000), self.rng.randrange(30000)])
        v = self.rng.randbytes(size)
        self.note(f"setxattr {rel!r} {k!r} ({size} bytes)")
        os.setxattr(self.p(rel), k, v)
        node.xattrs[k] = v
        if os.getxattr(self.p(rel), k) != v:
            self.fail(f"{rel!r}: xattr {k!r} reads back differently")

    # -- permissions (as ext4 decides them for the owner without capabilities) --------

    def searchable(self, rel: bytes) -> bool:
        """Every directory on the way to ``rel`` has the owner's search bit."""
        nid, parts = Model.ROOT, rel.split(b"/") if rel else []
        for part in parts[:-1] if parts else []:
            if not self.m.nodes[nid].mode & 0o100:
                return False
            nid = self.m.nodes[nid].children[part]
        return not parts or bool(self.m.nodes[nid].mode & 0o100)

    def probe(self, fn, *args) -> int:
        """errno (0: success) of ``fn(*args)`` in a child without capabilities."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 255
            try:
                set_caps(0)
                try:
                    res = fn(*args)
                    code = 0 if res is not False else errno.EACCES     # access() says no
                except OSError as e:
                    code = e.errno or 254
            finally:
                os.write(w, bytes([code & 0xFF]))
                os._exit(0)
        os.close(w)
        got = os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        return got[0] if got else 253

    def op_perm(self):
        """A permission probe: the model's modes say whether it is allowed."""
        ents = self.m.walk()
        if not ents:
            return False
        rel, nid, did, _ = self.rng.choice(ents)
        n = self.m.nodes[nid]
        reach = self.searchable(rel)
        path = self.p(rel)
        choice = self.rng.randrange(6)
        if choice == 0:
            what, ok, fn, args = "lstat", reach, os.lstat, (path,)
        elif choice == 1 and n.kind == F:
            acc, bit = self.rng.choice([(os.O_RDONLY, 0o400), (os.O_WRONLY, 0o200), (os.O_RDWR, 0o600)])
            what, ok = f"open {acc}", reach and n.mode & bit == bit
            fn, args = (lambda p, a: os.close(os.open(p, a | os.O_NOFOLLOW))), (path, acc)
        elif choice == 2 and n.kind == D:
            what, ok, fn, args = "listdir", reach and n.mode & 0o400, os.listdir, (path,)
        elif choice == 3 and n.kind != L:
            want = self.rng.choice([os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK])
            bits = (0o400 if want & os.R_OK else 0) | (0o200 if want & os.W_OK else 0) \
                | (0o100 if want & os.X_OK else 0)
            what, ok, fn, args = f"access {want}", reach and n.mode & bits == bits, os.access, (path, want)
        elif choice == 4 and n.kind != L:
            # a missing xattr: ENODATA if it may read, EACCES if not
            what, ok, fn, args = "getxattr", reach and n.mode & 0o400, os.getxattr, (path, b"user.no-such")
        elif choice == 5 and n.kind == D and len(path) < PATH_ROOM - 20:
            what, ok = "mkdir+rmdir", reach and n.mode & 0o300 == 0o300
            fn, args = (lambda p: (os.mkdir(p), os.rmdir(p))), (path + b"/perm-probe",)
        else:
            return False
        self.note(f"perm probe {what} {rel!r} (mode {n.mode:o}, path searchable {reach})")
        t0 = time.time_ns()
        got = self.probe(fn, *args)
        if what == "getxattr" and got == errno.ENODATA:
            got = 0
        if got not in (0, errno.EACCES):
            self.fail(f"permission probe {what} {rel!r}: errno {errno.errorcode.get(got, got)}")
        if bool(ok) != (got == 0):
            self.fail(f"permission probe {what} {rel!r}: {'allowed' if got == 0 else 'EACCES'}, "
                      f"but the modes say {'allowed' if ok else 'EACCES'}")
        if what == "mkdir+rmdir" and got == 0:
            self.touch_dir(nid, t0=t0)
        self.stats["perm_probes"] += 1

    def op_sparse(self):
        """A write far past the end (a hole), then st_blocks must stay small."""
        files = self.entries(F)
        if not files:
            return False
        rel, nid, _, _ = self.rng.choice(files)
        node = self.m.nodes[nid]
        off = self.rng.randrange(len(node.data), MAX_SIZE - 10) if len(node.data) < MAX_SIZE - 10 else 0
        data = self.rng.randbytes(self.rng.randrange(1, 10))
        self.note(f"sparse write {rel!r} {len(data)} bytes at {off}")
        t0 = time.time_ns()
        fd = os.open(self.p(rel), os.O_WRONLY)
        try:
            os.pwrite(fd, data, off)
            if off > len(node.data):
                node.data.extend(bytes(off - len(node.data)))
            node.data[off:off + len(data)] = data
            node.blocks.add(off // BLOCK)
            node.blocks.add((off + len(data) - 1) // BLOCK)
            self.touch_data(node, t0)
            self.check_stat(os.fstat(fd), nid, rel)
        finally:
            os.close(fd)
        self.check_stat(os.lstat(self.p(rel)), nid, rel)

    def op_invalid(self):
        """Operations the model says must fail, with the errno POSIX gives."""
        ents = self.m.walk()
        choice = self.rng.randrange(9)
        files = [e for e in ents if self.m.nodes[e[1]].kind == F]
        dirs = [e for e in ents if self.m.nodes[e[1]].kind == D]
        if choice == 0 and ents:
            rel = self.rng.choice(ents)[0]
            self.note(f"mkdir existing {rel!r}")
            return self.expect_errno(errno.EEXIST, os.mkdir, self.p(rel))
        if choice == 1 and files:
            rel = self.rng.choice(files)[0]
            self.note(f"rmdir file {rel!r}")
            return self.expect_errno(errno.ENOTDIR, os.rmdir, self.p(rel))
        if choice == 2 and dirs:
            rel = self.rng.choice(dirs)[0]
            self.note(f"unlink dir {rel!r}")
            return self.expect_errno(errno.EISDIR, os.unlink, self.p(rel))
        if choice == 3:
            rel = b"no-such-%d" % self.rng.randrange(1000)
            self.note(f"open missing {rel!r}")
            return self.expect_errno(errno.ENOENT, os.open, self.p(rel), os.O_RDONLY)
        if choice == 4 and files and ents:
            rel = self.rng.choice(files)[0]
            rel2 = self.rng.choice(ents)[0]
            self.note(f"link onto existing {rel!r} -> {rel2!r}")
            return self.expect_errno(errno.EEXIST, os.link, self.p(rel), self.p(rel2))
        if choice == 5 and files:
            rel = self.rng.choice(files)[0]
            self.note(f"getxattr missing {rel!r}")
            return self.expect_errno(errno.ENODATA, os.getxattr, self.p(rel), b"user.no-such")
        if choice == 6 and dirs:
            rel = self.rng.choice(dirs)[0]
            self.note(f"open dir for writing {rel!r}")
            return self.expect_errno(errno.EISDIR, os.open, self.p(rel), os.O_WRONLY)
        if choice == 7 and files:
            rel = self.rng.choice(files)[0]
            self.note(f"create under a file {rel!r}/x")
            return self.expect_errno(errno.ENOTDIR, os.mkdir, self.p(rel + b"/x"))
        if choice == 8 and ents:
            rel = self.rng.choice(ents)[0]
            self.note(f"O_EXCL create existing {rel!r}")
            return self.expect_errno(errno.EEXIST, os.open, self.p(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        return False

    OPS = [("create", 8), ("open", 7), ("close", 7), ("write", 22), ("read", 10), ("truncate", 6),
           ("fsync", 2), ("stat", 6), ("check", 4), ("listdir", 3), ("mkdir", 4), ("rmdir", 2),
           ("unlink", 5), ("link", 3), ("symlink", 2), ("rename", 6), ("chmod", 3), ("utime", 3),
           ("setxattr", 4), ("invalid", 4), ("perm", 5), ("sparse", 2)]

    def run(self, nops: int) -> None:
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        done = 0
        while done < nops:
            op = self.rng.choices(names, weights)[0]
            self.m.ops += 1
            try:
                if getattr(self, "op_" + op)() is False:
                    continue
            except ModelMismatch:
                raise
            except OSError as e:
                self.fail(f"{op}: unexpected {errno.errorcode.get(e.errno, e.errno)}: {e}"
                          f"{self.diagnose(e.filename)}")
            done += 1
            self.stats["ops"] += 1
            self.stats["op_" + op] += 1

    def close_all(self) -> None:
        for fd in list(self.fds):
            os.close(fd)
        self.fds.clear()
        self.m.drop_unreferenced()


def _segment(root: str, model: Model, seed, segment: int, nops: int, uid: int):
    """One segment in the child: check everything, run ``nops`` random operations, close."""
    os.umask(0)
    drv = Driver(root, model, seed, segment, uid)
    try:
        drv.check_all()
    except OSError as e:
        drv.fail(f"checking the tree after remount: {e}")
    drv.run(nops)
    drv.close_all()
    drv.check_all()
    return drv.m, dict(drv.stats)


def _verify_readonly(root: str, model: Model, seed, uid: int):
    """As the destination after release: everything reads as the model; every change is EROFS."""
    drv = Driver(root, model, seed, "dest", uid, writable=False)
    try:
        drv.check_all()
    except OSError as e:
        drv.fail(f"reading as the destination: {e}")
    p = drv.p
    refused = 0
    for rel, nid, _, _ in model.walk()[:25]:
        kind = model.nodes[nid].kind
        tries = [(os.rename, p(rel), p(b"renamed")), (os.unlink if kind != D else os.rmdir, p(rel))]
        if kind == F:
            tries += [(os.open, p(rel), os.O_WRONLY), (os.truncate, p(rel), 0),
                      (os.setxattr, p(rel), b"user.x", b"1"), (os.chmod, p(rel), 0o777),
                      (os.utime, p(rel), (0, 0))]
        if kind == D:
            tries += [(os.mkdir, p(rel + b"/newdir")), (os.open, p(rel + b"/newfile"), os.O_CREAT | os.O_WRONLY)]
        for fn, *args in tries:
            drv.note(f"as destination: {fn.__name__}{tuple(args)!r}")
            drv.expect_errno(errno.EROFS, fn, *args)
            refused += 1
    drv.check_all()                         # nothing changed
    return dict(drv.stats, erofs_checked=refused)


def run_model(smp, seed, segments: int, ops: int, log=print) -> dict:
    """A whole model run on a mounted TestSmp: capture, segments with remounts,
    release, read-only check as the destination, fsck. Returns counters."""
    src, dst = smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    store = smp.request_capture(src)
    model = Model()
    totals = collections.Counter()
    t0 = time.monotonic()
    for seg in range(segments):
        model, stats = smp.as_uid(src, _segment, str(store), model, seed, seg, ops, src.uid, caps=DRIVER_CAPS)
        totals.update(stats)
        smp.remount()
        log(f"  segment {seg}: {stats.get('ops', 0)} ops, {len(model.walk())} names, "
            f"{sum(len(n.data) for n in model.nodes.values()) / MiB:.1f} MiB "
            f"({time.monotonic() - t0:.1f}s)")
    model, stats = smp.as_uid(src, _segment, str(store), model, seed, segments, 0, src.uid, caps=DRIVER_CAPS)
    totals.update(stats)
    smp.release_capture(src)
    smp.request_restore(dst)
    totals.update(smp.as_uid(dst, _verify_readonly, str(store), model, seed, src.uid, caps=DEST_CAPS))
    smp.umount()
    try:
        report = json.loads(smp.cli("fsck", "--no-repair", "--json", check=False).out)
    finally:
        smp.mount()
    assert report["findings"] == [] and report["unrepairable"] == 0, \
        f"fsck after a clean unmount found {report['findings']} (seed={seed})"
    smp.release_restore(dst)
    bad = daemon_log_problems(smp)
    assert not bad, f"the daemon logged errors during the model run (seed={seed}):\n" + "\n".join(bad)
    return dict(totals)


def daemon_log_problems(smp, since: int = 0) -> list[str]:
    """ERROR lines and tracebacks in the daemon's log (from byte ``since``)."""
    try:
        with open(smp.state / "smpfs.log", "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line
            or " CRITICAL " in line][:20]


def _seed():
    s = os.environ.get("SMPFS_MODEL_SEED")
    return int(s) if s else random.SystemRandom().randrange(1 << 32)


def test_model_random_ops(smp):
    seed = _seed()
    print(f"model seed: {seed}  (replay: SMPFS_MODEL_SEED={seed} pytest tests/test_model.py)")
    stats = run_model(smp, seed, CI_SEGMENTS, CI_OPS)
    print("model stats:", json.dumps(stats, sort_keys=True))
    assert stats["ops"] >= CI_SEGMENTS * CI_OPS
