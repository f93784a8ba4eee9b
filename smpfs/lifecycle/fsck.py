"""The consistency check of a whole SMP: every live storage folder and store
that smp.db names, each store checked by :mod:`smpfs.store.fsck`.

Run when a mount finds the dirty flag of a mount that did not end cleanly
(the daemon), and by ``smpfs fsck``. The store layer below knows one store;
which stores there are, where they live and their keys are lifecycle's
(lifecycle/rows.py).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..crypto.keys import StoreKeys
from ..store.fsck import check_store, summarize
from ..store.layout import destroy_store
from ..store.scrub import scrub_store
from ..store.statestore import StateStore
from . import rows

if TYPE_CHECKING:
    from .smp import Smp


def check_smp(smp: Smp, repair: bool = True, progress: Callable[[int, int, str], Any] | None = None,
              scrub: bool = False, scrub_progress: Callable[[str, int, int], Any] | None = None) -> dict:
    """Check every live store of an SMP; finish interrupted deletions on disk.
    ``scrub``: authenticate every block and name too; each damaged file is a
    finding and counts as unrepairable. ``progress(i, n, store_id)`` per
    store, ``scrub_progress(store_id, done_bytes, total_bytes)`` within one."""
    findings: list[str] = []
    problems = 0
    for f in rows.live_folders(smp):
        folder = Path(f.path)
        if not folder.is_dir():
            findings.append(f"storage folder {folder} is missing")
            problems += 1
            continue
        for name in os.listdir(folder):
            if name.startswith(".deleting-") and repair:
                destroy_store(folder, name[len(".deleting-"):])
                findings.append(f"finished removing {name}")
    stores = rows.live_stores(smp)
    for i, row in enumerate(stores):
        sid = row.store_id
        if progress:
            progress(i, len(stores), sid)
        path = Path(smp.folder(row.folder_id)["path"]) / sid
        try:
            keys = StoreKeys.from_data_key(sid, smp.data_key(row))
            st = StateStore(path, keys, read_only=not repair)
        except Exception as e:
            findings.append(f"store {sid[:12]}…: cannot open: {e}")
            problems += 1
            continue
        damaged: list[str] = []
        try:
            found = check_store(st, repair=repair)
            if scrub:
                damaged = scrub_store(st, None if scrub_progress is None
                                      else lambda d, t, sid=sid: scrub_progress(sid, d, t))
        finally:
            st.close()
        findings += summarize(sid, found)
        findings += [f"store {sid[:12]}…: damaged: {line}" for line in damaged]
        problems += len(found["missing_blocks"]) + len(damaged)
    return {"stores": len(stores), "findings": findings, "unrepairable": problems}
