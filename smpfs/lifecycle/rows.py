"""Rows of smp.db as the layers above lifecycle see them: frozen dataclasses,
one per table, each field named as its column; and the reads and the few
writes those layers do, through sqlite-utils (``smp.db``).

The mount, the network services, the site tools and the CLI get these typed
rows and call these functions; none of them holds SQL (a unit test keeps it
so). Lifecycle's own modules still pass plain dicts among themselves.

A row is built with ``from_row`` from a mapping that has at least the
dataclass's columns: columns a later migration adds are ignored until a field
is added for them here.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .status import GONE, Status, sql_in

if TYPE_CHECKING:
    from .smp import Smp

R = TypeVar("R", bound="_Row")


class _Row:
    __slots__ = ()

    @classmethod
    def from_row(cls: type[R], row: Mapping[str, Any]) -> R:
        """The row's columns that this class has a field for (a KeyError if one is missing)."""
        return cls(**_columns(cls, row))


def _columns(cls: type, row: Mapping[str, Any]) -> dict[str, Any]:
    return {f.name: row[f.name] for f in dataclasses.fields(cls)}


def share_name(share: str) -> str:
    """The SMB share of a folder's ``share`` id, as ConfigMgr names it."""
    return f"SMPSTORED_{share}$"


@dataclass(frozen=True, slots=True)
class FolderRow(_Row):
    """A storage folder (table ``folders``)."""
    id: int
    share: str
    path: str
    max_clients: int
    min_free: str
    created_at: float
    removed_at: float | None

    @property
    def share_name(self) -> str:
        return share_name(self.share)


@dataclass(frozen=True, slots=True)
class StoreRow(_Row):
    """A state store (table ``stores``)."""
    id: int
    store_id: str
    association_id: int
    folder_id: int
    status: Status
    source_uid: int | None
    dest_uid: int | None
    wrapped_key: bytes | None = field(repr=False)
    created_at: float | None
    capture_released_at: float | None
    restore_requested_at: float | None
    restore_released_at: float | None
    retention_s: int | None
    delete_at: float | None
    deleted_at: float | None
    bytes_freed: int | None
    nonce_hwm: int
    root_mac: bytes | None = field(repr=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoreRow:
        values = _columns(cls, row)
        values["status"] = Status(values["status"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ComputerRow(_Row):
    """A computer (table ``computers``): its public columns only; its wrapped
    secret and verifier never leave lifecycle/computer.py."""
    name: str
    uid: int
    created_at: float
    secret_set_at: float | None


# -- reads -------------------------------------------------------------------------

def live_folders(smp: Smp) -> list[FolderRow]:
    """The storage folders not removed, oldest first."""
    return [FolderRow.from_row(r) for r in smp.rows_where("folders", "removed_at IS NULL", order_by="id")]


def first_folder(smp: Smp) -> FolderRow:
    """The folder made with the SMP (``init``'s)."""
    return FolderRow.from_row(smp.rows_where("folders", order_by="id", limit=1)[0])


def all_stores(smp: Smp) -> list[StoreRow]:
    """Every store, deleted ones too (their rows stay for the record)."""
    return [StoreRow.from_row(r) for r in smp.rows_where("stores", order_by="id")]


def live_stores(smp: Smp) -> list[StoreRow]:
    """The stores not being or already deleted, oldest first."""
    return [StoreRow.from_row(r)
            for r in smp.rows_where("stores", f"status NOT IN {sql_in(GONE)}", order_by="id")]


def store_by_rowid(smp: Smp, rowid: int) -> StoreRow | None:
    row = smp.get_row("stores", rowid)
    return None if row is None else StoreRow.from_row(row)


def any_keyed_store(smp: Smp) -> StoreRow | None:
    """A store whose data key is still kept (to check the master key unwraps it)."""
    rows = smp.rows_where("stores", "wrapped_key IS NOT NULL", limit=1)
    return StoreRow.from_row(rows[0]) if rows else None


def computer_by_uid(smp: Smp, uid: int) -> ComputerRow | None:
    rows = smp.rows_where("computers", "uid = ?", (uid,))
    return ComputerRow.from_row(rows[0]) if rows else None


# -- what the mount records about a store it serves ----------------------------------

def raise_nonce_hwm(smp: Smp, rowid: int, limit: int) -> None:
    """The store reserved nonces up to ``limit``: kept here too, apart from its
    folder, so that putting back an older copy of its files cannot repeat one."""
    with smp.tx():
        smp.conn.execute("UPDATE stores SET nonce_hwm = max(nonce_hwm, ?) WHERE id = ?", (limit, rowid))


def keep_root_mac(smp: Smp, rowid: int, root: bytes) -> None:
    """The MAC of a frozen store as a whole, recorded once (a released store never changes)."""
    with smp.tx():
        smp.conn.execute("UPDATE stores SET root_mac = ? WHERE id = ? AND root_mac IS NULL AND status <> ?",
                         (root, rowid, Status.CAPTURING.value))
