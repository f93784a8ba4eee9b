"""The state stores over SMB: Samba's ``smbd``, configured and run by smpfs.

Everything of this Samba lives under ``STATE/smb/`` (mode 0700): its own
``smb.conf``, private dir and passdb (tdbsam) and log; its volatile
lock/state/cache/pid/ncalrpc dirs, whose databases name open files, live on
a tmpfs (:func:`make_runtime_dir`) and are removed when it stops.
``smbd -s STATE/smb/smb.conf --foreground --no-process-group`` never reads
or writes the host's /etc/samba or /var/lib/samba.

**Who is who.** Samba maps an account to a Unix user by name (getpwnam). A
computer's uid need not be a user of the host, and users of the host must
get nothing over SMB, so smbd runs with Samba's own ``nss_wrapper``
(``LD_PRELOAD``): its user database is ``STATE/smb/passwd`` and
``STATE/smb/group``, listing root, nobody and the computers (name -> uid)
and no one else. The passdb holds exactly the computers with a secret, by
their NT hash. A computer logged on over SMB therefore reaches the mount as
its own uid (no ``force user``) and the FUSE layer's access table decides
every open, read and write; an account of the host that is not a computer,
an unknown name or a wrong secret is a logon failure.

**Shares.** One per storage folder, ``SMPSTORED_xxxxxxxx$``, pointing at the
same share directory in the mount; not browseable. Wire settings (SMB 3.1.1
only, encryption required, no oplocks/leases, no xattrs) are explained in
docs/network.md.

Computers added, removed or given a new secret while mounted are put into
the passdb at once (``changed``); new folders become shares (smbd reloads
its configuration on SIGHUP).
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import trio

from ..errors import MountError
from ..lifecycle import computer, rows
from ..lifecycle.smp import Smp

log = logging.getLogger("smpfs.network.smb")

SMB_DIR = "smb"
_DIRS = ("private", "log")
#: Samba's volatile databases: they hold the names of open files (locking.tdb),
#: so they live in RAM (a tmpfs), never in the state dir
_RUN_DIRS = ("lock", "state", "cache", "pid", "ncalrpc")
RUNTIME_BASES = ("/run", "/dev/shm")
RUNDIR_NOTE = "rundir"
#: smbd processes at once (one per client connection, plus a few of its own):
#: each costs ~10 MB, so connections beyond it are closed at once rather than
#: letting anyone who reaches the port fork smbd without bound.
#: ``$SMPFS_SMB_MAX_PROCESSES`` overrides (docs/network.md).
MAX_SMBD_PROCESSES = 100
#: minutes after which smbd drops a logged-on connection with no open file
#: (Samba's ``deadtime``); one with no share connected (never logged on) is
#: dropped by smbd's own check, every minute, whatever this says
DEADTIME_MINUTES = 5
#: lifecycle commands after which the passdb or the shares may differ
_FOLLOW = {"computer_add", "computer_remove", "computer_secret", "folder_add", "folder_remove", "config"}
#: smbd dying while mounted: restarted after RESTART_DELAY s, then twice as long
#: each time up to RESTART_DELAY_MAX, at most RESTARTS times in a row (a run of
#: STABLE_S seconds starts a new series); then SMB stays down until a remount
RESTARTS = 5
RESTART_DELAY = 2.0
RESTART_DELAY_MAX = 30.0
STABLE_S = 60.0
NSS_WRAPPER_GLOBS = ("/usr/lib/*/libnss_wrapper.so", "/usr/lib64/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so")


def find_nss_wrapper() -> str:
    env = os.environ.get("SMPFS_NSS_WRAPPER")
    for cand in ([env] if env else []) + [p for g in NSS_WRAPPER_GLOBS for p in sorted(glob.glob(g))]:
        if cand and os.path.exists(cand):
            return cand
    raise MountError("SMB needs Samba's nss_wrapper library (libnss_wrapper.so), which is not installed",
                     "Debian: apt-get install samba libnss-wrapper")


def runtime_base(state_dir: Path) -> Path:
    """Where smbd's volatile files go: the first tmpfs of /run, /dev/shm
    (``$SMPFS_RUNTIME_DIR`` overrides), else the state dir's ``smb/``."""
    tmpfs = set()
    try:
        with open("/proc/self/mounts") as f:
            tmpfs = {line.split()[1] for line in f if line.split()[2] == "tmpfs"}
    except OSError:
        pass
    base = os.environ.get("SMPFS_RUNTIME_DIR") or next((b for b in RUNTIME_BASES if b in tmpfs), None)
    if base is None:
        log.info("no tmpfs at %s: Samba's lock databases stay in the state dir", " or ".join(RUNTIME_BASES))
        return Path(state_dir) / SMB_DIR
    return Path(base)


def make_runtime_dir(state_dir: Path) -> Path:
    """A new directory for smbd's volatile files, ``smpfs-smb-<random>`` (mode
    0700) under :func:`runtime_base`, made by mkdtemp: its name cannot be
    guessed before it exists, so nothing another uid plants in a world-writable
    /dev/shm is ever followed or removed. Its name is kept in STATE/smb/rundir
    so that the next mount removes it if this one could not."""
    base = runtime_base(state_dir)
    note = Path(state_dir) / SMB_DIR / RUNDIR_NOTE
    try:
        old = note.read_text().strip()
    except OSError:
        old = ""
    if old:
        remove_runtime_dir(Path(old))
    try:
        path = Path(tempfile.mkdtemp(prefix="smpfs-smb-", dir=base))
    except OSError as e:
        raise MountError(f"cannot create Samba's runtime directory in {base}: {e.strerror}",
                         "set $SMPFS_RUNTIME_DIR to a root-only directory on a tmpfs")
    _write(note, f"{path}\n", 0o600)
    return path


def _own_dir(path: Path) -> bool:
    """``path`` is a directory smpfs made: a real one (not a symlink), ours, 0700."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
            and path.name.startswith("smpfs-smb-"))


def remove_runtime_dir(path: Path) -> None:
    """Remove a runtime directory smpfs made: only a real directory owned by
    root (never a symlink or what another uid put there)."""
    if not os.path.lexists(path):
        return
    if not _own_dir(path):
        log.warning("not removing %s: not a directory of smpfs's own", path)
        return
    shutil.rmtree(path, ignore_errors=True)     # rmtree never follows symlinks inside


def find_tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise MountError(f"SMB needs Samba's {name}, which is not installed", "Debian: apt-get install samba")
    return path


def check_port_free(address: str, port: int) -> None:
    """MountError at once if another process listens on ``address:port``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address or "0.0.0.0", port))
        except OSError as e:
            raise MountError(f"cannot serve SMB on {address}:{port}: {e.strerror}",
                             f"another process uses the port (ss -ltnp 'sport = :{port}' names it): stop it, "
                             "or pick another port with `smpfs config --smb-port [ADDR:]PORT`") from None


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a socket listening on TCP ``port``
    (/proc/net/tcp{,6} of this network namespace, and the process's fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


class SmbService:
    """smbd serving the mount's shares, run inside the mount daemon."""

    #: where ``smpfs status`` shows this service (see :meth:`health`)
    status_key = "smb"

    def __init__(self, state_dir, address: str, port: int):
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / SMB_DIR
        self.run_dir: Path | None = None
        self.address, self.port = address, port
        self.mountpoint: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.scope: trio.CancelScope | None = None
        self.nursery = None
        self.stopping = False
        self.users: set[str] = set()
        self.shares: list[str] = []
        self.env: dict = {}
        self.lock = trio.Lock()
        self.pending = False
        self.problem: str | None = "not started"     # why SMB is not served now (None: it is)
        self.started_at = 0.0

    @property
    def conf(self) -> Path:
        return self.dir / "smb.conf"

    # -- the service interface (smpfs.mount.daemon) ---------------------------------

    async def run(self, host, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start smbd and return (task_status) once smbd itself listens; then
        watch it, restarting it (at most RESTARTS times in a row, waiting longer
        each time) if it dies; until :meth:`stop`."""
        self.mountpoint = Path(host.mountpoint)
        self.stopping = False
        self.problem = None
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_PRELOAD": find_nss_wrapper(),
                    "NSS_WRAPPER_PASSWD": str(self.dir / "passwd"), "NSS_WRAPPER_GROUP": str(self.dir / "group"),
                    "LANG": "C"}
        await trio.to_thread.run_sync(self._prepare)
        try:
            with trio.CancelScope() as self.scope:
                await self._start()
                async with trio.open_nursery() as self.nursery:
                    task_status.started()
                    await self._watch()
                    self.nursery.cancel_scope.cancel()
        finally:
            self.nursery = None
            with trio.CancelScope(shield=True):
                await self._terminate()
            self._drop_run_dir()
            if self.stopping:
                self.problem = "stopped"

    async def stop(self) -> None:
        self.stopping = True
        if self.scope is not None:
            self.scope.cancel()
        with trio.CancelScope(shield=True):
            await self._terminate()
        self._drop_run_dir()

    def changed(self, cmd: str, result: dict):
        """Samba follows computers, secrets and folders: returns the sync for
        the daemon to await, so that `computer add` answers once the computer
        can log on (None when nothing changed for Samba)."""
        if cmd == "computer_secret" and not result.get("rotated"):
            return None
        if cmd in _FOLLOW and self.nursery is not None and not self.stopping:
            self.pending = True
            return self._resync()
        return None

    def health(self) -> dict:
        """For ``smpfs status``: whether smbd serves now, and if not, why."""
        proc = self.proc
        if proc is not None and proc.poll() is None and self.problem is None:
            return {"serving": True, "pid": proc.pid, "problem": None}
        problem = self.problem or (f"smbd exited ({proc.returncode})" if proc is not None else "not started")
        return {"serving": False, "pid": None, "problem": problem}

    # -- starting and stopping smbd ----------------------------------------------------

    async def _start(self) -> None:
        """Start smbd; return once it listens on the port itself (MountError if not)."""
        check_port_free(self.address, self.port)
        await trio.to_thread.run_sync(self._make_run_dir)
        smbd = find_tool("smbd")
        logf = open(self.dir / "log" / "smbd.out", "ab")
        try:
            # started from the daemon's main thread (not trio's worker threads, which
            # come and go): PR_SET_PDEATHSIG follows the thread that forked
            self.proc = subprocess.Popen(
                [smbd, "-s", str(self.conf), "--foreground", "--no-process-group"],
                env=self.env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            logf.close()
        try:
            await self._wait_listening()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._terminate()
            raise
        self.started_at = trio.current_time()
        self.problem = None
        log.info("serving SMB on %s:%d (smbd pid %d)", self.address, self.port, self.proc.pid)

    async def _watch(self) -> None:
        """Wait for smbd to exit; unless stopping, restart it with a growing delay."""
        failures = 0
        while True:
            while self.proc is not None and self.proc.poll() is None:
                await trio.sleep(0.5)
            if self.stopping:
                return
            if self.proc is not None:
                rc = self.proc.returncode
                self.problem = f"smbd exited ({rc})"     # status says so while what it forked is stopped
                with trio.CancelScope(shield=True):
                    await self._terminate()              # what it forked goes too
                if trio.current_time() - self.started_at >= STABLE_S:
                    failures = 0                         # it served a while: a fresh series of restarts
                why = f"smbd exited ({rc})"
            failures += 1
            if failures > RESTARTS:
                self.problem = f"{why}; gave up after {RESTARTS} restarts"
                log.error("%s: SMB is no longer served (see %s); remount to try again", self.problem,
                          self.dir / "log")
                return
            delay = min(RESTART_DELAY * 2 ** (failures - 1), RESTART_DELAY_MAX)
            self.problem = f"{why}; restarting it in {delay:.0f}s"
            log.error("%s: SMB is not served (see %s); restarting it in %.0fs (%d of %d)",
                      why, self.dir / "log", delay, failures, RESTARTS)
            await trio.sleep(delay)
            try:
                await self._start()
            except MountError as e:
                why = e.message
                log.error("restarting smbd failed: %s", e.message)

    def _make_run_dir(self) -> None:
        """smbd's runtime directory, empty: a new one (random name) at the first
        start; at a restart the same one, emptied inside (only root writes there,
        so nothing is swapped meanwhile; if it is gone, a new one, in smb.conf)."""
        if self.run_dir is not None and _own_dir(self.run_dir):
            for d in _RUN_DIRS:                                   # nothing of the previous smbd
                shutil.rmtree(self.run_dir / d, ignore_errors=True)
        else:
            restart = self.run_dir is not None
            self.run_dir = make_runtime_dir(self.state_dir)
            if restart:
                self._sync(force_conf=True)
        for d in _RUN_DIRS:
            (self.run_dir / d).mkdir(mode=0o700)

    def _drop_run_dir(self) -> None:
        if self.run_dir is not None:
            remove_runtime_dir(self.run_dir)
            self.run_dir = None
            try:
                os.unlink(self.dir / RUNDIR_NOTE)
            except OSError:
                pass

    async def _wait_listening(self, timeout: float = 20.0) -> None:
        """Until smbd's own process listens on the port: another process that
        answers there (the port taken) is not smbd serving."""
        deadline = trio.current_time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise MountError(f"smbd exited ({self.proc.returncode}) before serving SMB on port {self.port}: "
                                 f"{_tail(self.dir / 'log' / 'smbd.out')}{_tail(self.dir / 'log' / 'smbd.log')}",
                                 "is the port in use? pick another with `smpfs config --smb-port PORT`")
            if await trio.to_thread.run_sync(listens, self.proc.pid, self.port):
                return
            if trio.current_time() > deadline:
                raise MountError(f"smbd did not start serving port {self.port} within {timeout:.0f}s",
                                 f"is another process listening there (ss -ltnp 'sport = :{self.port}')? "
                                 f"see also {self.dir / 'log'}")
            await trio.sleep(0.05)

    async def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)          # smbd and the children it forked for clients
            except ProcessLookupError:
                pass
            with trio.move_on_after(wait):
                while proc.poll() is None:
                    await trio.sleep(0.05)
                break
        # children may outlive the parent for a moment; the group is ours alone
        for _ in range(50):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            await trio.sleep(0.05)
        log.info("smbd stopped")

    async def _resync(self) -> None:
        """One sync at a time; changes that arrive during one are all picked up by the next."""
        async with self.lock:
            if not self.pending:
                return
            self.pending = False
            try:
                shares_changed = await trio.to_thread.run_sync(self._sync)
                if shares_changed and self.proc is not None:
                    self.proc.send_signal(signal.SIGHUP)
            except Exception:
                log.exception("could not bring Samba's passdb and shares up to date")

    # -- files -------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        for d in _DIRS:
            (self.dir / d).mkdir(mode=0o700, exist_ok=True)
        self._make_run_dir()
        # a fresh passdb every mount: it holds exactly today's computers and secrets
        for name in ("passdb.tdb", "passdb.tdb.bak"):
            try:
                os.unlink(self.dir / "private" / name)
            except FileNotFoundError:
                pass
        self.users = set()
        self._sync(force_conf=True)

    def _sync(self, force_conf: bool = False) -> bool:
        """Write passwd/group, smb.conf and the passdb from smp.db; True if the shares changed."""
        smp = Smp.open(self.state_dir)
        try:
            accounts = computer.smb_accounts(smp)
            shares = [(f.share_name, f.path) for f in rows.live_folders(smp)]
            server = smp.setting("server")
        finally:
            smp.close()
        _write(self.dir / "passwd", "root:x:0:0:root:/root:/bin/false\n"
               "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
               + "".join(f"{a['name']}:x:{a['uid']}:{a['uid']}:smpfs computer:/nonexistent:/bin/false\n"
                         for a in accounts), 0o644)
        _write(self.dir / "group", "root:x:0:\nnogroup:x:65534:\n"
               + "".join(f"{a['name']}:x:{a['uid']}:\n" for a in accounts), 0o644)
        share_names = [s for s, _ in shares]
        changed = share_names != self.shares
        if changed or force_conf:
            _write(self.conf, self._conf_text(server, share_names), 0o600)
            self.shares = share_names
        now = int(time.time())
        pw = self.dir / "private" / "import.smbpasswd"
        _write(pw, "".join(f"{a['name']}:{a['uid']}:{'X' * 32}:{a['nt_hash']}:[UX         ]:LCT-{now:08X}:\n"
                           for a in accounts), 0o600)
        try:
            if accounts:
                self._pdbedit("-i", f"smbpasswd:{pw}", "-e", f"tdbsam:{self.dir / 'private' / 'passdb.tdb'}")
        finally:
            os.unlink(pw)
        names = {a["name"] for a in accounts}
        for gone in self.users - names:
            self._pdbedit("-x", "-u", gone)
        self.users = names
        return changed

    def _pdbedit(self, *args: str) -> None:
        r = subprocess.run([find_tool("pdbedit"), "-s", str(self.conf), *args], env=self.env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise MountError(f"pdbedit {args[0]} failed: {(r.stderr or r.stdout).strip()[-300:]}")

    def _conf_text(self, server: str, shares: list[str]) -> str:
        d = self.dir
        listen = ""
        if self.address not in ("0.0.0.0", "::", ""):
            listen = f"   interfaces = {self.address}\n   bind interfaces only = yes\n"
        glob_ = f"""# Written by smpfs at every mount; edits are lost. See docs/network.md.
[global]
   netbios name = {server[:15]}
   server string = smpfs State Migration Point
   server role = standalone server
   workgroup = WORKGROUP
   smb ports = {self.port}
{listen}   disable netbios = yes
   private dir = {d / 'private'}
   lock directory = {self.run_dir / 'lock'}
   state directory = {self.run_dir / 'state'}
   cache directory = {self.run_dir / 'cache'}
   pid directory = {self.run_dir / 'pid'}
   ncalrpc dir = {self.run_dir / 'ncalrpc'}
   passdb backend = tdbsam:{d / 'private' / 'passdb.tdb'}
   logging = file
   log file = {d / 'log' / 'smbd.log'}
   max log size = 10000
   log level = 0
   # who: computers only, by their secret; no guests, no anonymous listing
   map to guest = Never
   restrict anonymous = 2
   guest account = nobody
   invalid users = root
   ntlm auth = ntlmv2-only
   lanman auth = no
   # the wire: SMB 3.1.1 (pre-authentication integrity), signed and encrypted
   server min protocol = SMB3_11
   server signing = mandatory
   server smb encrypt = required
   # the mount decides access and may revoke it at a release: no client caching
   oplocks = no
   level2 oplocks = no
   smb2 leases = no
   kernel oplocks = no
   kernel share modes = no
   posix locking = no
   # what the mount stores: data, names, sizes, times; no DOS attributes or EAs
   ea support = no
   store dos attributes = no
   map archive = no
   map hidden = no
   map system = no
   map readonly = no
   follow symlinks = no
   unix extensions = no
   # files readable by the destination computer once the capture is released
   create mask = 0644
   force create mode = 0644
   directory mask = 0755
   force directory mode = 0755
   load printers = no
   printing = bsd
   printcap name = /dev/null
   disable spoolss = yes
   usershare path =
   host msdfs = no
   # bounds on what anyone who reaches the port can make smbd spend
   max smbd processes = {max_smbd_processes()}
   deadtime = {DEADTIME_MINUTES}
"""
        parts = [glob_]
        for share in shares:
            parts.append(f"""
[{share}]
   path = {self.mountpoint / share}
   browseable = no
   read only = no
   guest ok = no
""")
        return "".join(parts)


def max_smbd_processes() -> int:
    try:
        n = int(os.environ.get("SMPFS_SMB_MAX_PROCESSES") or MAX_SMBD_PROCESSES)
    except ValueError:
        n = MAX_SMBD_PROCESSES
    return max(n, 4)


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip() + " "
    except OSError:
        return ""


def _die_with_parent() -> None:
    """In the child: SIGTERM when the daemon dies, so smbd never outlives its mount."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)        # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
