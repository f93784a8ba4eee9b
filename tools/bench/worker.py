"""Workload steps for tools/bench.py, run as the unprivileged benchmark uid.

bench.py copies this file to its work directory and runs it with the system
interpreter (``/usr/bin/python3``), because a process running as another uid
cannot execute an interpreter that lives under /root.  Standard library only,
Python >= 3.9.  Every step prints one JSON object on stdout; timings are taken
inside the step, so interpreter start-up is not part of them.

    python3 worker.py STEP ARGS...      (see the ``STEPS`` table at the end)
"""
import json
import math
import mmap
import os
import random
import sys
import time

MiB = 1 << 20
# Pseudo-random, incompressible content from a fixed seed: neither target
# compresses, and a filesystem that elided zero blocks gains nothing here.
_BUF_LEN = 8 * MiB


def _buffer(seed):
    """16 MiB: 8 MiB of seeded random bytes, twice, so any slice up to 8 MiB
    starting in the first half is contiguous."""
    half = random.Random(seed).randbytes(_BUF_LEN)
    return half + half


def _slice(buf, index, size):
    off = (index * 4099 * 64) % _BUF_LEN
    return memoryview(buf)[off:off + size]


def _small_path(root, i, dirs):
    return os.path.join(root, f"d{i % dirs:02d}", f"f{i:05d}")


def _create_small(root, n, dirs, size, seed, each_fsync: bool):
    n, dirs, size = int(n), int(dirs), int(size)
    buf = _buffer(int(seed))
    t0 = time.perf_counter()
    os.mkdir(root)
    for j in range(dirs):
        os.mkdir(os.path.join(root, f"d{j:02d}"))
    for i in range(n):
        fd = os.open(_small_path(root, i, dirs),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if os.write(fd, _slice(buf, i, size)) != size:
                raise OSError("short write")
            if each_fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return {"seconds": time.perf_counter() - t0, "files": n}


def step_small_create(root, n, dirs, size, seed):
    """Create ``n`` files of ``size`` bytes in ``dirs`` directories:
    open(O_CREAT|O_EXCL) + write + close, no fsync."""
    return _create_small(root, n, dirs, size, seed, each_fsync=False)


def step_small_each_fsync(root, n, dirs, size, seed):
    """Create ``n`` files of ``size`` bytes in ``dirs`` directories, each
    open(O_CREAT|O_EXCL) + write + fsync + close before the next one (what a
    careful capture tool does per file)."""
    return _create_small(root, n, dirs, size, seed, each_fsync=True)


def step_small_durable(root, n, dirs):
    """Make everything from small-create durable: fsync every file, then
    every directory, then the root (the same fsync calls on every target)."""
    n, dirs = int(n), int(dirs)
    t0 = time.perf_counter()
    for i in range(n):
        fd = os.open(_small_path(root, i, dirs), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for j in range(dirs):
        fd = os.open(os.path.join(root, f"d{j:02d}"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"seconds": time.perf_counter() - t0}


def step_small_read(root, n, dirs, size, seed):
    """Read every small file back and compare it with what was written."""
    n, dirs, size = int(n), int(dirs), int(size)
    buf = _buffer(int(seed))
    bad = 0
    total = 0
    t0 = time.perf_counter()
    for i in range(n):
        fd = os.open(_small_path(root, i, dirs), os.O_RDONLY)
        try:
            data = os.read(fd, size + 1)
        finally:
            os.close(fd)
        total += len(data)
        if data != _slice(buf, i, size):
            bad += 1
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "bytes": total, "mismatched": bad}


def step_mig_write(path, nbytes, chunk, seed):
    """Write one file the way scanstate grows USMT.MIG: O_APPEND writes of
    ``chunk`` bytes, then fsync and close."""
    nbytes, chunk = int(nbytes), int(chunk)
    buf = _buffer(int(seed))
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    try:
        done = 0
        i = 0
        while done < nbytes:
            n = min(chunk, nbytes - done)
            if os.write(fd, _slice(buf, i, n)) != n:
                raise OSError("short write")
            done += n
            i += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"seconds": time.perf_counter() - t0, "bytes": done}


def step_iops(path, seconds, seed, direct="0", block=4096):
    """4 KiB reads at random block-aligned offsets for ``seconds``, one
    thread.  direct=1 opens with O_DIRECT (page-aligned buffer), so every read
    reaches the filesystem instead of the page cache."""
    seconds, block, direct = float(seconds), int(block), direct == "1"
    rng = random.Random(int(seed))
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        nblocks = os.fstat(fd).st_size // block
        if nblocks < 1:
            raise OSError("file too small for random reads")
        if direct:
            buf = [mmap.mmap(-1, block)]
            preadv = os.preadv

            def read(off):
                return preadv(fd, buf, off)
        else:
            pread = os.pread

            def read(off):
                return len(pread(fd, block, off))
        ops = 0
        short = 0
        randrange = rng.randrange
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            for _ in range(64):
                if read(randrange(nblocks) * block) != block:
                    short += 1
            ops += 64
            now = time.perf_counter()
            if now >= deadline:
                break
    finally:
        os.close(fd)
    return {"seconds": now - t0, "ops": ops, "short_reads": short}


_DIR_NAMES = ["AppData", "Local", "Roaming", "LocalLow", "Microsoft", "Windows",
              "Documents", "Desktop", "Pictures", "Music", "Videos", "Downloads",
              "Favorites", "Outlook", "Office", "Temp", "Cache", "User Data",
              "Default", "Packages", "Settings", "Recent", "Templates", "Fonts"]


def step_gen_tree(dest, count, seed):
    """Generate the profile tree: ``count`` files with sizes drawn from a
    seeded lognormal (median 8 KiB, sigma 2.0) clipped to 1 KiB..8 MiB, in a
    random directory tree of about one directory per 16 files, depth <= 8."""
    count, seed = int(count), int(seed)
    rng = random.Random(seed)
    buf = _buffer(seed + 1)
    os.mkdir(dest)
    dirs = [(dest, 0)]
    for k in range(max(1, count // 16) - 1):
        parent, depth = rng.choice(dirs)
        if depth >= 8:
            parent, depth = dest, 0
        path = os.path.join(parent, f"{rng.choice(_DIR_NAMES)} {k}")
        os.mkdir(path)
        dirs.append((path, depth + 1))
    total = 0
    for i in range(count):
        size = int(rng.lognormvariate(math.log(8192), 2.0))
        size = min(max(size, 1024), 8 * MiB)
        parent, _ = rng.choice(dirs)
        with open(os.path.join(parent, f"file{i:05d}.dat"), "wb") as f:
            f.write(_slice(buf, i, size))
        total += size
    return {"files": count, "dirs": len(dirs), "bytes": total}


STEPS = {
    "small-create": step_small_create,
    "small-each-fsync": step_small_each_fsync,
    "small-durable": step_small_durable,
    "small-read": step_small_read,
    "mig-write": step_mig_write,
    "iops": step_iops,
    "gen-tree": step_gen_tree,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in STEPS:
        sys.exit("usage: worker.py {{{}}} ARGS...".format(",".join(STEPS)))
    print(json.dumps(STEPS[sys.argv[1]](*sys.argv[2:])))
