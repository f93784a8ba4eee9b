"""Who may touch a store, decided from its lifecycle state alone.

=============================  ==========  ===============  ===========================
status                         source uid  destination uid  anyone else (root included)
=============================  ==========  ===============  ===========================
capturing                      rw          None             None
captured / restoring/ restored None (ro if source = dest)  ro  None
deleting / deleted             gone        gone             gone
=============================  ==========  ===============  ===========================

This decides who reaches a store at all; inside it, the uid let in meets the
POSIX permission rules of the mount (smpfs/mount/perms.py), which never let
anyone else in.
"""
from __future__ import annotations

from .status import GONE, Status

RW, RO = "rw", "ro"


def level(store_row, uid: int) -> str | None:
    """``'rw'``, ``'ro'`` or ``None`` for ``uid`` on the store described by ``store_row``.

    ``store_row`` needs ``status``, ``source_uid`` and ``dest_uid``.
    """
    if uid == 0:
        return None                      # root administers the SMP, never reads user state
    status = store_row["status"]
    if status == Status.CAPTURING:
        return RW if uid == store_row["source_uid"] else None
    if status in (Status.CAPTURED, Status.RESTORING, Status.RESTORED):
        # source == dest (in-place) makes the source the destination: read-only
        return RO if uid == store_row["dest_uid"] else None
    return None


def visible(store_row) -> bool:
    """Whether the store appears in the mount at all (deleted ones are gone)."""
    return store_row["status"] not in GONE
