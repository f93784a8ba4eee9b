"""The consistency check: what a crash can leave behind, found and repaired.

Run on every store of an SMP by lifecycle/fsck.py: when a mount finds the
dirty flag of a mount that did not end cleanly, and by hand with ``smpfs
fsck`` (not while mounted). This module knows one store. Per store:

* **orphan blocks**: block files no block-map row points to (written before a
  crash, never committed, or superseded and not yet unlinked): removed;
* **missing blocks**: rows whose file is gone: reported (reads give EIO);
* **orphan inodes**: inodes with no name (open-unlinked at the crash): freed;
* **dangling entries**: names pointing to no inode: removed;
* **link counts**: recomputed from the directory entries;
* **sizes**: blocks past the end of their file: removed.
Interrupted store deletions (``.deleting-*``) are finished.

``repair=False`` (``fsck --no-repair``) opens every store read-only and
changes nothing at all. ``scrub=True`` also authenticates every block and
name (see scrub.py).
"""
from __future__ import annotations

import os
import stat

from ..crypto.chunk import BLOCK_SIZE
from . import diskio
from .layout import ROOT
from .statestore import StateStore


def check_store(st: StateStore, repair: bool = True) -> dict:
    db = st.db
    found: dict[str, list] = {"orphan_blocks": [], "missing_blocks": [], "orphan_inodes": [],
                              "dangling_entries": [], "link_counts": [], "past_eof_blocks": []}
    if repair:
        st.begin_change()
    # names pointing nowhere
    for (did, ino) in db.execute("SELECT d.id, d.ino FROM dentries d LEFT JOIN inodes i ON i.ino=d.ino"
                                 " WHERE i.ino IS NULL").fetchall():
        found["dangling_entries"].append(ino)
        if repair:
            db.execute("DELETE FROM dentries WHERE id=?", (did,))
    # link counts
    for ino, mode, nlink in db.execute("SELECT ino, mode, nlink FROM inodes").fetchall():
        names = db.execute("SELECT count(*) FROM dentries WHERE ino=?", (ino,)).fetchone()[0]
        if stat.S_ISDIR(mode):
            subdirs = db.execute("SELECT count(*) FROM dentries d JOIN inodes i ON i.ino=d.ino"
                                 " WHERE d.parent=? AND (i.mode & 61440)=16384", (ino,)).fetchone()[0]
            want = (2 + subdirs) if (names or ino == ROOT) else 0
        else:
            want = names
        if want != nlink:
            found["link_counts"].append((ino, nlink, want))
            if repair:
                db.execute("UPDATE inodes SET nlink=? WHERE ino=?", (want, ino))
    # inodes nothing names (nothing can hold them open across a restart)
    for (ino,) in db.execute("SELECT ino FROM inodes WHERE nlink=0 AND ino<>?", (ROOT,)).fetchall():
        found["orphan_inodes"].append(ino)
        if repair:
            st.free_if_unlinked(ino)
    # blocks past EOF
    for ino, blkno in db.execute("SELECT b.ino, b.blkno FROM blocks b JOIN inodes i ON i.ino=b.ino"
                                 " WHERE b.blkno * ? >= i.size AND NOT (b.blkno=0 AND i.size=0 AND 0)",
                                 (BLOCK_SIZE,)).fetchall():
        found["past_eof_blocks"].append((ino, blkno))
        if repair:
            st.supersede(r[0] for r in db.execute(
                "SELECT counter FROM blocks WHERE ino=? AND blkno=? AND data IS NULL", (ino, blkno)))
            db.execute("DELETE FROM blocks WHERE ino=? AND blkno=?", (ino, blkno))
    if repair:
        st.commit()
    # block files vs the block map
    referenced = {r[0] for r in db.execute("SELECT counter FROM blocks WHERE data IS NULL")}
    pending = st.pending_unlinks()
    on_disk = set()
    bdir = st.path / "b"
    for sub in os.listdir(bdir):
        for name in os.listdir(bdir / sub):
            try:
                on_disk.add(int(name, 16))
            except ValueError:
                if repair:
                    diskio.io.unlink(bdir / sub / name)      # a stray temp file
    for ctr in sorted(on_disk - referenced - pending):
        found["orphan_blocks"].append(ctr)
        if repair:
            diskio.io.unlink(st.block_path(ctr))
    for ctr in sorted(referenced - on_disk):
        found["missing_blocks"].append(ctr)
    if repair:
        st.sync()
    return found


def summarize(store_id: str, found: dict) -> list[str]:
    out = []
    for kind, items in found.items():
        if items:
            out.append(f"store {store_id[:12]}…: {len(items)} {kind.replace('_', ' ')}")
    return out
