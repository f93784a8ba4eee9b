"""Inode numbers in the mount, and the attributes the kernel is given for them.

::

    1                      the mount root: one hidden share per storage folder
    16 + folder id         SMPSTORED_XXXXXXXX$  (a share: one dir per state store)
    store rowid << 40 | n  inode n of that store (n = 1 is the store directory,
                           n = 0 its stub: what others see of it, with no way in)
"""
from __future__ import annotations

import stat

import pyfuse3

from ..crypto.chunk import BLOCK_SIZE
from ..store.layout import ROOT as STORE_ROOT
from ..store.layout import Attr
from .catalog import Catalog, StoreRec

SHIFT = 40
STUB = 0                      # local inode of a store directory as others see it (no way in)
LOCAL_MASK = (1 << SHIFT) - 1
SHARE_BASE = 16
TIMEOUT = 60.0                # entry/attr cache seconds (invalidated on lifecycle changes)


def split(ino: int) -> tuple[int, int]:
    return ino >> SHIFT, ino & LOCAL_MASK


def join(rowid: int, local: int) -> int:
    return (rowid << SHIFT) | local


def store_entry(cat: Catalog, rowid: int, a: Attr) -> pyfuse3.EntryAttributes:
    """Attributes of inode ``a.ino`` of store ``rowid``."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = join(rowid, a.ino)
    e.generation = 0
    # Names inside a store are cached: every path walk into a store passes
    # its directory, which is never cached and is a stub for other uids
    # (see VirtualDirs.store_root_entry), so a cached name can't be reached by them.
    e.entry_timeout = TIMEOUT
    e.attr_timeout = TIMEOUT
    e.st_mode = a.mode
    e.st_nlink = a.nlink
    e.st_uid = a.uid
    e.st_gid = a.gid
    e.st_rdev = a.rdev
    e.st_size = a.size
    e.st_blksize = BLOCK_SIZE
    e.st_blocks = (a.stored + 511) // 512      # what is stored: holes are not (cp --sparse=auto)
    e.st_atime_ns = a.atime_ns
    e.st_mtime_ns = a.mtime_ns
    e.st_ctime_ns = a.ctime_ns
    if a.ino == STORE_ROOT:
        # the store directory shows the uid entitled to it now, and the mode,
        # times and xattrs its computer gave it (others see the stub)
        e.st_uid = e.st_gid = cat.stores[rowid].owner
    return e


def virtual_entry(ino: int) -> pyfuse3.EntryAttributes:
    """Attributes of the mount root or a share."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino
    e.entry_timeout = TIMEOUT
    e.attr_timeout = TIMEOUT
    e.st_mode = stat.S_IFDIR | 0o755
    e.st_nlink = 2
    e.st_blksize = 4096
    return e


def stub_entry(rec: StoreRec) -> pyfuse3.EntryAttributes:
    """A store directory as those not entitled to it see it: made up from the
    catalog (no store opened, no key unwrapped), never cached."""
    e = virtual_entry(join(rec.rowid, STUB))
    e.entry_timeout = e.attr_timeout = 0
    e.st_uid = e.st_gid = rec.owner
    e.st_mode = stat.S_IFDIR | 0o700
    e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = rec.created_ns
    return e
