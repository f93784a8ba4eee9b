"""The mount daemon: pyfuse3's loop, the control socket, timers and signals.

mounting.py checks everything it can before starting it (``smpfs mount
--foreground`` in the background). The daemon runs, in one trio loop:

* pyfuse3's request loop (``fs.SmpOperations``);
* the control socket (``control.serve``) through which the CLI runs
  lifecycle commands; the caller's uid comes from ``SO_PEERCRED``;
* a commit timer (batch commits every second, a durable point every few);
* the retention timer, sleeping until the next deadline;
* a signal receiver: SIGTERM / SIGINT unmount cleanly;
* the **services** it was given (the CLI composes the network layer's SMB and
  HTTPS services here; this layer does not know them): each is started with
  ``await nursery.start(service.run, daemon)`` before the mount says READY,
  is told ``service.changed(cmd, result)`` after every lifecycle command (it
  may return an awaitable, awaited before the command answers), and
  is stopped (``await service.stop()``) before the unmount (and started again,
  ``services_start``, if the unmount then fails: the mount was busy). A service
  runs commands with :meth:`Daemon.call`, like the control socket does, and
  says whether it serves (``service.health()``: ``serving``, ``problem``),
  which ``status`` adds under ``service.status_key``. A service that fails to
  start before READY fails the mount, which is then unmounted cleanly.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import logging.handlers
import os
import signal
import sys
import time
from pathlib import Path

import pyfuse3
import trio

from ..crypto.keys import StoreKeys
from ..errors import KeyFileError, MountError, PermissionDenied, SmpError, smp_error_in
from ..lifecycle import api, audit, retention, rows
from ..lifecycle.smp import DAEMON_FILE, Smp, hold_daemon_lock
from ..store.layout import ROOT as STORE_ROOT
from ..store.reserve import ensure_reserve
from ..store.statestore import StateStore
from ..units import parse_free
from . import control
from . import services as service_ops
from .catalog import GONE, Catalog, ShareRec, StoreRec
from .guard import OP_COUNTS
from .host import min_free_fn, raise_fd_limit, sd_notify, set_readahead
from .inodes import SHARE_BASE, join
from .kernelcache import KernelCache
from .mounting import LOG_FILE, forget_daemon, preflight
from .operations import SmpOperations

log = logging.getLogger("smpfs.mount.daemon")

COMMIT_EVERY = 1.0
IDLE_CLOSE = 300.0          # a store unused this long is closed and its key dropped
SYNC_EVERY = 5.0

# Worker threads, each pool with its own limiter so that no caller can starve
# another's: computers' control commands share CONTROL_THREADS (and one uid
# runs at most COMMANDS_PER_UID at once, the rest wait without a thread);
# root's commands have their own ADMIN_THREADS, so `status` and `umount`
# answer whatever computers do; retention has its own. The filesystem's
# durable path (fsync) and write-back have theirs in SmpOperations. Nothing
# in any of them sleeps for a caller: retries happen in the caller.
CONTROL_THREADS = 8
ADMIN_THREADS = 4
COMMANDS_PER_UID = 2


# -- the daemon ----------------------------------------------------------------------

class Daemon:
    def __init__(self, state_dir: Path, mountpoint: Path, debug: bool = False, services=()):
        self.services = list(services)
        self.state_dir = state_dir
        self.mountpoint = mountpoint
        self.debug = debug
        self.smp: Smp | None = None
        self.catalog = Catalog()
        self.denials = audit.DenialCounter()          # the filesystem's refusals, counted for the audit log
        self.ops: SmpOperations | None = None
        self.kcache: KernelCache | None = None
        self.wake_retention: trio.Event | None = None
        self.nursery = None
        self.control_limiter = trio.CapacityLimiter(CONTROL_THREADS)
        self.admin_limiter = trio.CapacityLimiter(ADMIN_THREADS)
        self.retention_limiter = trio.CapacityLimiter(1)
        self._uid_slots: dict[int, list] = {}        # uid -> [Semaphore, users]
        self._no_room: set[str] = set()              # stores whose last periodic commit found a full disk
        self._lock_fd = -1
        self._ready = False             # told the parent READY: served from then on
        self._ready_fd = int(os.environ.pop("SMPFS_READY_FD", "-1"))

    def _tell_parent_error(self, e: SmpError) -> None:
        """The error `smpfs mount` (the parent) reports: its message and hint apart."""
        self._tell_parent(f"ERROR {e.exit_code} " + json.dumps({"message": e.message, "hint": e.hint}))

    def _tell_parent(self, msg: str) -> None:
        if self._ready_fd >= 0:
            try:
                os.write(self._ready_fd, msg.encode() + b"\n")
            finally:
                os.close(self._ready_fd)
                self._ready_fd = -1

    def _setup_logging(self) -> None:
        root = logging.getLogger("smpfs")
        root.setLevel(logging.DEBUG if self.debug else logging.INFO)
        h = logging.handlers.RotatingFileHandler(self.state_dir / LOG_FILE, maxBytes=10 << 20, backupCount=3)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
        if sys.stderr.isatty() or os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
            # a terminal, or systemd's journal (which adds its own timestamps)
            h2 = logging.StreamHandler()
            h2.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            root.addHandler(h2)

    def run(self) -> None:
        # logs, daemon.json, store files: root's only (modes that must be wider are set explicitly)
        os.umask(0o077)
        try:
            self._setup_logging()
            raise_fd_limit()
            self.smp = preflight(self.state_dir, self.mountpoint, before_delete=self._before_delete)
            try:
                self._lock_fd = hold_daemon_lock(self.state_dir)     # held until this process ends
            except BlockingIOError:
                raise MountError("this SMP is already mounted (another daemon serves it)",
                                 "one SMP is served by one daemon; use that mount or unmount it first")
            self._recover_if_dirty()
            self.refresh()
            self.ops = SmpOperations(self.catalog, self._open_store, on_denied=self.denials.note)
            self.kcache = KernelCache(self.ops.pagecache)
            opts = set(pyfuse3.default_options)
            opts.discard("default_permissions")
            opts |= {"fsname=smpfs", "subtype=smpfs", "noatime"}
            if os.geteuid() == 0:
                opts.add("allow_other")
            pyfuse3.init(self.ops, str(self.mountpoint), opts)
            self.ops.pagecache.enable()
        except SmpError as e:
            self._tell_parent_error(e)
            raise
        except Exception as e:
            self._tell_parent_error(MountError(f"{type(e).__name__}: {e}", f"see {self.state_dir / LOG_FILE}"))
            raise
        self.smp.set_dirty(True)
        (self.state_dir / DAEMON_FILE).write_text(json.dumps(
            {"pid": os.getpid(), "mountpoint": str(self.mountpoint), "started": time.time()}))
        log.info("mounted %s at %s", self.state_dir, self.mountpoint)
        audit.record(self.smp, os.geteuid(), "mount", mountpoint=str(self.mountpoint), pid=os.getpid(),
                     debug=self.debug)
        ok = False
        try:
            trio.run(self._main)
            ok = True
        except BaseException as e:
            if self._ready:
                raise
            # failed before READY (a network service could not start): nothing
            # was served yet, so unmount cleanly rather than leave a dead mount,
            # and report the error itself (trio wraps it in an ExceptionGroup)
            ok = True
            err = smp_error_in(e)
            if err is None:
                log.exception("starting the mount failed")
                err = MountError(f"{type(e).__name__}: {e}", f"see {self.state_dir / LOG_FILE}")
            log.error("not mounted: %s", err.message)
            self._tell_parent_error(err)
            raise err from None
        finally:
            try:
                self.ops.pagecache.stop()        # before the session it pushes into goes
                self._shutdown()
            finally:
                pyfuse3.close(unmount=ok)
                forget_daemon(self.state_dir)
        log.info("unmounted %s; requests served: %s", self.mountpoint,
                 ", ".join(f"{k} {v}" for k, v in OP_COUNTS.most_common()))
        os.close(self._lock_fd)          # `smpfs umount` waits for this

    def _shutdown(self) -> None:
        errors = 0
        for rowid in list(self.ops.stores.open):
            try:
                self.ops.stores.close(rowid)
            except Exception:
                errors += 1
                log.exception("closing store %d failed", rowid)
        if not errors:
            self.smp.set_dirty(False)
        try:
            self.denials.flush(self.smp, force=True)
            audit.record(self.smp, os.geteuid(), "umount", outcome="ok" if not errors else "error",
                         mountpoint=str(self.mountpoint), clean=not errors)
        except Exception:                            # an unmount never fails on its log entry
            log.exception("could not record the unmount in the audit log")

    def _recover_if_dirty(self) -> None:
        if self.smp.dirty:
            from ..lifecycle import fsck
            log.warning("the last mount did not end cleanly: checking every store")
            report = fsck.check_smp(self.smp, repair=True)
            for line in report.get("findings", []):
                log.warning("fsck: %s", line)
        # deletions a crash interrupted, and stores that expired while nothing
        # was mounted, are deleted before anything is served
        done = retention.sweep(self.smp)
        if done:
            log.info("deleted %d store(s) whose retention ended while unmounted", len(done))

    # -- the catalog ---------------------------------------------------------------

    def refresh(self, changed: list[str] | None = None) -> list[int]:
        """Reload shares and stores from smp.db and act on what changed.
        Returns the stores just frozen (released) whose captured data is still
        to be made durable: the caller awaits :meth:`freeze` for each (a
        release is acknowledged only once it is), or :meth:`freeze_later`."""
        shares = {}
        for f in rows.live_folders(self.smp):
            shares[f.id] = ShareRec(f.id, f.share, f.path,
                                    min_free_fn(parse_free(f.min_free), f.path, self.smp.state_dir))
        old = dict(self.catalog.stores)
        stores = {}
        for s in rows.all_stores(self.smp):
            stores[s.id] = StoreRec(s.id, s.store_id, s.folder_id, s.status.value,
                                    s.source_uid, s.dest_uid, int((s.created_at or 0) * 1e9))
        self.catalog.shares = shares
        self.catalog.stores = stores
        if self.ops is None:
            return []
        frozen = []
        for rowid, rec in stores.items():
            before = old.get(rowid)
            if before is None or before.status == rec.status:
                continue
            if self._status_changed(before, rec):
                frozen.append(rowid)
        return frozen

    def _open_store(self, rec: StoreRec) -> StateStore:
        row = rows.store_by_rowid(self.smp, rec.rowid)
        folder = self.catalog.shares.get(rec.folder_id)
        if row is None or folder is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            data_key = self.smp.data_key(row)
        except KeyFileError:
            # the master key was rotated (by a worker's connection) since it was cached here
            self.smp.forget_master_key()
            data_key = self.smp.data_key(row)
        keys = StoreKeys.from_data_key(rec.store_id, data_key)
        def on_reserve(limit: int, rowid=rec.rowid) -> None:
            rows.raise_nonce_hwm(self.smp, rowid, limit)
        frozen = rec.status != "capturing"
        st = StateStore(Path(folder.path) / rec.store_id, keys, min_free_bytes=folder.min_free,
                        min_counter=row.nonce_hwm or 0, on_reserve=on_reserve,
                        expect_root=row.root_mac if frozen else None)
        st.read_only = frozen
        if frozen and row.root_mac is None:
            self._record_root(rec.rowid, st)         # released while nothing was mounted
        return st

    def _record_root(self, rowid: int, st: StateStore) -> None:
        """Keep the MAC of a frozen store as a whole in smp.db (once: a released store never changes)."""
        root = st.root_mac()
        if root is not None:
            rows.keep_root_mac(self.smp, rowid, root)

    async def freeze(self, rowid: int) -> None:
        """Everything captured made durable as the store is frozen, then its
        root MAC kept. A failure is logged (the store stays changed, so the
        commit timer tries again), never raised to the releasing client."""
        st = self.ops.stores.open.get(rowid)
        if st is None:
            return
        try:
            await self.ops.stores.durable(st)
            if st.db is not None:
                self._record_root(rowid, st)
        except Exception:
            log.exception("making store %s… durable at its release failed", st.path.name[:12])

    def freeze_later(self, rowids: list[int]) -> None:
        for rowid in rowids:
            self.nursery.start_soon(self.freeze, rowid)

    def _status_changed(self, before: StoreRec, rec: StoreRec) -> bool:
        """Act on a store's new status; True if it was just frozen with
        captured data not yet durable (see :meth:`refresh`)."""
        log.info("store %s…: %s -> %s", rec.store_id[:12], before.status, rec.status)
        self.ops.pagecache.store_changed(rec.rowid)      # no page pushed from here on is of before
        st = self.ops.stores.open.get(rec.rowid)
        if rec.status in GONE:
            inodes = self.ops.handles.inodes_of(rec.rowid)
            self.ops.stores.close(rec.rowid, abandon=True)
            self.kcache.invalidate(inodes, entry=(SHARE_BASE + rec.folder_id, rec.store_id.encode()),
                                   rowid=rec.rowid)
            return False
        freeze = False
        if st is not None:
            if rec.status != "capturing" and not st.read_only:
                # everything captured is made durable as it is frozen, and its root MAC kept
                if self.nursery:
                    freeze = True
                else:
                    st.sync()
                    self._record_root(rec.rowid, st)
            st.read_only = rec.status != "capturing"
        # who may see what changed: drop every cached attribute and page of the
        # store (no dirty pages: no writeback cache), so the next stat() or read()
        # of anything in it asks us, and the access table, again
        self.kcache.invalidate(set(self.ops.handles.inodes_of(rec.rowid)) | {join(rec.rowid, STORE_ROOT)},
                               rowid=rec.rowid)
        return freeze

    # -- the loop --------------------------------------------------------------------

    async def _main(self) -> None:
        self.wake_retention = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = self.kcache.nursery = nursery
            await nursery.start(self.ops.wb.run)
            await nursery.start(control.serve, self.state_dir / control.SOCKET_NAME, self._command)
            for service in self.services:
                await nursery.start(service.run, self)
            nursery.start_soon(self._signals)
            nursery.start_soon(self._commit_timer)
            nursery.start_soon(self._retention_timer)
            nursery.start_soon(self._after_init)
            self._ready = True
            self._tell_parent("READY")
            sd_notify("READY=1\nSTATUS=serving " + str(self.mountpoint))
            await pyfuse3.main()
            await self._stop_services()
            await self.ops.stores.drain_all()
            self.ops.stores.stop_writeback()
            nursery.cancel_scope.cancel()

    async def _after_init(self) -> None:
        # the kernel sets read-ahead when it gets the INIT reply: raise it after that
        await trio.sleep(0.3)
        await trio.to_thread.run_sync(set_readahead, self.mountpoint)

    async def _stop_services(self) -> None:
        await service_ops.stop_all(self.services)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for sig in sigs:
                log.info("signal %s: unmounting", signal.Signals(sig).name)
                sd_notify("STOPPING=1")
                await self._stop_services()
                pyfuse3.terminate()
                return

    async def _commit_timer(self) -> None:
        last_sync = time.monotonic()
        while True:
            await trio.sleep(COMMIT_EVERY)
            durable = time.monotonic() - last_sync >= SYNC_EVERY
            try:
                self.denials.flush(self.smp)
            except Exception:
                log.exception("writing the filesystem's refusals to the audit log failed")
            for st in list(self.ops.stores.open.values()):
                try:
                    if durable and st.changed:
                        await self.ops.stores.durable(st)
                    else:
                        st.commit()
                    self._no_room.discard(st.path.name)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        log.exception("periodic commit of %s failed", st.path.name[:12])
                    elif st.path.name not in self._no_room:       # once until it succeeds again
                        self._no_room.add(st.path.name)
                        log.warning("store %s…: no room to commit (its folder is full); the changes are "
                                    "kept and committed when there is room", st.path.name[:12])
                except Exception:
                    log.exception("periodic commit of %s failed", st.path.name[:12])
            if durable:
                last_sync = time.monotonic()
                self.ops.stores.close_idle(IDLE_CLOSE)
                # put back the commit reserve of folders in use (a retired or
                # emptied folder is left with nothing of ours in it)
                folders = {str(st.path.parent) for st in self.ops.stores.open.values()}
                await trio.to_thread.run_sync(lambda fs=folders: [ensure_reserve(f) for f in fs if os.path.isdir(f)])

    async def _retention_timer(self) -> None:
        while True:
            deadline = retention.next_deadline(self.smp)
            wait = 3600.0 if deadline is None else max(0.0, deadline - time.time())
            with trio.move_on_after(min(wait, 3600.0)):
                await self.wake_retention.wait()
            self.wake_retention = trio.Event()
            deadline = retention.next_deadline(self.smp)
            if deadline is not None and deadline <= time.time():
                try:
                    await self._in_worker(retention.sweep, limiter=self.retention_limiter)
                except Exception:
                    log.exception("retention sweep failed")
                finally:
                    self.freeze_later(self.refresh())

    async def _in_worker(self, fn, *args, limiter, audit_context=None):
        """Run a lifecycle function in a worker thread (of ``limiter``'s pool) on
        its own connection, so deletions that remove many files never stall the
        filesystem. Its before_delete hook hops back to this thread."""
        def work():
            smp = Smp.open(self.state_dir, lambda row: trio.from_thread.run_sync(self._before_delete, row))
            smp.audit_context = dict(audit_context or {})
            try:
                return fn(smp, *args)
            finally:
                smp.close()
        return await trio.to_thread.run_sync(work, limiter=limiter)

    @contextlib.asynccontextmanager
    async def _uid_slot(self, uid: int):
        """At most COMMANDS_PER_UID commands of one (non-root) uid run at once."""
        entry = self._uid_slots.setdefault(uid, [trio.Semaphore(COMMANDS_PER_UID), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._uid_slots[uid]

    def _before_delete(self, row: rows.StoreRow) -> None:
        """Called by retention just before a store's key and files go: stop
        serving it, drop its open files' cached pages, forget its keys."""
        rec = self.catalog.stores.get(row.id)
        if rec is None or rec.status in GONE:
            return
        gone = StoreRec(**{**rec.__dict__, "status": "deleting"})
        self.catalog.stores[rec.rowid] = gone
        if self.ops is not None:
            self._status_changed(rec, gone)          # gone: nothing to freeze

    # -- control commands ---------------------------------------------------------------

    async def _command(self, uid: int, cmd: str, args: dict) -> dict:
        if cmd == "ping":
            reply = {"pid": os.getpid(), "mountpoint": str(self.mountpoint)}
            if uid == 0:                     # what the kernel asked, by kind (what caching saves)
                reply["requests"] = dict(OP_COUNTS)
                reply["pages_pushed_bytes"] = self.ops.pagecache.pushed
            return reply
        if cmd == "log_level":
            if uid != 0:
                err = PermissionDenied("changing the log level is for the SMP admin (root)")
                c = rows.computer_by_uid(self.smp, uid)
                audit.record_failure(self.smp, uid, "log_level", err, computer=c.name if c else None)
                raise err
            level = str(args.get("level", "")).upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                from ..errors import UsageError
                raise UsageError(f"unknown log level {args.get('level')!r}", "use debug, info, warning or error")
            old = logging.getLevelName(logging.getLogger("smpfs").getEffectiveLevel())
            logging.getLogger("smpfs").setLevel(level)
            log.warning("log level set to %s", level)
            audit.record(self.smp, uid, "log_level", old=old.lower(), new=level.lower())
            return {"level": level.lower()}
        if cmd == "services_stop":
            if uid != 0:
                raise PermissionDenied("stopping the network services is for the SMP admin (root)")
            await self._stop_services()
            return {"stopped": [type(s).__name__ for s in self.services]}
        if cmd == "services_start":
            if uid != 0:
                raise PermissionDenied("starting the network services is for the SMP admin (root)")
            return {"started": await service_ops.start_stopped(self.services, self.nursery, self)}
        result = await self.call(uid, cmd, args)
        if cmd == "status":                  # this daemon serves: whatever its lock file says
            result.update(mountpoint=str(self.mountpoint), dead_mount=None)
            service_ops.add_health(self.services, result)
        return result

    async def call(self, uid: int, cmd: str, args: dict, audit_context: dict | None = None) -> dict:
        """Run a lifecycle command for ``uid`` (api.dispatch) and act on what it changed;
        ``audit_context`` is added to its audit entries (e.g. a client's address)."""
        if uid == 0:
            result = await self._in_worker(api.dispatch, uid, cmd, args, limiter=self.admin_limiter,
                                           audit_context=audit_context)
        else:
            async with self._uid_slot(uid):
                result = await self._in_worker(api.dispatch, uid, cmd, args, limiter=self.control_limiter,
                                               audit_context=audit_context)
        for rowid in self.refresh(result.get("changed_stores")):
            await self.freeze(rowid)                 # a release is acknowledged once durable
        await self.kcache.settled()                  # ... and once nothing cached serves its old reader
        if cmd == "key_rotate":
            self.smp.forget_master_key()             # rotated on a worker's connection: reread it
        self.wake_retention.set()
        for service in self.services:
            try:
                follow = service.changed(cmd, result)
                if follow is not None:
                    await follow         # the change is served before the command answers
            except Exception:
                log.exception("%s could not follow %s", type(service).__name__, cmd)
        return result
