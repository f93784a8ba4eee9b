"""Mounting and unmounting an SMP, from the CLI: no FUSE library needed.

``mount()`` checks everything it can *before* forking (so errors are clear and
come with an exit code), starts the daemon (``smpfs mount --foreground``, see
daemon.py) in the background and returns once the mount answers. ``umount()``
flushes, unmounts and waits for the daemon to exit, or clears the dead mount a
killed daemon left. ``daemon_info()`` says which daemon serves an SMP.

This module imports neither pyfuse3 nor trio: `fsck`, `role remove` and every
command that only asks whether the SMP is mounted work where FUSE is not
installed (the unit tier runs as an ordinary user without it).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import MountError, NotMountedError, SmpError
from ..lifecycle import rows
from ..lifecycle.smp import DAEMON_FILE, Smp, daemon_alive, fuse_mounts
from . import control

log = logging.getLogger("smpfs.mount.daemon")

LOG_FILE = "smpfs.log"

def daemon_info(state_dir: Path) -> dict | None:
    """daemon.json of the daemon serving this SMP if one does (it holds
    STATE/daemon.lock), else None."""
    if not daemon_alive(state_dir):
        return None
    try:
        return json.loads((Path(state_dir) / DAEMON_FILE).read_text())
    except (OSError, ValueError):
        return {}


def forget_daemon(state_dir: Path) -> None:
    """Remove what a daemon that died left in the state dir."""
    for name in (DAEMON_FILE, control.SOCKET_NAME):
        try:
            os.unlink(Path(state_dir) / name)
        except FileNotFoundError:
            pass


def answering_daemon(state_dir: Path) -> dict | None:
    """``ping``'s answer (pid, mountpoint) if a daemon answers on this SMP's
    control socket, else None. A daemon that answers is alive whatever its lock
    file says (removed or replaced by hand, say): never treat its mount as dead."""
    try:
        return control.call(state_dir, "ping", timeout=10)
    except (SmpError, OSError, ValueError):
        return None


def clear_dead_mount(state_dir: Path, mountpoint: Path, quiet: bool = False) -> None:
    """Unmount what a dead daemon of this SMP left at ``mountpoint`` (it answers
    ENOTCONN to everything), lazily if a process still has it open. Logged as a
    warning unless ``quiet`` (the caller tells the user itself)."""
    r = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if r.returncode != 0 and str(mountpoint) in fuse_mounts():
        r = subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True, text=True)
        if r.returncode != 0 and str(mountpoint) in fuse_mounts():
            raise MountError(f"could not clear the dead mount at {mountpoint}: {r.stderr.strip()}",
                             f"try: umount -l {mountpoint}")
    forget_daemon(state_dir)
    (log.info if quiet else log.warning)("cleared the dead mount at %s (its daemon had died)", mountpoint)


def preflight(state_dir: Path, mountpoint: Path, before_delete=None, notes: list | None = None) -> Smp:
    """Everything that can be checked before mounting, each with a clear error.
    What it did on the way (a dead mount cleared) is appended to ``notes`` if
    given (the CLI says it), else logged."""
    smp = Smp.open(state_dir, before_delete)
    smp.master_key()                                   # missing / unsafe key -> KeyFileError
    row = rows.any_keyed_store(smp)
    if row is not None:
        smp.data_key(row)                              # a wrong master key -> KeyFileError
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse does not exist",
                         "load the fuse module (modprobe fuse) or run where FUSE is available")
    info = daemon_info(smp.state_dir)
    if info is None and answering_daemon(smp.state_dir) is not None:
        info = answering_daemon(smp.state_dir)        # alive, its lock file gone: not dead
    if info is None:
        dead = smp.dead_mount()
        if dead is not None:                  # a daemon of this SMP died: clear what it left
            clear_dead_mount(smp.state_dir, dead, quiet=notes is not None)
            if notes is not None:
                notes.append(f"the daemon of this SMP had died: cleared the dead mount it left at {dead}"
                             " (every store is checked before the mount serves)")
        forget_daemon(smp.state_dir)
    if str(mountpoint) in fuse_mounts():      # checked without stat(): it may be dead or stuck
        raise MountError(f"mountpoint {mountpoint} is busy: a FUSE filesystem is already mounted there",
                         f"unmount it first (smpfs --state ITS_STATE_DIR umount {mountpoint}, "
                         f"or fusermount3 -u {mountpoint})")
    if not mountpoint.exists():
        raise MountError(f"mountpoint {mountpoint} does not exist", f"create it: mkdir -p {mountpoint}")
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is busy: something is already mounted there",
                         f"unmount it first: umount {mountpoint}")
    if info is not None:
        raise MountError(f"this SMP is already mounted at {info.get('mountpoint')} (pid {info.get('pid')})",
                         "one SMP is served by one daemon; use that mount or unmount it first")
    return smp


def mount(state_dir, mountpoint, foreground: bool = False, debug: bool = False, services=()) -> list[str]:
    """Mount; ``services`` (foreground only) run inside the daemon, see the module doc.
    In the background the daemon is ``smpfs mount --foreground``, which composes them.
    Returns what the user should be told besides (a dead mount cleared first)."""
    state_dir = Path(state_dir).absolute()
    mountpoint = Path(mountpoint).absolute()
    notes: list[str] = []
    smp = preflight(state_dir, mountpoint, notes=notes)
    smp.close()
    if foreground:
        # the daemon needs pyfuse3: imported only where it mounts
        from .daemon import Daemon
        Daemon(state_dir, mountpoint, debug=debug, services=services).run()
        return notes
    r, w = os.pipe()
    env = dict(os.environ, SMPFS_READY_FD=str(w))
    # -P: nothing is imported from the working directory (`python -m` would put
    # it first on sys.path: a `smpfs/` planted where root runs `smpfs mount`
    # would run as root); and the daemon runs in / (it holds no directory busy)
    cmd = [sys.executable, "-P", "-m", "smpfs", "--state", str(state_dir), "mount", str(mountpoint),
           "--foreground"]
    if debug:
        cmd.append("--debug")
    logf = os.fdopen(os.open(state_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
    os.fchmod(logf.fileno(), 0o600)           # the log names stores and computers: root's only
    proc = subprocess.Popen(cmd, env=env, pass_fds=(w,), stdin=subprocess.DEVNULL, cwd="/",
                            stdout=logf, stderr=logf, start_new_session=True, close_fds=True)
    os.close(w)
    logf.close()
    with os.fdopen(r, "rb") as pipe:
        msg = pipe.read().decode(errors="replace").strip()
    if msg == "READY":
        return notes
    try:                   # the daemon unmounts what it mounted before it exits
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = None
    if msg.startswith("ERROR "):
        _, exit_code, text = msg.split(" ", 2)
        try:
            told = json.loads(text)
            e = MountError(told["message"], told.get("hint"))
        except (ValueError, KeyError, TypeError):
            e = MountError(text, f"see {state_dir / LOG_FILE}")
        e.exit_code = int(exit_code)
        raise e
    raise MountError(f"the smpfs daemon exited ({code}) before the mount was ready",
                     f"see {state_dir / LOG_FILE}")


def umount(state_dir, mountpoint, timeout: float = 120) -> str:
    """Flush, unmount and wait for the daemon to exit; or clear the dead mount
    a daemon of this SMP left. Only this SMP's own mount is touched.
    Returns "unmounted" or "cleared"."""
    state_dir = Path(state_dir).absolute()
    mountpoint = Path(os.path.normpath(Path(mountpoint).absolute()))
    smp = Smp.open(state_dir)
    try:
        live, dead = smp.mountpoint(), smp.dead_mount()
    finally:
        smp.close()
    pid = None
    if live is None:
        answer = answering_daemon(state_dir)          # a live daemon whose lock file is gone
        if answer is not None:
            log.warning("the daemon of %s (pid %s) answers but does not hold %s/daemon.lock",
                        state_dir, answer.get("pid"), state_dir)
            live, dead, pid = Path(answer["mountpoint"]), None, answer.get("pid")
    if dead is not None and Path(os.path.normpath(dead)) == mountpoint:
        clear_dead_mount(state_dir, mountpoint, quiet=True)
        return "cleared"
    if live is None or Path(os.path.normpath(live)) != mountpoint:
        where = f"it is mounted at {live}" if live else "it is not mounted"
        if str(mountpoint) in fuse_mounts() or os.path.ismount(mountpoint):
            raise NotMountedError(f"{mountpoint} is not the mount of the SMP in {state_dir} ({where})",
                                  "give the --state of the SMP mounted there"
                                  + (f", or unmount this one: smpfs umount {live}" if live else ""))
        if live:
            raise NotMountedError(f"{mountpoint} is not mounted: the SMP in {state_dir} is mounted at {live}",
                                  f"unmount this SMP with: smpfs umount {live}")
        raise NotMountedError(f"{mountpoint} is not mounted, and neither is the SMP in {state_dir}",
                              "nothing to unmount; `smpfs status` shows the SMP")
    stopped = False
    try:                    # network services hold the mount busy while they serve
        stopped = bool(control.call(state_dir, "services_stop", timeout=60).get("stopped"))
    except SmpError:
        pass
    r = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if r.returncode != 0:
        err = r.stderr.strip()
        # still mounted: what it served on the network is served again
        again = ""
        if stopped:
            try:
                control.call(state_dir, "services_start", timeout=60)
            except SmpError as e:
                again = f"; its network services could not be started again: {e.message}"
        if "busy" in err.lower():
            raise MountError(f"{mountpoint} is busy: a process still uses it (it stays mounted{again})",
                             f"find it with: fuser -vm {mountpoint}")
        raise MountError(f"unmounting {mountpoint} failed: {err}{again}")
    deadline = time.monotonic() + timeout
    # the kernel drops the daemon's lock when it exits (or, lock file gone, its pid goes)
    while daemon_alive(state_dir) or (pid is not None and _running(int(pid))):
        if time.monotonic() > deadline:
            raise MountError(f"the daemon did not exit within {timeout:.0f}s after unmount",
                             f"see {state_dir / LOG_FILE}")
        time.sleep(0.02)
    return "unmounted"


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: init may reap it late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
