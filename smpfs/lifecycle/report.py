"""What an SMP holds, for ``smpfs status`` and the fleet ``smpfs report``.

Sizes are what the encrypted stores take on disk now (live stores) or took
when they were deleted (``bytes_freed``). Only ids, names, states, times and
sizes leave here: never keys, nor anything from inside a store.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..store.layout import tree_bytes
from . import association, computer, folder, retention

#: The store columns shown (the others, wrapped keys and counters, stay inside).
STORE_FIELDS = ("store_id", "status", "created_at", "capture_released_at", "restore_requested_at",
                "restore_released_at", "retention_s", "delete_at", "deleted_at", "bytes_freed")

#: One row per association in ``smpfs report`` (and its CSV header).
REPORT_FIELDS = ("source", "dest", "migration_type", "status", "association_created_at", "removed_at",
                 "stores", "store_id", "unc", "share", "created_at", "capture_released_at",
                 "restore_requested_at", "restore_released_at", "delete_at", "deleted_at",
                 "size_bytes", "bytes_freed")


def store_size(smp, row: dict) -> int | None:
    """Bytes the store takes on disk now (None once deleted or unreachable)."""
    if row["status"] in ("deleting", "deleted"):
        return None
    path = smp.store_path(row)
    return tree_bytes(path) if os.path.isdir(path) else None


def describe_store(smp, row: dict) -> dict:
    d = {k: row[k] for k in STORE_FIELDS}
    f = smp.folder(row["folder_id"])
    d.update(folder=f["path"], share=smp.share_name(f), unc=smp.unc(row), size_bytes=store_size(smp, row))
    return d


def describe_association(smp, a: dict) -> dict:
    """An association (newest store's state and times at the top, as before) with
    every one of its stores, deleted ones included."""
    d = association.describe(smp, a)
    d["all_stores"] = [describe_store(smp, s) for s in association.stores_of(smp, a["id"], include_deleted=True)]
    d["size_bytes"] = sum(s["size_bytes"] or 0 for s in d["all_stores"])
    d["bytes_freed"] = sum(s["bytes_freed"] or 0 for s in d["all_stores"] if s["status"] == "deleted") \
        if d["all_stores"] else None
    return d


def status(smp, include_removed: bool = False) -> dict:
    assocs = [describe_association(smp, a) for a in smp.query(
        "SELECT * FROM associations" + ("" if include_removed else " WHERE removed_at IS NULL") + " ORDER BY id")]
    folders = folder.list_folders(smp)
    by_folder: dict[str, int] = {}
    for a in assocs:
        for s in a["all_stores"]:
            by_folder[s["folder"]] = by_folder.get(s["folder"], 0) + (s["size_bytes"] or 0)
    for f in folders:
        f["stores_bytes"] = by_folder.get(f["path"], 0)
    retired = smp.setting("retired_at") if smp.query_one("SELECT 1 AS x FROM meta WHERE key='retired_at'") else None
    mnt = smp.mountpoint()
    return {"state_dir": str(smp.state_dir), "settings": smp.settings(),
            "retired": retired is not None, "retired_at": float(retired) if retired else None,
            "mountpoint": str(mnt) if mnt else None,
            "next_deadline": retention.next_deadline(smp),
            "folders": folders,
            "computers": computer.list_computers(smp),
            "associations": assocs,
            "stores_bytes_total": sum(by_folder.values()),
            "deleted_bytes_total": smp.query_one("SELECT COALESCE(SUM(bytes_freed),0) AS n FROM stores "
                                                 "WHERE status='deleted'")["n"]}


def report(smp) -> list[dict]:
    """One row per association (removed ones too), newest store's times, sizes."""
    rows = []
    for a in smp.query("SELECT * FROM associations ORDER BY id"):
        d = describe_association(smp, a)
        last = d["all_stores"][-1] if d["all_stores"] else {}
        rows.append({"source": d["source"], "dest": d["dest"], "migration_type": d["migration_type"],
                     "status": d["status"] if a["removed_at"] is None or d["status"] == "deleted"
                     else "removed", "association_created_at": a["created_at"],
                     "removed_at": a["removed_at"], "stores": len(d["all_stores"]),
                     "store_id": last.get("store_id"), "unc": last.get("unc"), "share": last.get("share"),
                     **{k: last.get(k) for k in ("created_at", "capture_released_at", "restore_requested_at",
                                                 "restore_released_at", "delete_at", "deleted_at")},
                     "size_bytes": d["size_bytes"], "bytes_freed": d["bytes_freed"]})
    return rows


def folder_paths(smp) -> list[Path]:
    return [Path(f["path"]) for f in smp.query("SELECT path FROM folders ORDER BY id")]
