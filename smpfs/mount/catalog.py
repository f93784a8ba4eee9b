"""The daemon's view of smp.db: shares (storage folders) and state stores.

The daemon rebuilds it from smp.db (``Daemon.refresh``) and the FUSE layer
reads it on every request; it holds no open store and no key.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..lifecycle.status import GONE


@dataclass
class StoreRec:
    """What the FUSE layer knows of a store from smp.db."""
    rowid: int
    store_id: str
    folder_id: int
    status: str
    source_uid: int
    dest_uid: int
    created_ns: int = 0

    def as_row(self) -> dict:
        return {"status": self.status, "source_uid": self.source_uid, "dest_uid": self.dest_uid}

    @property
    def owner(self) -> int:
        """The uid entitled to the store now (shown as its directory's owner)."""
        return self.source_uid if self.status == "capturing" else self.dest_uid


@dataclass
class ShareRec:
    folder_id: int
    share: str
    path: str
    min_free: Callable[[], int]

    @property
    def name(self) -> bytes:
        return f"SMPSTORED_{self.share}$".encode()


class Catalog:
    """Shares by folder id and stores by smp.db rowid. The daemon swaps whole
    dicts on refresh (``shares``, ``stores``), never edits them in place,
    except to mark one store as being deleted."""

    def __init__(self):
        self.shares: dict[int, ShareRec] = {}        # folder id -> share
        self.stores: dict[int, StoreRec] = {}        # rowid -> store
        self._by_id: dict[str, int] = {}
        self._by_id_of = None

    def share_by_name(self, name: bytes) -> ShareRec | None:
        for s in self.shares.values():
            if s.name == name:
                return s
        return None

    def live_stores_in(self, folder_id: int):
        return [s for s in self.stores.values() if s.folder_id == folder_id and s.status not in GONE]

    def live_store(self, folder_id: int, store_id: str) -> StoreRec | None:
        """The store named ``store_id`` in a share: one dict lookup, however many stores."""
        rowid = self.by_id.get(store_id)
        rec = self.stores.get(rowid) if rowid is not None else None
        if rec is None or rec.folder_id != folder_id or rec.status in GONE:
            return None
        return rec

    @property
    def by_id(self) -> dict[str, int]:
        if self._by_id_of is not self.stores:          # rebuilt when the daemon swaps the dict
            self._by_id = {r.store_id: r.rowid for r in self.stores.values()}
            self._by_id_of = self.stores
        return self._by_id
