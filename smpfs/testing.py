"""Integration-test helpers: a real, mounted SMP in a temporary directory.

Installing smpfs registers this module as a pytest plugin (entry point
``pytest11``), which gives tests the ``smp`` fixture::

    def test_capture_and_restore(smp):
        old, new = smp.add_computer(), smp.add_computer()
        smp.associate(old, new)
        store = smp.request_capture(old)             # as old's uid, like a task sequence
        smp.as_uid(old, lambda: open(f"{store}/USMT.MIG", "wb").write(b"x"))
        smp.release_capture(old)
        assert smp.as_uid(new, lambda: open(f"{store}/USMT.MIG", "rb").read()) == b"x"

For unittest or scripts: ``with smpfs.testing.mounted() as smp: ...``.
Everything is torn down (unmounted, daemon stopped, files removed) even
when the test fails; on failure pytest shows the SMP's audit log.

Code runs as a computer's uid by forking and dropping privileges without
exec (``as_uid``), so it needs no interpreter reachable by that uid; shell
tools run as the uid with :meth:`TestSmp.run`. Needs root and /dev/fuse.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import unittest
from dataclasses import dataclass
from pathlib import Path

from .asuid import PR_SET_KEEPCAPS, as_uid, set_caps, spawn_as  # noqa: F401 - the plugin's API
from .mount.pids import is_zombie

__all__ = ["Computer", "TestSmp", "mounted", "as_uid", "HeldFile", "errname", "spawn_as", "SkipNoFuse",
           "next_uid", "pin_uid_base"]

#: Where fresh computer uids come from. Pinned (``--smpfs-uid-base N``, the ini
#: option ``smpfs_uid_base`` or ``$SMPFS_TEST_UID_BASE``): N, N+1, ... exactly.
#: Unpinned: from 61000 plus an offset from the process id, so concurrent runs
#: on one host rarely share uids.
DEFAULT_UID_BASE = 61000


def pin_uid_base(base: int | None) -> int:
    """Take fresh uids from ``base`` upward (None: the unpinned default); returns the first."""
    global _uids
    if base is None:
        first = DEFAULT_UID_BASE + (os.getpid() % 500) * 40
    else:
        first = int(base)
        if not 1000 <= first <= 2**32 - 100_000:
            raise ValueError(f"smpfs uid base {first} is outside 1000..{2**32 - 100_000}")
    _uids = itertools.count(first)
    return first


def next_uid() -> int:
    """A fresh uid for a computer (what ``add_computer()`` uses by default)."""
    return next(_uids)


_env_base = os.environ.get("SMPFS_TEST_UID_BASE")
_uids = itertools.count(0)
pin_uid_base(int(_env_base) if _env_base else None)


#: Every TestSmp made in this process, in order (the test suite checks their daemon logs).
created: list = []
#: What in a daemon log line makes it a problem a test must expect explicitly.
LOG_PROBLEMS = (" WARNING ", " ERROR ", " CRITICAL ")


class SkipNoFuse(unittest.SkipTest):
    """Raised when mounting cannot work here (no root, no /dev/fuse): a skip for
    pytest and unittest alike, an exception for scripts."""


@dataclass(frozen=True)
class Computer:
    name: str
    uid: int

    def __str__(self) -> str:
        return self.name


def _traversable_tmpdir(prefix: str) -> Path:
    base = Path(os.environ.get("SMPFS_TEST_TMP", tempfile.gettempdir()))
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(d, 0o711)
    return d


class TestSmp:
    """A mounted SMP for tests. Build with :func:`mounted` or the ``smp`` fixture."""

    __test__ = False   # not a test class, whatever pytest thinks of the name

    def __init__(self, root: Path, *, min_free: str = "1MB", max_clients: int = 1000,
                 folder: Path | None = None):
        self.root = root
        self.state = root / "state"
        self.mountpoint = root / "mnt"
        self.folder = folder
        self.min_free = min_free
        self.max_clients = max_clients
        self.clock_offset = 0.0
        self._log_seen = 0              # bytes of the daemon log already checked
        self._final_log = None          # the unread rest, kept at teardown
        created.append(self)

    # -- setting up and tearing down ----------------------------------------------

    def init(self) -> TestSmp:
        args = ["init", "--min-free", self.min_free, "--max-clients", str(self.max_clients),
                "--server", "SMPTEST"]
        if self.folder:
            args += ["--folder", str(self.folder)]
        self.cli(*args)
        return self

    def mount(self) -> TestSmp:
        self.mountpoint.mkdir(exist_ok=True)
        os.chmod(self.mountpoint, 0o755)
        self.cli("mount", str(self.mountpoint))
        return self

    def umount(self) -> None:
        self.cli("umount", str(self.mountpoint))

    @property
    def mounted(self) -> bool:
        """Mounted, or left dead by a killed daemon (ismount() says no to those)."""
        return os.path.ismount(self.mountpoint) or _in_mounts(self.mountpoint)

    def daemon_pid(self) -> int | None:
        try:
            return int(json.loads((self.state / "daemon.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the daemon (SIGKILL by default) and clear the dead mount."""
        pid = self.daemon_pid()
        if pid:
            os.kill(pid, sig)
            _wait_gone(pid)
        if sig == signal.SIGKILL:
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)
            # a thread of the killed daemon may wait on its own mount until the
            # detach above ends the connection: the process (and its lock) goes then
            from .lifecycle.smp import daemon_alive
            deadline = time.monotonic() + 20
            while daemon_alive(self.state) and time.monotonic() < deadline:
                time.sleep(0.02)
            # a killed daemon leaves its daemon.json and socket behind
            for name in ("daemon.json", "control.sock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.state / name)

    def remount(self) -> None:
        if self.mounted:
            self.umount()
        self.mount()

    def teardown(self) -> None:
        pid = self.daemon_pid()
        if self.mounted:
            r = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
            if r.returncode:
                subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)
        if pid:
            if not _wait_gone(pid, 30):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        if self._final_log is None:
            self._final_log = self._read_log()
        shutil.rmtree(self.root, ignore_errors=True)

    def _read_log(self) -> str:
        try:
            with open(self.state / "smpfs.log", "rb") as f:
                f.seek(self._log_seen)
                data = f.read()
        except FileNotFoundError:
            return ""
        self._log_seen += len(data)
        return data.decode(errors="replace")

    def log_problems(self) -> list[str]:
        """Warnings, errors and tracebacks the daemon logged since the last call
        (the test suite fails a test on any it did not declare)."""
        text = self._read_log() if self._final_log is None else self._final_log
        self._final_log = "" if self._final_log is not None else None
        out, in_tb = [], False
        for line in text.splitlines():
            if any(w in line for w in LOG_PROBLEMS):
                out.append(line)
                in_tb = False
            elif line.startswith("Traceback"):
                in_tb = True
            elif in_tb and not line.startswith(" "):
                out.append("Traceback: " + line)     # the exception a traceback ends with
                in_tb = False
        return out

    # -- the CLI -------------------------------------------------------------------

    def cli(self, *args, uid: int | Computer | None = None, check: bool = True):
        """Run ``smpfs --state STATE ARGS`` in-process (forked as ``uid`` if given).

        Returns a :class:`CliResult`; with ``check`` a non-zero exit raises."""
        res = _run_cli(["--state", str(self.state), *map(str, args)], _uid(uid))
        if check and res.code != 0:
            raise CliFailed(res)
        return res

    def audit_log(self) -> str:
        try:
            return self.cli("log", check=False).out
        except Exception as e:  # noqa: BLE001
            return f"(audit log unavailable: {e})"

    # -- computers and the lifecycle ---------------------------------------------------

    def add_computer(self, name: str | None = None, uid: int | None = None) -> Computer:
        uid = uid if uid is not None else next_uid()
        name = name or f"PC{uid}"
        self.cli("computer", "add", name, "--uid", uid)
        return Computer(name, uid)

    def associate(self, source: Computer, dest: Computer) -> None:
        self.cli("associate", source.name, dest.name)

    def request_capture(self, computer: Computer, *args) -> Path:
        """Request State Store (capture) as the computer itself; returns the store path."""
        return Path(self.cli("request", "capture", *args, uid=computer).out.strip())

    def release_capture(self, computer: Computer) -> None:
        self.cli("release", "capture", uid=computer)

    def request_restore(self, computer: Computer) -> Path:
        return Path(self.cli("request", "restore", uid=computer).out.strip())

    def release_restore(self, computer: Computer) -> None:
        self.cli("release", "restore", uid=computer)

    def advance(self, duration: str) -> list:
        """Move the SMP's retention clock forward and sweep as if it were then."""
        from .units import parse_duration
        self.clock_offset += parse_duration(duration)
        at = time.time() + self.clock_offset
        import datetime as dt
        out = self.cli("retention", "run", "--at", dt.datetime.fromtimestamp(at).isoformat(), "--json").out
        return json.loads(out).get("deleted", [])

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").out)

    # -- running things as a computer --------------------------------------------------------

    def as_uid(self, who: int | Computer, fn, *args, **kwargs):
        return as_uid(_uid(who), fn, *args, **kwargs)

    def run(self, cmd, who: int | Computer | None = None, check: bool = True, caps=(), **kw):
        """Run a command (list or shell string) as ``who``; returns CompletedProcess.

        ``caps`` (e.g. ``["dac_read_search"]``) are Linux capabilities the
        command keeps as that uid (ambient capabilities, through setpriv(1)):
        for a capture tool that reads every profile on the machine, say."""
        uid = _uid(who)
        if caps:
            if uid is None:
                raise ValueError("caps= needs who=: root has every capability already")
            want = ",".join("+" + c.lower().removeprefix("cap_") for c in caps)
            argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(map(str, cmd))
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                   f"--inh-caps={want}", f"--ambient-caps={want}", "--", *argv]
            return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)
        extra = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
        return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, capture_output=True,
                              text=True, **extra, **kw)


def errname(fn, *args, **kwargs) -> str:
    """'ok' if ``fn`` succeeds, else the errno name of its OSError (to run in as_uid)."""
    try:
        fn(*args, **kwargs)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


class HeldFile:
    """A process running as ``uid`` that keeps one file open across lifecycle changes
    (a migration tool still writing when the task sequence releases the store).

    ``do("pwrite", data, off)`` / ``do("pread", n, off)`` run ``os.<op>(fd, ...)`` in it
    and return the result or raise the OSError (errno kept)."""

    def __init__(self, who, path, flags: int = os.O_RDONLY, mode: int = 0o644):
        uid = _uid(who)
        import multiprocessing
        self.conn, child = multiprocessing.Pipe()
        self.pid = os.fork()
        if self.pid == 0:                                  # the holder
            code = 0
            try:
                self.conn.close()
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                fd = os.open(path, flags, mode)
                child.send(("ok", None))
                while (req := child.recv()) is not None:
                    try:
                        child.send(("ok", getattr(os, req[0])(fd, *req[1:])))
                    except OSError as e:
                        child.send(("err", e.errno))
            except BaseException as e:                     # noqa: BLE001 - reported to the parent
                code = 1
                try:
                    child.send(("err", getattr(e, "errno", None) or repr(e)))
                except Exception:                          # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        child.close()
        self._reply()

    def _reply(self):
        kind, value = self.conn.recv()
        if kind == "err":
            if isinstance(value, int):
                raise OSError(value, os.strerror(value))
            raise RuntimeError(value)
        return value

    def do(self, op: str, *args):
        self.conn.send((op, *args))
        return self._reply()

    def errname(self, op: str, *args) -> str:
        try:
            self.do(op, *args)
            return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    def close(self) -> None:
        if self.pid:
            try:
                self.conn.send(None)
            except OSError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _uid(who) -> int | None:
    return who.uid if isinstance(who, Computer) else who


@dataclass
class CliResult:
    code: int
    out: str
    err: str


class CliFailed(AssertionError):
    def __init__(self, res: CliResult):
        super().__init__(f"smpfs exited {res.code}: {res.err.strip() or res.out.strip()}")
        self.result = res


def _run_cli(argv: list[str], uid: int | None) -> CliResult:
    def go():
        from click.testing import CliRunner

        from .cli import main
        r = CliRunner().invoke(main, argv, catch_exceptions=True)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            err = "".join(traceback.format_exception(r.exception))
            return CliResult(1, r.stdout, r.stderr + err)
        return CliResult(r.exit_code, r.stdout, r.stderr)
    if uid is None:
        if argv[2:3] == ["mount"]:
            # the daemon must outlive this process: use the real executable
            r = subprocess.run([sys.executable, "-m", "smpfs", *argv], capture_output=True, text=True)
            return CliResult(r.returncode, r.stdout, r.stderr)
        return go()
    return as_uid(uid, go)


def _in_mounts(path: Path) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == str(path) for line in f)
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if is_zombie(pid):    # exited; its reaper (init: the daemon is double-forked) may take a while
            return True
        time.sleep(0.02)
    return False




def fuse_available() -> str | None:
    """None if mounting can work here, else why not."""
    if os.geteuid() != 0:
        return "smpfs tests mount filesystems as other uids: run them as root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not shutil.which("fusermount3"):
        return "fusermount3 is missing (apt-get install fuse3)"
    return None


@contextlib.contextmanager
def mounted(*, min_free: str = "1MB", max_clients: int = 1000, folder: Path | None = None):
    """An initialised, mounted SMP in a temporary directory; always torn down."""
    why = fuse_available()
    if why:
        raise SkipNoFuse(why)
    smp = TestSmp(_traversable_tmpdir("smpfs-test-"), min_free=min_free, max_clients=max_clients,
                  folder=folder)
    try:
        smp.init()
        smp.mount()
        yield smp
    finally:
        smp.teardown()


# -- the pytest plugin -------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - plain unittest users
    pytest = None

if pytest is not None:
    def pytest_addoption(parser):
        group = parser.getgroup("smpfs")
        group.addoption("--smpfs-uid-base", type=int, default=None, metavar="UID",
                        help="first uid the smp fixtures give computers (N, N+1, ...); "
                             "default: $SMPFS_TEST_UID_BASE, else 61000 + an offset from the pid")
        parser.addini("smpfs_uid_base", "first uid the smp fixtures give computers (see --smpfs-uid-base)")

    def pytest_configure(config):
        base = config.getoption("--smpfs-uid-base", None)
        if base is None and config.getini("smpfs_uid_base"):
            base = int(config.getini("smpfs_uid_base"))
        if base is None and os.environ.get("SMPFS_TEST_UID_BASE"):
            base = int(os.environ["SMPFS_TEST_UID_BASE"])
        try:
            pin_uid_base(base)
        except ValueError as e:
            raise pytest.UsageError(str(e))

    @pytest.fixture
    def smp(request):
        """A fresh mounted SMP (root needed); unmounted and removed after the test."""
        try:
            with mounted() as s:
                request.node._smpfs = s
                yield s
        except SkipNoFuse as e:
            pytest.skip(str(e))

    @pytest.fixture(scope="module")
    def smp_module(request):
        """One mounted SMP shared by a test module (faster; give each test its
        own computer and store so they stay independent)."""
        try:
            with mounted() as s:
                yield s
        except SkipNoFuse as e:
            pytest.skip(str(e))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        rep = outcome.get_result()
        s = getattr(item, "_smpfs", None)
        if s is not None and rep.failed and call.when == "call":
            rep.sections.append(("smpfs audit log", s.audit_log()))
            try:
                rep.sections.append(("smpfs daemon log", (s.state / "smpfs.log").read_text()[-5000:]))
            except OSError:
                pass
