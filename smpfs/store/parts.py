"""What the parts of a :class:`~smpfs.store.statestore.StateStore` rely on
from each other, declared once so the type checker sees one store.

``StateStore`` is built from mixins (tree, xattrs, blocks, metadata MACs);
each uses attributes and methods another part defines. They all derive from
:class:`StoreParts`, which only declares them (nothing here runs)."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..crypto.keys import StoreKeys
    from .counter import NonceCounter
    from .layout import Attr
    from .metamac import MetaMac


class StoreParts:
    path: Path
    keys: StoreKeys
    sid: bytes                       # the store id, 32 raw bytes
    db: sqlite3.Connection
    read_only: bool
    min_free_bytes: Callable[[], int]
    counter: NonceCounter
    macs: MetaMac | None
    icols: str                       # inode columns to select (metamac.py)
    icols_i: str
    mac_col: str

    if TYPE_CHECKING:
        def getattr(self, ino: int, *, stored: bool = False) -> Attr: ...
        def with_pending(self, a: Attr) -> Attr: ...
        def begin_change(self) -> None: ...
        def check_writable(self) -> None: ...
        def sync(self) -> None: ...
        def prepare_durable(self, ino: int | None = None) -> tuple[Any, Callable[[], list[str]]]: ...
        def truncate(self, ino: int, size: int, *, keep_privs: bool = False) -> None: ...
        def forget_blocks(self, ino: int) -> None: ...
        def check_inode_row(self, row: Any) -> None: ...
        def check_dentry(self, parent: int, name: bytes, ino: int, did: int, mac: Any) -> None: ...
        def check_block_row(self, ino: int, blkno: int, counter: Any, length: Any, salt: Any,
                            mac: Any) -> None: ...
        def check_block_count(self, ino: int) -> None: ...
        def check_room(self, nbytes: int) -> None: ...
        def near_floor(self) -> None: ...
        def wal_owed(self) -> int: ...
