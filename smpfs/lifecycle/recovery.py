"""Recovering one state store with only its recovery key, audited.

:func:`smpfs.store.recover.recover` needs no SMP (the day the SMP is gone);
when the SMP that owned the store is still there, every attempt, refused ones
too, is recorded in its audit log. An SMP that cannot be opened or written is
no reason to fail a recovery: the audit is then skipped.
"""
from __future__ import annotations

import os

from ..errors import SmpError
from ..store import recover as store_recover
from . import audit
from .smp import Smp


def recover(state_dir, uid: int, key_text: str, store_path, outdir, progress=None) -> dict:
    """Decrypt the store at ``store_path`` into ``outdir``; the counts of
    :func:`smpfs.store.recover.recover`. The attempt is audited (as ``uid``) in
    the SMP at ``state_dir`` if there is one."""
    store_id = os.path.basename(os.path.normpath(store_path))
    try:
        stats = store_recover.recover(key_text, store_path, outdir, progress=progress)
    except SmpError as e:
        _audit_if_present(state_dir, lambda smp, e=e: audit.record_failure(smp, uid, "recover", e,
                                                                               store_id=store_id))
        raise
    _audit_if_present(state_dir, lambda smp: audit.record(smp, uid, "recover", store_id=store_id,
                                                          outcome="error" if stats["errors"] else "ok",
                                                          files=stats["files"], errors=len(stats["errors"])))
    return stats


def _audit_if_present(state_dir, write) -> None:
    try:
        smp = Smp.open(state_dir)
    except Exception:
        return
    try:
        write(smp)
    except Exception:
        pass
    finally:
        smp.close()
