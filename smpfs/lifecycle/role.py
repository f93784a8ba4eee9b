"""The end of the SMP role: retiring it, un-retiring it, and removing it.

* **retire** (:func:`smpfs.lifecycle.retention.retire`): every store is
  crypto-shredded, new captures are refused, the SMP stays (its log, its
  computers). ``retired_at`` is set; ``config --restore-only off`` is refused
  while it is, so a retirement is never undone by accident.
* **unretire**: explicit, audited; new captures are taken again.
* **remove**: retire, then remove every storage folder's smpfs files (and the
  folder, if nothing else is in it) and the state directory itself. What is
  left is what smpfs did not make. The daemon must be stopped first.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import Conflict, MountError
from ..store.reserve import release_reserve
from . import audit, retention


def retired_at(smp) -> float | None:
    row = smp.query_one("SELECT value FROM meta WHERE key='retired_at'")
    return float(row["value"]) if row and row["value"] else None


def check_not_retired(smp, what: str) -> None:
    if retired_at(smp) is not None:
        raise Conflict(f"the SMP is retired: {what} would take new captures again",
                       "un-retire it explicitly first: smpfs unretire")


def unretire(smp, uid: int = 0) -> dict:
    was = retired_at(smp)
    if was is None:
        raise Conflict("the SMP is not retired", "nothing to undo; `smpfs status` shows its state")
    with smp.tx():
        smp.conn.execute("DELETE FROM meta WHERE key='retired_at'")
        smp.conn.execute("INSERT OR REPLACE INTO meta VALUES ('restore_only', '0')")
    audit.record(smp, uid, "unretire", retired_at=was)
    return {"retired": False, "retired_at": None, "restore_only": False}


def _mounts_under(path: Path) -> list[str]:
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1].replace("\\040", " ") for line in f]
    except OSError:
        return []
    base = str(path).rstrip("/") + "/"
    return [p for p in points if p == str(path) or p.startswith(base)]


def remove(smp, uid: int = 0) -> dict:
    """Remove the role and everything smpfs made (``smp`` is closed on return)."""
    state = Path(smp.state_dir)
    if smp.mountpoint() is not None and os.path.exists(state / "control.sock"):
        raise MountError("the SMP is still mounted", "unmount it first: smpfs umount MOUNTPOINT")
    busy = _mounts_under(state)
    if busy:
        raise MountError(f"something is mounted inside the state directory: {', '.join(busy)}",
                         "unmount it first")
    deleted = retention.retire(smp, uid=uid)
    stores = smp.query("SELECT s.store_id, f.path FROM stores s JOIN folders f ON f.id = s.folder_id")
    folders = []
    from ..store import layout
    for f in smp.query("SELECT path FROM folders ORDER BY id"):
        path = Path(f["path"])
        removed = []
        for s in stores:
            if s["path"] == f["path"] and (path / s["store_id"]).exists():
                layout.destroy_store(path, s["store_id"])       # idempotent; retire did the live ones
                removed.append(s["store_id"])
        if path.is_dir() and release_reserve(path):
            removed.append(".smpfs-reserve")
        left = sorted(os.listdir(path)) if path.is_dir() else []
        gone = False
        if path.is_dir() and not left:
            path.rmdir()
            gone = True
        folders.append({"path": str(path), "removed": removed, "folder_removed": gone, "left": left})
    smp.close()
    files = sorted(str(p.relative_to(state)) for p in state.rglob("*")) if state.is_dir() else []
    shutil.rmtree(state)
    return {"stores_deleted": deleted, "folders": folders, "state_dir": str(state), "state_files": files}
