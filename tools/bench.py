#!/usr/bin/env python3
"""smpfs benchmark: smpfs against gocryptfs and a plain directory.

Run it as root from the repository (the venv's python finds ``smpfs`` next to
itself)::

    sudo .venv/bin/python tools/bench.py --quick            # < 1 minute
    sudo .venv/bin/python tools/bench.py --json bench.json  # full run
    sudo .venv/bin/python tools/bench.py --targets plain,gocryptfs --cases seq,iops

One run sets up three targets on the same disk, under ``--dir`` (default: a
fresh temporary directory under /var/tmp, removed afterwards):

* ``plain``     a directory owned by the benchmark uid;
* ``gocryptfs`` ``gocryptfs -init`` + a mount with ``-allow_other``
  (Debian/Ubuntu: ``apt-get install gocryptfs``; if it is missing the other
  targets are still benchmarked);
* ``smpfs``     ``smpfs init`` / ``computer add BENCH01 --uid UID`` / ``mount`` /
  ``request capture BENCH01``: a store in capture state, written by UID.

Every workload runs as the same unprivileged uid (``--uid``, default 61000; no
account is needed) on every target, through shell tools (dd, cp, tar, find, rm)
or through ``tools/bench/worker.py`` run by the system ``/usr/bin/python3``.
Targets are interleaved (A B C A B C ...) and every case is repeated
``--repeat`` times (default 3; 1 with ``--quick``); medians, min-max and
ratios to gocryptfs and to the plain directory are reported.  Before every
read phase the tool runs ``sync`` and writes 3 to /proc/sys/vm/drop_caches
(it says so when it cannot).

Cases (``--cases``, default all):

``seq``   (1) ``dd if=/dev/zero bs=1M conv=fsync`` of 1 GiB, then
          ``dd of=/dev/null bs=1M`` of it.  Zeros are fine: no target
          compresses, and the tool checks that the backing store grew by the
          amount written, so a zero-eliding filesystem would be flagged.
``small`` (2) 2,000 files of 4 KiB, each created, written, fsynced and closed
          before the next (the issue's row); then
          5,000 files of 4 KiB (seeded random data) in 50 directories:
          create+write+close; then made durable by fsync of every file and
          directory (the same calls on every target; nothing is unmounted);
          ``find -type f``; read-back of all (contents verified); ``rm -rf``.
``usmt``  (3) in: a 2 GiB USMT.MIG written in 64 KiB O_APPEND writes + fsync,
          then ``cp -a`` of a 20,000-file profile tree (lognormal sizes,
          median 8 KiB, 1 KiB-8 MiB, fixed seed, about 1.1 GiB; generated once
          on the plain disk outside the targets, read into the page cache
          before each copy), then ``sync``; each part is also shown alone.
          out: ``tar -cf - . | wc -c`` of the whole store (a pipe; tar is not
          pointed at /dev/null because GNU tar then skips reading the data).
``smb``   (6, only when asked: ``--cases smb`` or ``seq,...,smb``) a 1 GiB
          file put and got over SMB on loopback with ``smbclient``: smpfs's
          own smbd against the same smbd config serving a plain directory
          and a gocryptfs mount (``tools/bench_smb.py``, which it runs).
``iops``  (4) 4 KiB preads at random aligned offsets (fixed seed) over the
          1 GiB file of case 1, from a single thread: 20 s buffered, starting
          from dropped caches as the issue asks (when misses are cheap the
          page cache soon holds the whole file), then 20 s with O_DIRECT,
          where every read reaches the filesystem (for FUSE: the daemon).
(5)       always, for the daemons (smpfs and, for reference, gocryptfs): peak
          VmRSS sampled every 0.2 s in every phase (the issue-5 check takes
          the highest), VmHWM at the end, and daemon CPU seconds
          (utime+stime) per GiB moved in the phases of cases 1 and 3.

Shell tools are timed by wall clock around the process; worker steps time
themselves, so interpreter start-up is excluded.  Cleanup is untimed.

The report prints the issue's target next to each smpfs ratio (against
gocryptfs, and for the sequential write also against the plain directory)
and whether this run meets it.

``--quick``: 256 MiB sequential file, 500 fsynced + 1,000 small files in 20 directories,
256 MiB MIG + 2,000 profile files, 3 s + 3 s of random reads, 1 repeat.

Throughput (MiB/s, ops/s) ratios are *speed* ratios (> 1 = faster than the
reference); ratios of seconds are *time* ratios (< 1 = faster).  Absolute
figures on a shared VM are noisy; ratios measured in one run are what count.

Exit status: 0 when everything ran, 1 when a target could not be set up or a
step failed (the report says which, with the error), 130 when interrupted.
Mounts are always unmounted (fusermount3 -u, then -uz), also on Ctrl-C/SIGTERM.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
WORKER_SRC = Path(__file__).resolve().parent / "bench" / "worker.py"
SYSTEM_PYTHON = "/usr/bin/python3"
ALL_TARGETS = ("plain", "gocryptfs", "smpfs")
ALL_CASES = ("seq", "small", "usmt", "iops")
CASE_NUMBERS = {"1": "seq", "2": "small", "3": "usmt", "4": "iops"}
STEP_TIMEOUT = 3600          # seconds; a hung FUSE daemon must not hang the run forever
SEED = 20240505


@dataclass(frozen=True)
class Sizes:
    seq_bytes: int
    small_files: int
    small_dirs: int
    small_size: int
    mig_bytes: int
    mig_chunk: int
    profile_files: int
    iops_seconds: float
    fsync_files: int          # files created, written, fsynced and closed one by one


FULL = Sizes(1 * GiB, 5000, 50, 4 * KiB, 2 * GiB, 64 * KiB, 20000, 20.0, 2000)
QUICK = Sizes(256 * MiB, 1000, 20, 4 * KiB, 256 * MiB, 64 * KiB, 2000, 3.0, 500)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str            # "MiB/s", "ops/s" (higher is better) or "s" (lower is better)

    @property
    def higher_is_better(self) -> bool:
        return self.unit != "s"


METRICS = [
    Metric("seq.write", "1 seq write (dd conv=fsync)", "MiB/s"),
    Metric("seq.read", "1 seq read (dd, cold)", "MiB/s"),
    Metric("small.each_fsync", "2 small: create+write+fsync+close", "s"),
    Metric("small.create", "2 small: create+write+close", "s"),
    Metric("small.durable", "2 small: fsync files+dirs", "s"),
    Metric("small.create_to_durable", "2 small: create->durable", "s"),
    Metric("small.find", "2 small: find (cold)", "s"),
    Metric("small.read", "2 small: read back (cold)", "s"),
    Metric("small.rm", "2 small: rm -rf", "s"),
    Metric("usmt.mig", "3 usmt: MIG 64K appends+fsync", "MiB/s"),
    Metric("usmt.cp", "3 usmt: cp -a profile", "s"),
    Metric("usmt.sync", "3 usmt: sync after cp", "s"),
    Metric("usmt.in", "3 usmt in (MIG + cp -a + sync)", "MiB/s"),
    Metric("usmt.out", "3 usmt out (tar|wc, cold)", "MiB/s"),
    Metric("iops.randread", "4 4K random read (cold start)", "ops/s"),
    Metric("iops.direct", "4 4K random read O_DIRECT", "ops/s"),
]
METRIC_BY_KEY = {m.key: m for m in METRICS}

# Targets: (description, metric, comparison, threshold, reference).  Speed
# metrics compare smpfs/reference speed, time metrics smpfs/reference time.
# The first eight are the table of the performance issue, row by row; the
# last three are older goals kept for comparison.
ISSUE_TARGETS = [
    ("seq write speed >= 2.0x gocryptfs", "seq.write", ">=", 2.0, "gocryptfs"),
    ("seq write speed >= 0.8x plain", "seq.write", ">=", 0.8, "plain"),
    ("seq read speed >= 1.0x gocryptfs", "seq.read", ">=", 1.0, "gocryptfs"),
    ("small create+write+fsync+close time <= 1.0x", "small.each_fsync", "<=", 1.0, "gocryptfs"),
    ("small read-back time <= 1.0x gocryptfs", "small.read", "<=", 1.0, "gocryptfs"),
    ("USMT in speed >= 1.2x gocryptfs", "usmt.in", ">=", 1.2, "gocryptfs"),
    ("USMT out speed >= 1.0x gocryptfs", "usmt.out", ">=", 1.0, "gocryptfs"),
    ("4K random read speed >= 1.0x gocryptfs", "iops.randread", ">=", 1.0, "gocryptfs"),
    ("4K O_DIRECT read speed >= 0.8x gocryptfs", "iops.direct", ">=", 0.8, "gocryptfs"),
    ("small create->durable time <= 1.0x gocryptfs", "small.create_to_durable", "<=", 1.0,
     "gocryptfs"),
    ("small find time <= 1.5x gocryptfs", "small.find", "<=", 1.5, "gocryptfs"),
    ("small rm -rf time <= 1.5x gocryptfs", "small.rm", "<=", 1.5, "gocryptfs"),
]
RSS_LIMIT_MIB = 150


class StepError(RuntimeError):
    """A workload step failed on one target (the run goes on without it)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Running things: as root (setup) and as the benchmark uid (workloads)


def run_root(argv: list[str], timeout: float = 120, check: bool = True,
             **kw) -> subprocess.CompletedProcess:
    """Run a setup command as root; start_new_session keeps Ctrl-C from
    killing daemons before the finally block has unmounted them."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True, **kw)
    if check and proc.returncode != 0:
        raise StepError(f"{' '.join(argv)} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


class AsUser:
    """Runs workload commands as the unprivileged benchmark uid/gid."""

    def __init__(self, uid: int, gid: int, workdir: Path, worker: Path):
        self.uid, self.gid, self.workdir, self.worker = uid, gid, workdir, worker
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LC_ALL": "C",
                    "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}

    def run(self, argv: list[str], timeout: float = STEP_TIMEOUT,
            stdout=subprocess.PIPE) -> tuple[float, str]:
        """Run argv as the uid; return (wall seconds, stdout)."""
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE,
                                  text=True, timeout=timeout, env=self.env,
                                  cwd=self.workdir, user=self.uid, group=self.gid,
                                  extra_groups=[], umask=0o022)
        except subprocess.TimeoutExpired as e:
            raise StepError(f"{argv[0]} timed out after {timeout:.0f} s "
                            f"({' '.join(argv)})") from e
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise StepError(f"{' '.join(argv)} exited {proc.returncode}: "
                            f"{proc.stderr.strip()[-2000:]}")
        return elapsed, proc.stdout or ""

    def worker_step(self, step: str, *args, timeout: float = STEP_TIMEOUT) -> dict:
        """Run one tools/bench/worker.py step; return its JSON result."""
        _, out = self.run([SYSTEM_PYTHON, str(self.worker), step, *map(str, args)],
                          timeout=timeout)
        return json.loads(out)


class Caches:
    """sync + drop_caches before read phases, if this machine allows it."""

    def __init__(self) -> None:
        self.reason = ""
        try:
            self._drop()
            self.ok = True
        except OSError as e:
            self.ok = False
            self.reason = f"cannot write /proc/sys/vm/drop_caches ({e.strerror})"

    @staticmethod
    def sync() -> None:
        # A subprocess, not os.sync(), so a wedged FUSE daemon cannot hang us for ever.
        subprocess.run(["sync"], timeout=STEP_TIMEOUT, check=False)

    def _drop(self) -> None:
        self.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    def drop(self) -> None:
        if self.ok:
            self._drop()
        else:
            self.sync()


# --------------------------------------------------------------------------
# Daemon accounting (case 5)


def proc_rss_kib(pid: int, field_name: str = "VmRSS") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of the whole process (all threads) in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class DaemonMonitor(threading.Thread):
    """Samples VmRSS of every FUSE daemon every 0.2 s and keeps the peak per
    (target, phase).  The phase is what the main thread says it is running."""

    def __init__(self, interval: float = 0.2):
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.phase = "setup"
        self.peaks: dict[str, dict[str, int]] = {}
        self.samples: dict[str, list[tuple[float, str, int]]] = {}
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()
        self.t0 = time.monotonic()

    def watch(self, target: str, pid: int) -> None:
        with self._lock:
            self.pids[target] = pid
            self.peaks.setdefault(target, {})
            self.samples.setdefault(target, [])

    def run(self) -> None:
        while not self._stop_evt.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            for target, pid in self.pids.items():
                kib = proc_rss_kib(pid)
                if kib is None:
                    continue
                phase = self.phase
                peaks = self.peaks[target]
                peaks[phase] = max(peaks.get(phase, 0), kib)
                self.samples[target].append((round(time.monotonic() - self.t0, 2),
                                             phase, kib))

    def stop(self) -> None:
        self._stop_evt.set()


# --------------------------------------------------------------------------
# Targets


def du_bytes(path: Path) -> int:
    """Allocated bytes under path (st_blocks), walked as root."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def is_mounted(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def fusermount_u(path: Path) -> None:
    """fusermount3 -u, retried, then -uz as a last resort."""
    for _attempt in range(10):
        if not is_mounted(path) and not _stale_mount(path):
            return
        run_root(["fusermount3", "-u", str(path)], timeout=60, check=False)
        if not is_mounted(path) and not _stale_mount(path):
            return
        time.sleep(0.5)
    log(f"warning: {path} still busy; lazy unmount (fusermount3 -uz)")
    run_root(["fusermount3", "-uz", str(path)], timeout=60, check=False)


def _stale_mount(path: Path) -> bool:
    """A mount whose daemon died answers ENOTCONN and ismount() says False."""
    try:
        with open("/proc/self/mounts") as f:
            points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                             line.split()[1]) for line in f]
    except OSError:
        return False
    return str(path) in points


class Target:
    """One place to run the workloads: ``root`` is a directory owned by the
    benchmark uid, ``backing`` is where the bytes end up on the plain disk."""

    name = ""
    daemon_pid: int | None = None

    def __init__(self, work: Path, user: AsUser):
        self.work, self.user = work, user
        self.root: Path = Path()
        self.backing: Path = Path()
        self.mountpoint: Path | None = None
        self.failed: str = ""          # set when the target is gone for good
        self.version = ""

    def setup(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        pass

    def check_alive(self) -> None:
        """Raise StepError if the mount (or its daemon) has gone."""
        if self.mountpoint is not None and not is_mounted(self.mountpoint):
            raise StepError(f"{self.name}: {self.mountpoint} is no longer mounted")
        if self.daemon_pid is not None and not Path(f"/proc/{self.daemon_pid}").exists():
            raise StepError(f"{self.name}: daemon pid {self.daemon_pid} has exited")


class PlainTarget(Target):
    name = "plain"

    def setup(self) -> None:
        self.root = self.backing = self.work / "plain"
        self.root.mkdir(mode=0o755)
        os.chown(self.root, self.user.uid, self.user.gid)
        self.version = "directory"


class GocryptfsTarget(Target):
    name = "gocryptfs"

    def __init__(self, work: Path, user: AsUser):
        super().__init__(work, user)
        self.proc: subprocess.Popen | None = None

    def setup(self) -> None:
        exe = shutil.which("gocryptfs")
        if exe is None:
            raise StepError("gocryptfs is not installed (Debian/Ubuntu: "
                            "apt-get install gocryptfs); benchmarking the other targets")
        self.version = run_root([exe, "-version"]).stdout.strip().split(";")[0]
        cipher = self.backing = self.work / "gocryptfs-cipher"
        mnt = self.work / "gocryptfs-mnt"
        pwfile = self.work / "gocryptfs.pw"
        pwfile.write_text("bench-password\n")
        pwfile.chmod(0o600)
        cipher.mkdir(mode=0o711)
        mnt.mkdir(mode=0o755)
        run_root([exe, "-init", "-q", "-passfile", str(pwfile), str(cipher)], timeout=120)
        log_f = open(self.work / "gocryptfs.log", "ab")
        # -fg so that we know the daemon's pid for RSS/CPU accounting.
        self.proc = subprocess.Popen(
            [exe, "-fg", "-q", "-allow_other", "-passfile", str(pwfile), str(cipher), str(mnt)],
            stdout=log_f, stderr=log_f, stdin=subprocess.DEVNULL, start_new_session=True)
        log_f.close()
        self.mountpoint = mnt
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise StepError("gocryptfs did not mount: "
                                + (self.work / "gocryptfs.log").read_text()[-2000:])
            time.sleep(0.05)
        self.daemon_pid = self.proc.pid
        self.root = mnt / "bench"
        self.root.mkdir(mode=0o755)
        os.chown(self.root, self.user.uid, self.user.gid)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise StepError(f"gocryptfs exited with status {self.proc.returncode}")
        super().check_alive()

    def teardown(self) -> None:
        if self.mountpoint is not None:
            fusermount_u(self.mountpoint)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SmpfsTarget(Target):
    name = "smpfs"

    def __init__(self, work: Path, user: AsUser, exe: str | None):
        super().__init__(work, user)
        self.exe = exe
        self.state = work / "smpfs-state"
        self.logs: list[str] = []

    def smpfs(self, *args: str, timeout: float = 120, check: bool = True):
        argv = [self.exe, "--state", str(self.state), *args]
        proc = run_root(argv, timeout=timeout, check=check)
        self.logs.append(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
        return proc

    def setup(self) -> None:
        if not self.exe:
            raise StepError("smpfs executable not found (pass --smpfs PATH)")
        folder = self.backing = self.work / "smpfs-folder"
        mnt = self.work / "smpfs-mnt"
        mnt.mkdir(mode=0o755)
        ver = run_root([self.exe, "--version"], check=False)
        self.version = (ver.stdout or ver.stderr).strip().splitlines()[0] if ver.returncode == 0 else "smpfs"
        self.smpfs("init", "--folder", str(folder))
        self.smpfs("computer", "add", "BENCH01", "--uid", str(self.user.uid))
        self.mountpoint = mnt
        self.smpfs("mount", str(mnt), timeout=120)
        if not is_mounted(mnt):
            raise StepError(f"smpfs mount returned but {mnt} is not a mount point")
        try:
            info = json.loads((self.state / "daemon.json").read_text())
            self.daemon_pid = int(info["pid"])
        except (OSError, ValueError, KeyError) as e:
            raise StepError(f"cannot read the daemon pid from {self.state}/daemon.json: {e}")
        out = self.smpfs("request", "capture", "BENCH01").stdout.strip().splitlines()
        if not out:
            raise StepError("smpfs request capture printed no store path")
        store = Path(out[-1].strip())
        if not store.is_absolute():
            store = mnt / store
        # Root has no access to a store: check as the uid that will write it.
        self.user.run(["test", "-d", str(store), "-a", "-w", str(store)], timeout=60)
        self.root = store

    def teardown(self) -> None:
        if self.mountpoint is None or not (is_mounted(self.mountpoint)
                                           or _stale_mount(self.mountpoint)):
            return
        try:
            self.smpfs("umount", str(self.mountpoint), timeout=120, check=False)
        except (subprocess.TimeoutExpired, OSError) as e:
            log(f"warning: smpfs umount: {e}")
        fusermount_u(self.mountpoint)
        if self.daemon_pid is not None:
            deadline = time.monotonic() + 30
            while Path(f"/proc/{self.daemon_pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)


# --------------------------------------------------------------------------
# Results


@dataclass
class Results:
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    # daemon accounting: target -> phase -> {"cpu_s": x, "bytes": n}
    cpu: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def add(self, key: str, target: str, value: float) -> None:
        self.values.setdefault(key, {}).setdefault(target, []).append(value)

    def stats(self, key: str, target: str) -> dict | None:
        vals = self.values.get(key, {}).get(target)
        if not vals:
            return None
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                "values": vals}

    def ratio(self, key: str, target: str, ref: str) -> float | None:
        """Speed ratio (higher-is-better units) or time ratio (seconds)."""
        a, b = self.stats(key, target), self.stats(key, ref)
        if not a or not b or b["median"] == 0:
            return None
        return a["median"] / b["median"]


# --------------------------------------------------------------------------
# The benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, work: Path):
        self.args, self.sizes, self.work = args, sizes, work
        self.repeat = args.repeat
        self.results = Results()
        self.monitor = DaemonMonitor()
        self.caches = Caches()
        self.user: AsUser | None = None
        self.targets: list[Target] = []
        self.skipped: dict[str, str] = {}
        self.profile: dict = {}
        self.iops_files: dict[str, Path] = {}
        self.notes: list[str] = []

    # -- setup ---------------------------------------------------------

    def prepare(self) -> None:
        w = self.work
        w.mkdir(parents=True, exist_ok=True)
        # Every directory on the way to the mounts must be traversable by the uid.
        for p in [w, *w.parents]:
            mode = p.stat().st_mode
            if not mode & 0o001:
                log(f"note: making {p} traversable (o+x) for uid {self.args.uid}")
                p.chmod(mode | 0o001)
        worker = w / "worker.py"
        shutil.copyfile(WORKER_SRC, worker)
        worker.chmod(0o644)
        self.user = AsUser(self.args.uid, self.args.gid, w, worker)
        if not self.caches.ok:
            log(f"note: page caches will NOT be dropped: {self.caches.reason}")

    def make_profile_tree(self) -> None:
        """Generate (or reuse) the seeded profile tree on the plain disk."""
        src = self.work / "src"
        n = self.sizes.profile_files
        dest = src / f"profile-{n}-{SEED}"
        manifest = src / f"profile-{n}-{SEED}.json"
        if dest.is_dir() and manifest.exists():
            self.profile = json.loads(manifest.read_text())
            self.profile["path"] = str(dest)
            log(f"profile tree: reusing {dest}")
            return
        if dest.exists():
            shutil.rmtree(dest)
        src.mkdir(mode=0o755, exist_ok=True)
        os.chown(src, self.user.uid, self.user.gid)
        log(f"profile tree: generating {n} files in {dest} ...")
        t0 = time.perf_counter()
        info = self.user.worker_step("gen-tree", dest, n, SEED)
        info["generated_s"] = round(time.perf_counter() - t0, 2)
        manifest.write_text(json.dumps(info))
        self.profile = {**info, "path": str(dest)}
        log(f"profile tree: {info['files']} files, {info['dirs']} dirs, "
            f"{info['bytes'] / MiB:.0f} MiB in {info['generated_s']} s")

    def setup_targets(self) -> None:
        for name in self.args.targets:
            if name == "plain":
                t: Target = PlainTarget(self.work, self.user)
            elif name == "gocryptfs":
                t = GocryptfsTarget(self.work, self.user)
            else:
                t = SmpfsTarget(self.work, self.user, self.args.smpfs)
            self.targets.append(t)      # before setup: teardown must see it
            log(f"setting up {name} ...")
            try:
                t.setup()
            except (StepError, OSError, subprocess.TimeoutExpired) as e:
                t.failed = f"setup failed: {e}"
                self.skipped[name] = t.failed
                log(f"{name}: {t.failed}")
                continue
            if t.daemon_pid is not None:
                self.monitor.watch(name, t.daemon_pid)
            log(f"{name}: ready at {t.root}" + (f" (daemon pid {t.daemon_pid})"
                                                 if t.daemon_pid else ""))

    def teardown(self) -> None:
        for t in reversed(self.targets):
            try:
                t.teardown()
            except Exception as e:     # keep unmounting the others
                log(f"warning: teardown of {t.name}: {e}")

    # -- helpers -------------------------------------------------------

    @contextlib.contextmanager
    def phase(self, target: Target, name: str, nbytes: int = 0):
        """Label RSS samples with the phase and account daemon CPU to it."""
        self.monitor.phase = f"{name}"
        pid = target.daemon_pid
        c0 = proc_cpu_seconds(pid) if pid else None
        try:
            yield
        finally:
            self.monitor.sample()
            self.monitor.phase = "idle"
            if pid and c0 is not None:
                c1 = proc_cpu_seconds(pid)
                if c1 is not None:
                    acc = self.results.cpu.setdefault(target.name, {}).setdefault(
                        name, {"cpu_s": 0.0, "bytes": 0})
                    acc["cpu_s"] += c1 - c0
                    acc["bytes"] += nbytes

    def rm_rf(self, path: Path) -> None:
        self.user.run(["rm", "-rf", "--", str(path)])

    @contextlib.contextmanager
    def cleanup(self, path: Path, keep: bool = False):
        """Remove a case's files afterwards (untimed), also when it failed."""
        ok = False
        try:
            yield
            ok = True
        finally:
            if not (keep and ok):
                try:
                    self.rm_rf(path)
                except (StepError, OSError, subprocess.TimeoutExpired) as e:
                    log(f"  warning: could not remove {path}: {e}")

    def report(self, case: str, rep: int, target: Target, key: str, value: float) -> None:
        self.results.add(key, target.name, value)
        unit = METRIC_BY_KEY[key].unit
        log(f"  [{case} {rep + 1}/{self.repeat}] {target.name:<9} {key:<24} "
            f"{value:10.2f} {unit}")

    # -- cases ---------------------------------------------------------

    def case_seq(self, t: Target, rep: int) -> None:
        path = t.root / f"seq-{rep}.dat"
        keep = rep == self.repeat - 1 and "iops" in self.args.cases
        with self.cleanup(path, keep):
            self._seq(t, rep, path)
        if keep:
            self.iops_files[t.name] = path          # case 4 reuses the last one

    def _seq(self, t: Target, rep: int, path: Path) -> None:
        s = self.sizes
        count = s.seq_bytes // MiB
        backing0 = du_bytes(t.backing)
        self.caches.sync()
        with self.phase(t, "seq write", s.seq_bytes):
            secs, _ = self.user.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M",
                                     f"count={count}", "conv=fsync", "status=none"])
        self.report("seq", rep, t, "seq.write", s.seq_bytes / MiB / secs)
        grown = du_bytes(t.backing) - backing0
        if grown < 0.9 * s.seq_bytes:
            self.results.checks.append(
                f"{t.name}: backing store grew by only {grown / MiB:.0f} MiB for a "
                f"{s.seq_bytes / MiB:.0f} MiB zero-filled write (zero elision or data not yet on disk?)")
        self.caches.drop()
        with self.phase(t, "seq read", s.seq_bytes):
            secs, _ = self.user.run(["dd", f"if={path}", "of=/dev/null", "bs=1M",
                                     "status=none"])
        self.report("seq", rep, t, "seq.read", s.seq_bytes / MiB / secs)

    def case_small(self, t: Target, rep: int) -> None:
        root = t.root / f"small-{rep}"
        with self.cleanup(root), self.cleanup(t.root / f"small-{rep}-fsync"):
            self._small(t, rep, root)

    def _small(self, t: Target, rep: int, root: Path) -> None:
        s = self.sizes
        self.caches.sync()
        with self.phase(t, "small fsync", s.fsync_files * s.small_size):
            r = self.user.worker_step("small-each-fsync", root.with_name(root.name + "-fsync"),
                                      s.fsync_files, s.small_dirs, s.small_size, SEED)
        self.report("small", rep, t, "small.each_fsync", r["seconds"])
        with self.phase(t, "small create", s.small_files * s.small_size):
            r = self.user.worker_step("small-create", root, s.small_files, s.small_dirs,
                                      s.small_size, SEED)
            d = self.user.worker_step("small-durable", root, s.small_files, s.small_dirs)
        self.report("small", rep, t, "small.create", r["seconds"])
        self.report("small", rep, t, "small.durable", d["seconds"])
        self.report("small", rep, t, "small.create_to_durable", r["seconds"] + d["seconds"])
        self.caches.drop()
        with self.phase(t, "small find"):
            secs, out = self.user.run(["find", str(root), "-type", "f"])
        found = out.count("\n")
        if found != s.small_files:
            raise StepError(f"{t.name}: find listed {found} files, expected {s.small_files}")
        self.report("small", rep, t, "small.find", secs)
        self.caches.drop()
        with self.phase(t, "small read", s.small_files * s.small_size):
            r = self.user.worker_step("small-read", root, s.small_files, s.small_dirs,
                                      s.small_size, SEED)
        if r["mismatched"] or r["bytes"] != s.small_files * s.small_size:
            raise StepError(f"{t.name}: small-file read-back: {r['mismatched']} files "
                            f"differ, {r['bytes']} bytes read")
        self.report("small", rep, t, "small.read", r["seconds"])
        self.caches.sync()
        with self.phase(t, "small rm"):
            secs, _ = self.user.run(["rm", "-rf", "--", str(root)])
        self.report("small", rep, t, "small.rm", secs)

    def warm_profile(self) -> None:
        """Read the source tree into the page cache so that cp -a measures the
        target, not the source disk (the out phase's drop_caches evicts it)."""
        buf = bytearray(MiB)
        for dirpath, _, filenames in os.walk(self.profile["path"]):
            for name in filenames:
                with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass

    def case_usmt(self, t: Target, rep: int) -> None:
        root = t.root / f"usmt-{rep}"
        with self.cleanup(root):
            self._usmt(t, rep, root)

    def _usmt(self, t: Target, rep: int, root: Path) -> None:
        s = self.sizes
        total = s.mig_bytes + self.profile["bytes"]
        self.user.run(["mkdir", "-p", str(root / "USMT")])
        self.warm_profile()
        self.caches.sync()
        with self.phase(t, "usmt in", total):
            m = self.user.worker_step("mig-write", root / "USMT" / "USMT.MIG",
                                      s.mig_bytes, s.mig_chunk, SEED)
            cp_s, _ = self.user.run(["cp", "-a", self.profile["path"], str(root / "profile")])
            sync_s, _ = self.user.run(["sync"])
        self.report("usmt", rep, t, "usmt.mig", s.mig_bytes / MiB / m["seconds"])
        self.report("usmt", rep, t, "usmt.cp", cp_s)
        self.report("usmt", rep, t, "usmt.sync", sync_s)
        self.report("usmt", rep, t, "usmt.in", total / MiB / (m["seconds"] + cp_s + sync_s))
        self.caches.drop()
        with self.phase(t, "usmt out", total):
            secs, out = self.user.run(["bash", "-o", "pipefail", "-c",
                                       'tar -C "$1" -cf - . | wc -c', "tar", str(root)])
        if int(out.strip() or 0) < total:
            raise StepError(f"{t.name}: tar produced {out.strip()} bytes, "
                            f"expected at least {total}")
        self.report("usmt", rep, t, "usmt.out", total / MiB / secs)

    def case_iops(self, t: Target, rep: int) -> None:
        s = self.sizes
        path = self.iops_files.get(t.name)
        if path is None:
            path = t.root / "iops.dat"
            self.user.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M",
                           f"count={s.seq_bytes // MiB}", "conv=fsync", "status=none"])
            self.iops_files[t.name] = path
        for key, direct in (("iops.randread", 0), ("iops.direct", 1)):
            self.caches.drop()
            with self.phase(t, "iops"):
                try:
                    r = self.user.worker_step("iops", path, s.iops_seconds, SEED + rep, direct)
                except StepError as e:
                    self.results.errors.append({"case": "iops", "rep": rep + 1,
                                                "target": t.name, "error": f"{key}: {e}"})
                    log(f"  [iops {rep + 1}/{self.repeat}] {t.name}: ERROR {key}: {e}")
                    continue
            if r["short_reads"]:
                raise StepError(f"{t.name}: {r['short_reads']} short random reads")
            self.report("iops", rep, t, key, r["ops"] / r["seconds"])

    # -- main loop -----------------------------------------------------

    def run(self) -> None:
        self.prepare()
        self.monitor.start()
        if "usmt" in self.args.cases:
            self.make_profile_tree()
        self.setup_targets()
        live = [t for t in self.targets if not t.failed]
        if not live:
            raise SystemExit("no target could be set up")
        runners = {"seq": self.case_seq, "small": self.case_small,
                   "usmt": self.case_usmt, "iops": self.case_iops}
        for case in self.args.cases:
            log(f"case {case}:")
            for rep in range(self.repeat):
                for t in live:                      # interleaved: A B C A B C ...
                    if t.failed:
                        continue
                    try:
                        t.check_alive()
                        runners[case](t, rep)
                    except (StepError, OSError, ValueError, subprocess.TimeoutExpired) as e:
                        msg = str(e)
                        self.results.errors.append({"case": case, "rep": rep + 1,
                                                    "target": t.name, "error": msg})
                        log(f"  [{case} {rep + 1}/{self.repeat}] {t.name}: ERROR {msg}")
                        try:
                            t.check_alive()
                        except StepError as dead:
                            t.failed = str(dead)
                            log(f"  {t.name} is gone, skipping it from now on: {dead}")
        for t in live:
            if not t.failed:
                for path in {self.iops_files.get(t.name)} - {None}:
                    with contextlib.suppress(StepError):
                        self.rm_rf(path)
        for t in live:
            if t.daemon_pid:
                hwm = proc_rss_kib(t.daemon_pid, "VmHWM")
                if hwm is not None:
                    self.monitor.peaks[t.name]["VmHWM, whole life"] = hwm
        self.monitor.stop()


# --------------------------------------------------------------------------
# Machine note and output


def machine_info(work: Path) -> dict:
    info = {"cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
    with contextlib.suppress(Exception):
        src, fstype = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(work)],
                                     capture_output=True, text=True).stdout.split()[:2]
        info["filesystem"] = f"{fstype} on {src}"
        dev = Path(src).name
        pk = subprocess.run(["lsblk", "-n", "-d", "-o", "PKNAME", src], capture_output=True,
                            text=True).stdout.strip()
        disk = pk or dev
        sys_dev = Path("/sys/block") / disk
        model = ""
        with contextlib.suppress(OSError):
            model = (sys_dev / "device" / "model").read_text().strip()
        with contextlib.suppress(OSError):
            driver = os.path.basename(os.readlink(sys_dev / "device" / "driver"))
            model = f"{model} ({driver})" if model else driver
        with contextlib.suppress(OSError):
            rot = (sys_dev / "queue" / "rotational").read_text().strip()
            size = int((sys_dev / "size").read_text()) * 512
            info["disk"] = (f"{disk}: {model or 'model unknown'}, {size / GiB:.0f} GiB, "
                            f"rotational={rot}")
    return info


def fmt_num(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.3f}" if v < 10 else f"{v:.2f}"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def fmt_ratio(r: float | None, unit: str) -> str:
    if r is None:
        return "-"
    return f"{'speed' if unit != 's' else 'time '} {r:.2f}x"


def render(bench: Bench, machine: dict, sizes: Sizes, elapsed: float) -> str:
    res = bench.results
    names = [t.name for t in bench.targets if t.name not in bench.skipped]
    lines = []
    lines.append("smpfs benchmark (tools/bench.py)" + ("  --quick" if bench.args.quick else ""))
    lines.append(f"machine: {machine.get('cores')} cores ({machine.get('cpu', '?')}), "
                 f"{machine.get('memory_gib', '?')} GiB RAM, kernel {machine.get('kernel')}")
    lines.append(f"disk: {machine.get('disk', '?')}; work dir {bench.work} "
                 f"({machine.get('filesystem', '?')})")
    versions = ", ".join(f"{t.name}={t.version}" for t in bench.targets if t.version)
    lines.append(f"targets: {versions}; workloads run as uid {bench.args.uid}")
    lines.append(f"repeats: {bench.repeat} per case, targets interleaved; run took "
                 f"{elapsed:.0f} s; caches: "
                 + ("sync + drop_caches before every read phase" if bench.caches.ok
                    else f"NOT dropped ({bench.caches.reason}); sync only"))
    lines.append(f"sizes: seq {sizes.seq_bytes // MiB} MiB (zeros); small {sizes.small_files}"
                 f" x {sizes.small_size // KiB} KiB in {sizes.small_dirs} dirs, durable = "
                 f"fsync of every file and dir (no unmount); MIG {sizes.mig_bytes // MiB} MiB"
                 f" in {sizes.mig_chunk // KiB} KiB appends + profile "
                 + (f"{bench.profile.get('files')} files / {bench.profile.get('bytes', 0) / MiB:.0f}"
                    f" MiB" if bench.profile else "-")
                 + f"; random reads {sizes.iops_seconds:g} s buffered + "
                   f"{sizes.iops_seconds:g} s O_DIRECT")
    for name, why in bench.skipped.items():
        lines.append(f"SKIPPED {name}: {why}")
    lines.append("")
    lines.append("Ratios: 'speed' = target speed / reference speed (>1 faster); "
                 "'time' = target time / reference time (<1 faster).")
    hdr = (f"{'case':<34} {'unit':<6} {'target':<10} {'median':>9} {'min-max':>17} "
           f"{'vs gocryptfs':>13} {'vs plain':>12}  issue target")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    verdicts: dict[str, list[tuple[str, str, str]]] = {}
    for (_desc, key, op, thr, ref), (_d, verdict, _v) in zip(ISSUE_TARGETS, target_verdicts(bench), strict=False):
        verdicts.setdefault(key, []).append(
            (ref, f"{op}{thr:.1f}x {'plain' if ref == 'plain' else 'gocr.'}:",
             verdict if verdict != "not measured" else "-"))
    for m in METRICS:
        if m.key not in res.values:
            continue
        first = True
        for name in names:
            st = res.stats(m.key, name)
            if st is None:
                rng = "failed"
                med = "-"
            else:
                med = fmt_num(st["median"], m.unit)
                rng = f"{fmt_num(st['min'], m.unit)}-{fmt_num(st['max'], m.unit)}"
            vs_g = fmt_ratio(res.ratio(m.key, name, "gocryptfs"), m.unit) \
                if name != "gocryptfs" else ""
            vs_p = fmt_ratio(res.ratio(m.key, name, "plain"), m.unit) if name != "plain" else ""
            goal = "; ".join(f"{v[1]} {v[2]}" for v in verdicts.get(m.key, [])) \
                if name == "smpfs" else ""
            lines.append(f"{m.label if first else '':<34} {m.unit if first else '':<6} "
                         f"{name:<10} {med:>9} {rng:>17} {vs_g:>13} {vs_p:>12}  {goal}".rstrip())
            first = False
    # Daemon table (case 5)
    daemons = [n for n in names if n in bench.monitor.peaks]
    if daemons:
        lines.append("")
        lines.append("5 FUSE daemons: peak VmRSS (MiB, sampled every 0.2 s) and CPU "
                     "(utime+stime, s per GiB moved)")
        lines.append(f"{'':<32} " + " ".join(f"{d:>12}" for d in daemons))
        phases = ["seq write", "seq read", "usmt in", "usmt out", "small fsync",
                  "small create", "small find", "small read", "small rm", "iops",
                  "VmHWM, whole life"]
        for ph in phases:
            row = [bench.monitor.peaks[d].get(ph) for d in daemons]
            if any(v is not None for v in row):
                lines.append(f"{'peak RSS ' + ph:<32} " + " ".join(
                    f"{(v / 1024 if v is not None else float('nan')):>12.1f}" for v in row))
        for ph in ["seq write", "seq read", "usmt in", "usmt out"]:
            row = []
            for d in daemons:
                acc = res.cpu.get(d, {}).get(ph)
                row.append(acc["cpu_s"] / (acc["bytes"] / GiB) if acc and acc["bytes"] else None)
            if any(v is not None for v in row):
                lines.append(f"{'CPU s/GiB ' + ph:<32} " + " ".join(
                    f"{v:>12.2f}" if v is not None else f"{'-':>12}" for v in row))
    # Targets
    lines.append("")
    lines.append("targets (smpfs vs the named reference, medians of this run):")
    for desc, verdict, value in target_verdicts(bench):
        lines.append(f"  {desc:<48} {value:>14}  {verdict}")
    if res.checks:
        lines.append("")
        lines.extend(f"check: {c}" for c in res.checks)
    if res.errors:
        lines.append("")
        lines.append(f"{len(res.errors)} step(s) failed:")
        for e in res.errors:
            lines.append(f"  {e['case']} rep {e['rep']} {e['target']}: {e['error'][:500]}")
    return "\n".join(lines)


def smpfs_peak_rss_mib(bench: Bench) -> float | None:
    """Highest sampled VmRSS of the smpfs daemon over the whole run (cases 1
    and 3 are the issue's; every case run counts, which is stricter)."""
    peaks = bench.monitor.peaks.get("smpfs", {})
    vals = [v for k, v in peaks.items() if not k.startswith("VmHWM")]
    return max(vals) / 1024 if vals else None


def target_verdicts(bench: Bench) -> list[tuple[str, str, str]]:
    res = bench.results
    out = []
    for desc, key, op, thr, ref in ISSUE_TARGETS:
        r = res.ratio(key, "smpfs", ref)
        if r is None:
            out.append((desc, "not measured", "-"))
            continue
        met = r >= thr if op == ">=" else r <= thr
        kind = "speed" if METRIC_BY_KEY[key].higher_is_better else "time"
        out.append((desc, "met" if met else "NOT MET", f"{kind} {r:.2f}x"))
    rss = smpfs_peak_rss_mib(bench)
    desc = f"daemon peak RSS <= {RSS_LIMIT_MIB} MiB (sampled, whole run)"
    if rss is None:
        out.append((desc, "not measured", "-"))
    else:
        out.append((desc, "met" if rss <= RSS_LIMIT_MIB else "NOT MET", f"{rss:.1f} MiB"))
    return out


def to_json(bench: Bench, machine: dict, sizes: Sizes, elapsed: float) -> dict:
    res = bench.results
    names = [t.name for t in bench.targets if t.name not in bench.skipped]
    cases = {}
    for m in METRICS:
        if m.key not in res.values:
            continue
        entry = {"label": m.label, "unit": m.unit,
                 "ratio_kind": "speed" if m.higher_is_better else "time", "targets": {}}
        for name in names:
            st = res.stats(m.key, name)
            if st:
                st["ratio_vs_gocryptfs"] = res.ratio(m.key, name, "gocryptfs")
                st["ratio_vs_plain"] = res.ratio(m.key, name, "plain")
            entry["targets"][name] = st
        cases[m.key] = entry
    daemons = {}
    for name, peaks in bench.monitor.peaks.items():
        daemons[name] = {
            "peak_rss_mib": {k: round(v / 1024, 1) for k, v in peaks.items()},
            "cpu": {ph: {**acc, "cpu_s_per_gib": (acc["cpu_s"] / (acc["bytes"] / GiB)
                                                  if acc["bytes"] else None)}
                    for ph, acc in res.cpu.get(name, {}).items()},
            "rss_samples": bench.monitor.samples.get(name, []),
        }
    return {
        "tool": "tools/bench.py", "quick": bench.args.quick, "repeat": bench.repeat,
        "elapsed_s": round(elapsed, 1), "machine": machine, "sizes": asdict(sizes),
        "uid": bench.args.uid, "caches_dropped": bench.caches.ok,
        "cache_note": bench.caches.reason,
        "durability": "fsync of every file and directory",
        "seq_data": "zeros from /dev/zero",
        "usmt_out": "tar -cf - . | wc -c",
        "profile": bench.profile,
        "targets": {t.name: {"version": t.version, "root": str(t.root),
                             "skipped": bench.skipped.get(t.name),
                             "failed": t.failed or None} for t in bench.targets},
        "results": cases, "daemons": daemons,
        "issue5_targets": [{"target": d, "verdict": v, "value": x}
                           for d, v, x in target_verdicts(bench)],
        "checks": res.checks, "errors": res.errors,
    }


# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description="Benchmark smpfs against gocryptfs and a plain directory. "
                    "Run as root.",
        epilog="Example: sudo .venv/bin/python tools/bench.py --quick --json /tmp/bench.json")
    p.add_argument("--dir", type=Path,
                   help="directory on the disk to test; the tool works in DIR/smpfs-bench "
                        "and keeps the generated profile tree there for later runs "
                        "(default: a new temporary directory under /var/tmp, removed "
                        "afterwards)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and 1 repeat: finishes in about a minute")
    p.add_argument("--repeat", type=int,
                   help="repeats per case and target (default 3, or 1 with --quick)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS),
                   help="comma-separated subset of: %(default)s")
    p.add_argument("--cases", default=",".join(ALL_CASES),
                   help="comma-separated subset of: %(default)s (or 1,2,3,4); "
                        "case 5 (daemon RSS/CPU) is measured during the others; "
                        "add smb for a 1 GiB put/get over SMB (tools/bench_smb.py)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write machine-readable results")
    p.add_argument("--smpfs", metavar="PATH",
                   help="smpfs executable (default: next to this python, then $PATH)")
    p.add_argument("--uid", type=int, default=61000,
                   help="unprivileged uid that runs every workload (default %(default)s)")
    p.add_argument("--gid", type=int, help="its gid (default: same as --uid)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (mounts are always unmounted)")
    args = p.parse_args(argv)
    args.gid = args.uid if args.gid is None else args.gid
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = set(args.targets) - set(ALL_TARGETS)
    if bad or not args.targets:
        p.error(f"unknown target(s) {sorted(bad)}; choose from {','.join(ALL_TARGETS)}")
    args.targets = [t for t in ALL_TARGETS if t in args.targets]
    cases = [CASE_NUMBERS.get(c.strip(), c.strip()) for c in args.cases.split(",") if c.strip()]
    args.smb = "smb" in cases                  # (6) over SMB: tools/bench_smb.py
    cases = [c for c in cases if c != "smb"]
    bad = set(cases) - set(ALL_CASES)
    if bad or not (cases or args.smb):
        p.error(f"unknown case(s) {sorted(bad)}; choose from {','.join(ALL_CASES)}")
    args.cases = [c for c in ALL_CASES if c in cases]
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.uid == 0:
        p.error("--uid must not be 0: the workloads must run unprivileged")
    if args.smpfs is None and "smpfs" in args.targets:
        beside = Path(sys.executable).parent / "smpfs"
        args.smpfs = str(beside) if beside.exists() else shutil.which("smpfs")
    return args


def _sigterm(signum, frame):
    """SIGTERM behaves like Ctrl-C: the finally block unmounts."""
    raise KeyboardInterrupt


def run_smb(args) -> int:
    """Case smb: 1 GiB (256 MiB with --quick) put and get over SMB on loopback,
    Samba over a plain dir and over gocryptfs against smpfs (tools/bench_smb.py)."""
    cmd = [sys.executable, str(Path(__file__).with_name("bench_smb.py")),
           "--size-mib", "256" if args.quick else "1024", "--repeat", str(args.repeat), "--targets",
           ",".join({"plain": "samba-plain", "gocryptfs": "samba-gocryptfs", "smpfs": "smpfs"}[t]
                    for t in args.targets)]
    if args.json:
        cmd += ["--json", str(args.json.with_suffix(".smb.json"))]
    log("case smb: " + " ".join(cmd[1:]))
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench.py must run as root (it mounts filesystems, drops caches "
                 "and runs the workloads as --uid)")
    if args.smb:
        smb_rc = run_smb(args)
        if not args.cases:
            return smb_rc
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        sys.exit(f"{SYSTEM_PYTHON} is needed to run workload steps as uid {args.uid}")
    sizes = QUICK if args.quick else FULL
    temp = args.dir is None
    work = Path(tempfile.mkdtemp(prefix="smpfs-bench-", dir="/var/tmp")) if temp \
        else args.dir.resolve() / "smpfs-bench"
    if not temp and work.exists():
        # Leftovers of an interrupted run (never a mounted one).
        for child in work.iterdir():
            if child.name != "src":
                if is_mounted(child) or _stale_mount(child):
                    fusermount_u(child)
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)
    signal.signal(signal.SIGTERM, _sigterm)
    machine = machine_info(work)
    bench = Bench(args, sizes, work)
    t0 = time.perf_counter()
    interrupted = False
    try:
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: unmounting and reporting what was measured")
    finally:
        bench.monitor.stop()
        bench.teardown()
        if not args.keep:
            for child in list(work.iterdir()) if work.exists() else []:
                if child.name == "src" and not temp:
                    continue
                if is_mounted(child) or _stale_mount(child):
                    log(f"warning: {child} still mounted; leaving {work} in place")
                    break
            else:
                if temp:
                    shutil.rmtree(work, ignore_errors=True)
                else:
                    for child in work.iterdir():
                        if child.name != "src":
                            shutil.rmtree(child, ignore_errors=True) if child.is_dir() \
                                else child.unlink()
    elapsed = time.perf_counter() - t0
    print(render(bench, machine, sizes, elapsed))
    if args.json:
        args.json.write_text(json.dumps(to_json(bench, machine, sizes, elapsed), indent=1))
        log(f"results written to {args.json}")
    return 130 if interrupted else (1 if bench.results.errors or bench.skipped else 0)


if __name__ == "__main__":
    sys.exit(main())
