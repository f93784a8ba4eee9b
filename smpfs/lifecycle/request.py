"""Request State Store: capture (from this computer) and restore (to this computer).

Who may call: root for any computer (naming it), any other uid only for the
computer mapped to that uid (see :func:`computer.resolve_caller`).

Decisions where ConfigMgr is undocumented:

* A second capture request while the computer's capture is unreleased returns
  the **same** store (``"existing": true``), like a retried task sequence step.
* A capture request while the computer's previous capture still waits for its
  restore is refused (CaptureInProgress). A restored store does not block a
  new capture; it is kept until its own deadline.
* Maximum clients counts associations with a store that still awaits a step
  (:data:`status.HOLDS_SLOT`): a computer holds one slot however often it
  captures, a restored store none. The count is checked again in the
  transaction that creates the store, so two computers racing for the last
  slot cannot both take it.
* A restore requested before the capture's release is refused
  (CaptureInProgress). A restore may be requested again on a restored store
  not yet deleted (a re-run restore); its deadline still applies.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..crypto import keys as keymod
from ..errors import CaptureInProgress, Conflict, MountError, NoStorageRoom, NotFound, NotMountedError, RestoreOnlyMode
from . import association, audit, computer
from .folder import choose_folder
from .folder import clients as folder_clients
from .status import LIVE_SQL, Status, transition


def step_result(smp, store: dict, comp: str, existing: bool = False, changed: bool = True) -> dict:
    """What a Request/Release step returns to its caller (and the daemon reads)."""
    mnt = smp.mountpoint()
    return {"computer": comp, "store_id": store["store_id"], "status": store["status"],
            "path": str(smp.mount_path(store, mnt)) if mnt else None,
            "unc": smp.unc(store), "existing": existing,
            "delete_at": store.get("delete_at"),
            "changed_stores": [store["store_id"]] if changed else []}


@audit.audited("request_capture")
def request_capture(smp, caller_uid: int, computer: str | None = None) -> dict:
    """Create (or return the unreleased) state store for COMPUTER's capture.

    Refused: UnknownComputer, PermissionDenied, RestoreOnlyMode, CaptureInProgress
    (previous capture not yet restored), NoStorageRoom. One attempt: retrying
    (ConfigMgr's retry count and delay) is the caller's, see
    ``smpfs.cli.base.run_retrying``; the daemon never waits for a caller.
    """
    from ..store import layout
    comp = computer_mod.resolve_caller(smp, caller_uid, computer, "request capture")
    name = comp["name"]
    assoc = association.live_for_source(smp, name)
    if assoc is not None:
        for s in reversed(association.stores_of(smp, assoc["id"])):
            if s["status"] == Status.CAPTURING:
                audit.record_repeat(smp, caller_uid, "request_capture", computer=name,
                                    store_id=s["store_id"], existing=True)
                return step_result(smp, s, name, existing=True, changed=False)
            if s["status"] in (Status.CAPTURED, Status.RESTORING):
                raise CaptureInProgress(
                    f"{name}'s previous capture is {s['status']} and not yet restored by {assoc['dest']}",
                    f"restore it first (`smpfs request restore {assoc['dest']}`), "
                    "or an admin removes the association with --force")
    if smp.restore_only:
        raise RestoreOnlyMode("the SMP is in restore-only mode: it takes no new captures",
                              "restores continue; an admin turns it off with `smpfs config --restore-only off`")
    folder, folders = choose_folder(smp)
    if folder is None:
        raise _no_room("; ".join(f"{f['path']}: {', '.join(f['full_reasons'])}" for f in folders)
                       or "no storage folders")
    if assoc is None:
        try:
            assoc = association.associate(smp, name, name, uid=caller_uid)
        except Conflict:              # created meanwhile by a concurrent request
            assoc = association.live_for_source(smp, name)
    dest = computer_mod.get(smp, assoc["dest"])

    store_id = os.urandom(32).hex()
    data_key = keymod.new_data_key()
    wrapped = keymod.wrap(smp.master_key(), store_id, data_key)
    now = time.time()
    with smp.tx():   # the row commits only if the store's files were created
        # a concurrent request for the same computer may have won the race
        dup = smp.query_one("SELECT * FROM stores WHERE association_id=? AND status=?",
                            (assoc["id"], Status.CAPTURING.value))
        if dup is not None:
            return step_result(smp, dup, name, existing=True, changed=False)
        # another computer may have taken the folder's last client slot meanwhile
        limit, taken = smp.folder(folder["id"])["max_clients"], folder_clients(smp, folder["id"])
        if taken >= limit:
            raise _no_room(f"{folder['path']}: {taken}/{limit} clients")
        smp.conn.execute(
            "INSERT INTO stores (store_id, association_id, folder_id, status, source_uid, dest_uid, "
            "wrapped_key, created_at) VALUES (?,?,?,?,?,?,?,?)",
            (store_id, assoc["id"], folder["id"], Status.CAPTURING.value, comp["uid"], dest["uid"], wrapped, now))
        try:
            layout.create_store(Path(folder["path"]), store_id,
                                    keymod.StoreKeys.from_data_key(store_id, data_key), comp["uid"])
        except BaseException:
            try:   # leave no half-created store behind
                layout.destroy_store(Path(folder["path"]), store_id)
            except Exception:
                pass
            raise
    del data_key
    store = smp.store(store_id)
    audit.record(smp, caller_uid, "request_capture", computer=name, store_id=store_id,
                 folder=folder["path"], dest=assoc["dest"], migration_type=assoc["migration_type"])
    return step_result(smp, store, name)


def _no_room(why: str) -> NoStorageRoom:
    return NoStorageRoom(f"no storage folder has room ({why})",
                         "free space, raise a folder's limits (`smpfs folder set PATH --max-clients N "
                         "--min-free SIZE`), or add one with `smpfs folder add`")


def restorable(smp, dest: str) -> dict | None:
    """The newest live store whose destination is ``dest`` (any status but deleted)."""
    return smp.query_one(
        "SELECT s.*, a.source, a.dest FROM stores s JOIN associations a ON a.id=s.association_id "
        f"WHERE a.dest=? AND s.{LIVE_SQL} ORDER BY s.id DESC LIMIT 1", (dest,))


@audit.audited("request_restore")
def request_restore(smp, caller_uid: int, computer: str | None = None) -> dict:
    """Find the store whose destination is COMPUTER and mark it restoring."""
    comp = computer_mod.resolve_caller(smp, caller_uid, computer, "request restore")
    name = comp["name"]
    s = restorable(smp, name)
    if s is None:
        raise NotFound(f"no state store is waiting for {name}",
                       "its source captures and releases the capture first (the SMP admin sees the "
                       "associations: `smpfs association list`)")
    if s["status"] == Status.CAPTURING:
        raise CaptureInProgress(f"the capture of {s['source']} for {name} is not released yet",
                                f"run `smpfs release capture {s['source']}` when the capture has finished")
    again = s["status"] == Status.RESTORING            # a retried request: one row a minute, counted
    detail = {"computer": name, "source": s["source"], "rerun": s["status"] == Status.RESTORED}
    store = transition(smp, s, Status.RESTORING, uid=caller_uid, action=None if again else "request_restore",
                       audit_detail=detail, restore_requested_at=time.time())
    if again:
        audit.record_repeat(smp, caller_uid, "request_restore", store_id=s["store_id"], existing=True, **detail)
    return step_result(smp, store, name, existing=s["status"] != Status.CAPTURED)


#: Refusals a retried Request State Store waits out: for a capture, a full SMP or
#: one not (yet) mounted; for a restore, also a store not captured yet.
RETRY_CAPTURE = (NoStorageRoom, NotMountedError, MountError)
RETRY_RESTORE = (NotFound, CaptureInProgress, NotMountedError, MountError)


def with_retries(call, retries: int, delay: float, retry_on: tuple, sleep=time.sleep, on_retry=None):
    """``call()``, and up to ``retries`` more times ``delay`` seconds apart while it
    raises one of ``retry_on``; the last refusal is raised. The waiting happens
    in the caller (the CLI, a client), never in a daemon worker thread."""
    for attempt in range(int(retries) + 1):
        try:
            return call()
        except retry_on as e:
            if attempt >= int(retries):
                raise
            if on_retry is not None:
                on_retry(attempt + 1, e)
            sleep(float(delay))
    raise AssertionError("unreachable")


# the parameter named ``computer`` shadows the module inside the functions above
computer_mod = computer
