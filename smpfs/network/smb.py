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

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import trio

from ..errors import MountError
from ..lifecycle import computer, rows
from ..lifecycle.smp import Smp
from .smbhost import (
    RUN_DIRS,
    RUNDIR_NOTE,
    SMB_DIR,
    check_port_free,
    find_nss_wrapper,
    find_tool,
    helpers_of,
    listens,
    make_runtime_dir,
    own_dir,
    remove_runtime_dir,
    write_file,
)

log = logging.getLogger("smpfs.network.smb")

_DIRS = ("private", "log")
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
        if self.run_dir is not None and own_dir(self.run_dir):
            for d in RUN_DIRS:                                   # nothing of the previous smbd
                shutil.rmtree(self.run_dir / d, ignore_errors=True)
        else:
            restart = self.run_dir is not None
            self.run_dir = make_runtime_dir(self.state_dir)
            if restart:
                self._sync(force_conf=True)
        for d in RUN_DIRS:
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
        await self._stop_rpc_helpers()
        log.info("smbd stopped")

    async def _stop_rpc_helpers(self) -> None:
        """smbd starts samba-dcerpcd (share listing, srvsvc) on demand in a
        session of its own, which outlives smbd: stop every root process that
        runs with our smb.conf."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = await trio.to_thread.run_sync(helpers_of, self.conf)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            with trio.move_on_after(3.0):
                while await trio.to_thread.run_sync(helpers_of, self.conf):
                    await trio.sleep(0.05)
                return

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
        write_file(self.dir / "passwd", "root:x:0:0:root:/root:/bin/false\n"
               "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
               + "".join(f"{a['name']}:x:{a['uid']}:{a['uid']}:smpfs computer:/nonexistent:/bin/false\n"
                         for a in accounts), 0o644)
        write_file(self.dir / "group", "root:x:0:\nnogroup:x:65534:\n"
               + "".join(f"{a['name']}:x:{a['uid']}:\n" for a in accounts), 0o644)
        share_names = [s for s, _ in shares]
        changed = share_names != self.shares
        if changed or force_conf:
            write_file(self.conf, self._conf_text(server, share_names), 0o600)
            self.shares = share_names
        now = int(time.time())
        pw = self.dir / "private" / "import.smbpasswd"
        write_file(pw, "".join(f"{a['name']}:{a['uid']}:{'X' * 32}:{a['nt_hash']}:[UX         ]:LCT-{now:08X}:\n"
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
