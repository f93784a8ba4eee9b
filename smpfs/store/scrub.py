"""The integrity scrub: authenticate every block and every name of a store.

``fsck`` checks the *structure* a crash can damage (which rows point where);
a flipped bit inside a block file or a sealed name passes it and only shows
when someone reads that file (EIO). ``smpfs fsck --scrub`` reads and
authenticates everything instead: every directory entry's name, every
symlink target, every extended attribute, every block of every file (inline
ones in store.db too), and names each damaged file by its path in the store.
"""
from __future__ import annotations

import stat

from ..crypto.chunk import BLOCK_SIZE
from ..errors import SmpError
from .layout import ROOT


class _Names:
    """Paths in a store for messages: inode -> its first (parent, name)."""

    def __init__(self, st, damaged: list):
        self.first: dict[int, tuple[int, str]] = {}
        for parent, blob, ino in st.db.execute("SELECT parent, name, ino FROM dentries ORDER BY id"):
            try:
                name = st.keys.open_name(parent, blob).decode(errors="backslashreplace")
            except SmpError:
                name = None
            if name is None:
                damaged.append(("name", parent, ino))
                name = f"<name of inode {ino} fails authentication>"
            self.first.setdefault(ino, (parent, name))

    def path(self, ino: int) -> str:
        parts, seen = [], set()
        while ino != ROOT:
            if ino in seen or ino not in self.first:
                parts.append(f"<inode {ino}>")
                break
            seen.add(ino)
            ino, name = self.first[ino]
            parts.append(name)
        return "/" + "/".join(reversed(parts))


def scrub_store(st, progress=None) -> list[str]:
    """Authenticate everything in an open store; return one line per damaged
    file or name. ``progress(done_bytes, total_bytes)`` is called as it goes."""
    bad_names: list = []
    names = _Names(st, bad_names)
    out = [f"{names.path(parent)}: the name of an entry (inode {ino}) fails authentication"
           for _, parent, ino in bad_names]
    total = st.db.execute("SELECT coalesce(sum(min(length, ?)), 0) FROM blocks", (BLOCK_SIZE,)).fetchone()[0]
    done = 0
    for ino, mode, size in st.db.execute("SELECT ino, mode, size FROM inodes ORDER BY ino").fetchall():
        problems = []
        if stat.S_ISLNK(mode):
            try:
                st.readlink(ino)
            except (OSError, SmpError) as e:
                problems.append(f"symlink target: {e}")
        try:
            for xname in st.listxattr(ino):
                st.getxattr(ino, xname)
        except (OSError, SmpError) as e:
            problems.append(f"extended attributes: {e}")
        rows = st.db.execute("SELECT blkno, length FROM blocks WHERE ino=? ORDER BY blkno", (ino,)).fetchall()
        for blkno, length in rows:
            off = blkno * BLOCK_SIZE
            if off < size:
                try:
                    st.read(ino, off, min(BLOCK_SIZE, size - off))
                except (OSError, SmpError) as e:
                    problems.append(f"block {blkno}: {getattr(e, 'strerror', None) or e}")
            done += min(length, BLOCK_SIZE)
            if progress:
                progress(done, total)
        if problems:
            out.append(f"{names.path(ino)}: " + "; ".join(problems))
    return out
