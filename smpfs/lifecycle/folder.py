"""Storage folders: where state stores live, each with a client limit and a free-space floor.

A capture goes to the folder that is under its maximum clients and above its
minimum free space, most free space first (:func:`choose_folder`). Unlike
ConfigMgr, which checks free space only at request time, smpfs also refuses
every write (ENOSPC) that would take the folder under its minimum free space.
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from ..errors import Conflict, NotFound, UsageError
from ..store.layout import tree_bytes
from ..units import format_size, parse_free
from . import placement
from .status import HOLDS_SLOT, LIVE_SQL, Status, sql_in


def _abspath(path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def add_folder(smp, path, max_clients: int = 100, min_free: str = "500MB") -> dict:
    """Add (or re-add) a storage folder; creates the directory (0711) if missing.

    Where a folder may not be (its own mount, the state dir, another folder,
    another SMP's, ``/``, a relative path, a place others can write or swap):
    see placement.py; each is a :class:`UsageError` (exit 2) with a hint."""
    max_clients = check_max_clients(max_clients)
    min_free = str(min_free).strip()
    parse_free(min_free)                 # validate; kept as the admin wrote it
    rows = smp.query("SELECT * FROM folders ORDER BY id")
    raw = placement.check_absolute(path)
    real, row = placement.check_placement(raw, smp.state_dir, rows, smp.mountpoint())
    path = Path(real)
    if not path.parent.is_dir():
        raise UsageError(f"cannot create storage folder {path}: {path.parent} does not exist",
                         f"create {path.parent} first, or choose a folder in an existing directory")
    placement.check_safe(raw, real, smp.state_dir)   # before creating anything: parents, an existing folder
    try:
        path.mkdir(mode=0o711)
        os.chmod(path, 0o711)            # whatever the umask: the SMP daemon traverses it
    except FileExistsError:
        placement.check_safe(raw, real, smp.state_dir)  # someone else's, made since: checked again
    with smp.tx():
        if row and row["removed_at"] is None:
            raise Conflict(f"{path} is already a storage folder",
                           "change it by removing and adding it again")
        if row:   # re-adding a removed folder keeps its share id
            smp.conn.execute("UPDATE folders SET max_clients=?, min_free=?, removed_at=NULL WHERE id=?",
                             (max_clients, min_free, row["id"]))
            fid = row["id"]
        else:
            share = new_share_id()
            while smp.query_one("SELECT 1 AS x FROM folders WHERE share=?", (share,)):
                share = new_share_id()
            fid = smp.conn.execute(
                "INSERT INTO folders (share, path, max_clients, min_free, created_at) VALUES (?,?,?,?,?)",
                (share, str(path), max_clients, min_free, time.time())).lastrowid
    return describe(smp, smp.folder(fid))


def space(path) -> tuple[int, int]:
    """(free bytes available to the SMP, total bytes) of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def clients(smp, folder_id: int) -> int:
    """ConfigMgr's 'clients' of the folder: the associations with a store in it
    that still awaits a step (:data:`status.HOLDS_SLOT`). A restored store kept
    for its retention deadline is not counted."""
    return smp.conn.execute(
        f"SELECT COUNT(DISTINCT association_id) FROM stores WHERE folder_id=? AND status IN {sql_in(HOLDS_SLOT)}",
        (folder_id,)).fetchone()[0]


def kept(smp, folder_id: int) -> int:
    """Restored stores in the folder waiting for their deadline (no client slot)."""
    return smp.conn.execute("SELECT COUNT(*) FROM stores WHERE folder_id=? AND status=?",
                            (folder_id, Status.RESTORED.value)).fetchone()[0]


def describe(smp, row: dict, used: bool = False) -> dict:
    """A folder row plus share name, clients, free space and whether it has room."""
    d = dict(row)
    d["share_name"] = smp.share_name(row)
    d["clients"] = clients(smp, row["id"])
    d["restored_kept"] = kept(smp, row["id"])
    try:
        free, total = space(row["path"])
        d["free_bytes"], d["total_bytes"] = free, total
        d["min_free_bytes"] = parse_free(row["min_free"]).threshold(total)
        reasons = []
        if d["clients"] >= row["max_clients"]:
            reasons.append(f"{d['clients']}/{row['max_clients']} clients")
        if free <= d["min_free_bytes"]:
            reasons.append(f"{format_size(free)} free, needs more than {row['min_free']}")
    except OSError as e:
        d["free_bytes"] = d["total_bytes"] = None
        reasons = [f"unavailable: {e.strerror}"]
    if row["removed_at"] is not None:
        reasons.insert(0, "removed")
    d["full_reasons"] = reasons
    d["has_room"] = not reasons
    if used:
        d["used_bytes"] = tree_bytes(Path(row["path"])) if os.path.isdir(row["path"]) else 0
    return d


def list_folders(smp, include_removed: bool = False, used: bool = True) -> list[dict]:
    where = "" if include_removed else "WHERE removed_at IS NULL"
    return [describe(smp, r, used=used) for r in smp.query(f"SELECT * FROM folders {where} ORDER BY id")]


def choose_folder(smp) -> tuple[dict | None, list[dict]]:
    """(best folder or None, all live folders described). Most free space wins."""
    folders = list_folders(smp, used=False)
    ok = sorted((f for f in folders if f["has_room"]), key=lambda f: -f["free_bytes"])
    return (ok[0] if ok else None), folders


def find_folder(smp, path) -> dict:
    row = smp.query_one("SELECT * FROM folders WHERE path=? AND removed_at IS NULL",
                        (str(_abspath(path)),))
    if row is None and os.path.isabs(str(path)):      # through a symlink: folders are kept resolved
        real, _ = placement.resolve(str(path), placement.smpfs_mounts())
        row = smp.query_one("SELECT * FROM folders WHERE path=? AND removed_at IS NULL", (real,))
    if row is None:
        raise NotFound(f"{_abspath(path)} is not a storage folder", "see `smpfs folder list`")
    return row


def remove_folder(smp, path, force: bool = False, uid: int = 0) -> dict:
    """Remove a storage folder. While it holds live stores this is refused unless
    ``force``; then those stores are deleted (crypto-shredded) first."""
    from . import audit, retention
    row = find_folder(smp, path)
    live = smp.query(f"SELECT * FROM stores WHERE folder_id=? AND {LIVE_SQL}",
                     (row["id"],))
    if live and not force:
        raise Conflict(f"{row['path']} still holds {len(live)} state store(s)",
                       "wait until they are restored and deleted, or use --force to delete them now")
    deleted = [retention.delete_store(smp, s, reason="folder removed", uid=uid) for s in live]
    # finish any deletion that was interrupted in this folder
    for s in smp.query("SELECT * FROM stores WHERE folder_id=? AND status=?", (row["id"], Status.DELETING.value)):
        deleted.append(retention.delete_store(smp, s, reason="folder removed", uid=uid))
    with smp.tx():
        smp.conn.execute("UPDATE folders SET removed_at=? WHERE id=?", (time.time(), row["id"]))
    from ..store.reserve import release_reserve
    release_reserve(Path(row["path"]))          # nothing of smpfs's is left behind in it
    audit.record(smp, uid, "folder_remove", path=row["path"], share=row["share"],
                 stores_deleted=len(deleted))
    return {"folder": row["path"], "deleted": deleted,
            "changed_stores": [d["store_id"] for d in deleted]}


def set_folder(smp, path, max_clients=None, min_free=None, uid: int = 0) -> dict:
    """Change a storage folder's limits in place, stores and all (audited).

    A lower limit than what the folder holds now is allowed: it only stops new
    captures from going there (ConfigMgr's behaviour)."""
    from . import audit
    row = find_folder(smp, path)
    if max_clients is None and min_free is None:
        raise UsageError("nothing to change", "give --max-clients N and/or --min-free SIZE")
    new_max = check_max_clients(max_clients) if max_clients is not None else row["max_clients"]
    new_min = str(min_free).strip() if min_free is not None else row["min_free"]
    parse_free(new_min)
    with smp.tx():
        smp.conn.execute("UPDATE folders SET max_clients=?, min_free=? WHERE id=?", (new_max, new_min, row["id"]))
    audit.record(smp, uid, "folder_set", path=row["path"], share=row["share"],
                 old_max_clients=row["max_clients"], max_clients=new_max,
                 old_min_free=row["min_free"], min_free=new_min)
    return describe(smp, smp.folder(row["id"]))


def new_share_id() -> str:
    return secrets.token_hex(4).upper()


def check_max_clients(n) -> int:
    try:
        n = int(n)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= 99999:
        raise UsageError(f"invalid maximum clients {n}", "use 1..99999, as ConfigMgr does")
    return n
