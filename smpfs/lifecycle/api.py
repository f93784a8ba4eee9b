"""The lifecycle commands as one dispatch table.

The same code runs in the mounted daemon (for requests on its control socket,
the caller uid coming from SO_PEERCRED) or, when nothing is mounted, in the
CLI process for root. Every command takes ``(smp, caller_uid, **args)`` and
returns a JSON-able dict; a dict that changed stores names them in
``"changed_stores"`` so the daemon reloads them.

Admin commands (``ADMIN``) refuse non-root callers with PermissionDenied,
audited as a denial.
"""
from __future__ import annotations

import inspect
import time

from ..crypto import keys as keymod
from ..errors import NotFound, PermissionDenied, SmpError, UsageError
from ..units import parse_duration
from . import association, audit, computer, folder, netconfig, release, report, request, retention, role


def _need_root(smp, caller: int, command: str) -> None:
    if caller != 0:
        err = PermissionDenied(f"`{command.replace('_', ' ')}` is for the SMP admin (root)",
                               "ask an admin, or use sudo")
        row = smp.query_one("SELECT name FROM computers WHERE uid=?", (caller,))
        audit.record_failure(smp, caller, command, err, computer=row["name"] if row else None)
        raise err


# -- lifecycle (any mapped uid for its own computer; root for any) -------------

def _request_capture(smp, caller, computer=None):
    return request.request_capture(smp, caller, computer=computer)


def _release_capture(smp, caller, computer=None):
    return release.release_capture(smp, caller, computer=computer)


def _request_restore(smp, caller, computer=None):
    return request.request_restore(smp, caller, computer=computer)


def _release_restore(smp, caller, computer=None):
    return release.release_restore(smp, caller, computer=computer)


# -- admin ---------------------------------------------------------------------

def _computer_add(smp, caller, name, uid, secret_value=None):
    return computer.add_computer(smp, name, uid, secret_value=secret_value)


def _computer_list(smp, caller):
    return {"computers": computer.list_computers(smp)}


def _computer_remove(smp, caller, name):
    return computer.remove_computer(smp, name)


def _computer_secret(smp, caller, name, rotate=False):
    return computer.secret(smp, caller, name, rotate=bool(rotate))


def _computer_auth(smp, caller, name, secret_value):
    """Used by the network services (as root) to check a computer's secret."""
    return computer.authenticate(smp, name, secret_value)


def _associate(smp, caller, source, dest):
    return association.associate(smp, source, dest, uid=caller)


def _association_list(smp, caller, all=False):
    return {"associations": association.list_associations(smp, include_removed=bool(all))}


def _association_remove(smp, caller, source, dest, force=False):
    return association.remove(smp, source, dest, force=bool(force), uid=caller)


def _folder_add(smp, caller, path, max_clients=100, min_free="500MB"):
    f = folder.add_folder(smp, path, max_clients=max_clients, min_free=min_free)
    audit.record(smp, caller, "folder_add", path=f["path"], share=f["share"],
                 max_clients=f["max_clients"], min_free=f["min_free"])
    return f


def _folder_set(smp, caller, path, max_clients=None, min_free=None):
    return folder.set_folder(smp, path, max_clients=max_clients, min_free=min_free, uid=caller)


def _computer_import(smp, caller, text):
    try:
        return computer.import_rows(smp, str(text), uid=caller)
    except SmpError as e:
        audit.record_failure(smp, caller, "computer_import", e)
        raise


def _folder_list(smp, caller):
    return {"folders": folder.list_folders(smp)}


def _folder_remove(smp, caller, path, force=False):
    return folder.remove_folder(smp, path, force=bool(force), uid=caller)


def _config(smp, caller, restore_only=None, server=None, delete_after=None,
            delete_immediately=False, reapply_retention=False,
            smb_port=None, http=None, tls_cert=None, tls_key=None):
    """Show settings; set any given. ``delete_after`` is a duration ('7d') or seconds."""
    if delete_after is not None and delete_immediately:
        raise UsageError("give --delete-after or --delete-immediately, not both")
    result = {"changed_stores": []}
    if restore_only is not None:
        on = _on_off(restore_only)
        if not on:
            role.check_not_retired(smp, "--restore-only off")
        old = smp.restore_only
        smp.set_setting("restore_only", "1" if on else "0")
        audit.record(smp, caller, "config", setting="restore_only", old=old, new=on)
    if server is not None:
        from .smp import check_server_name
        check_server_name(server)
        old = smp.setting("server")
        smp.set_setting("server", server.strip())
        audit.record(smp, caller, "config", setting="server", old=old, new=server.strip())
    if delete_immediately:
        retention.set_policy(smp, 0, uid=caller)
    elif delete_after is not None:
        secs = delete_after if isinstance(delete_after, int) else parse_duration(delete_after)
        retention.set_policy(smp, secs, uid=caller)
    if reapply_retention:
        moved = retention.reapply_retention(smp, uid=caller)
        result["reapplied"] = moved
    if any(v is not None for v in (smb_port, http, tls_cert, tls_key)):
        for name, (old, new) in netconfig.configure(smp, smb_port, http, tls_cert, tls_key).items():
            audit.record(smp, caller, "config", setting=name, old=old, new=new)
    result.update(smp.settings())
    result.update(netconfig.describe(smp))
    return result


def _on_off(value) -> bool:
    v = str(value).strip().lower()
    if v in ("on", "1", "true", "yes"):
        return True
    if v in ("off", "0", "false", "no"):
        return False
    raise UsageError("--restore-only takes on or off")


def _key_show(smp, caller, source):
    """The recovery key of SOURCE's newest live store (root only; audited)."""
    a = association.live_for_source(smp, computer.get(smp, source)["name"])
    stores = association.stores_of(smp, a["id"]) if a else []
    if not stores:
        err = NotFound(f"{source} has no state store with a key",
                       "keys exist from `request capture` until the store is deleted")
        audit.record_failure(smp, caller, "key_show", err, computer=source)
        raise err
    s = smp.store(stores[-1]["store_id"])
    data_key = smp.data_key(s)
    audit.record(smp, caller, "key_show", computer=s["source"], store_id=s["store_id"])
    return {"computer": s["source"], "dest": s["dest"], "store_id": s["store_id"],
            "status": s["status"], "unc": smp.unc(s), "store_path": str(smp.store_path(s)),
            "recovery_key": keymod.format_recovery_key(data_key)}


def _key_rotate(smp, caller):
    """A new master key; every live store key and computer secret rewrapped; the old key destroyed."""
    from . import masterkey
    return masterkey.rotate(smp, caller)


def _status(smp, caller, all=False):
    return {**report.status(smp, include_removed=bool(all)),
            "dead_mount": str(smp.dead_mount()) if smp.dead_mount() else None,
            **netconfig.describe(smp)}


def _report(smp, caller):
    return {"associations": report.report(smp)}


def _log(smp, caller, since_id=0, limit=None):
    return {"entries": audit.entries(smp, since_id=int(since_id or 0), limit=limit)}


def _retention_run(smp, caller, at=None):
    now = retention.parse_at(at)
    deleted = retention.sweep(smp, now=now, uid=caller)
    audit.record(smp, caller, "retention_run", at=now, stores_deleted=len(deleted))
    return {"at": now, "deleted": deleted, "next_deadline": retention.next_deadline(smp),
            "changed_stores": [d["store_id"] for d in deleted]}


def _retire(smp, caller):
    deleted = retention.retire(smp, uid=caller)
    return {"deleted": deleted, "retired_at": role.retired_at(smp),
            "changed_stores": [d["store_id"] for d in deleted]}


def _unretire(smp, caller):
    return role.unretire(smp, uid=caller)


COMMANDS = {
    "request_capture": _request_capture,
    "release_capture": _release_capture,
    "request_restore": _request_restore,
    "release_restore": _release_restore,
    "computer_add": _computer_add,
    "computer_list": _computer_list,
    "computer_remove": _computer_remove,
    "computer_secret": _computer_secret,
    "computer_auth": _computer_auth,
    "associate": _associate,
    "association_list": _association_list,
    "association_remove": _association_remove,
    "folder_add": _folder_add,
    "folder_list": _folder_list,
    "folder_set": _folder_set,
    "computer_import": _computer_import,
    "report": _report,
    "unretire": _unretire,
    "folder_remove": _folder_remove,
    "config": _config,
    "key_show": _key_show,
    "key_rotate": _key_rotate,
    "status": _status,
    "log": _log,
    "retention_run": _retention_run,
    "retire": _retire,
}

#: Commands only root may run.
ADMIN = frozenset(COMMANDS) - {"request_capture", "release_capture", "request_restore", "release_restore"}


def dispatch(smp, caller_uid: int, command: str, args: dict | None = None) -> dict:
    """Run ``command`` for ``caller_uid`` with keyword ``args``; returns a JSON-able dict.

    Raises the command's SmpError on refusal (its ``exit_code`` is the CLI's).
    """
    fn = COMMANDS.get(command)
    if fn is None:
        raise UsageError(f"unknown command {command!r}")
    if command in ADMIN:
        _need_root(smp, caller_uid, command)
    args = {k: v for k, v in (args or {}).items() if v is not None}
    try:
        inspect.signature(fn).bind(smp, caller_uid, **args)
    except TypeError as e:
        raise UsageError(f"bad arguments for {command}: {e}")
    result = fn(smp, caller_uid, **args)
    result = dict(result) if isinstance(result, dict) else {"result": result}
    result.setdefault("changed_stores", [])
    result["ok"] = True
    result["ts"] = time.time()
    return result
