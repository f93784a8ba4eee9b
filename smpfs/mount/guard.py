"""The one place where a handler's exceptions become FUSE replies.

A handler that raises anything but ``FUSEError`` ends ``pyfuse3.main()`` and
takes the whole mount down (../shared/fuse-notes.md §0). Every handler of
:class:`~smpfs.mount.operations.SmpOperations` is therefore decorated with
:func:`handler` (or, for ``forget``, :func:`no_reply`): an ``OSError`` becomes
``FUSEError(errno)`` (logged if it is EIO or no ordinary answer), and
anything else ``EIO`` (or ``ENOSPC`` if sqlite found the disk full) with its
traceback logged once. Handlers themselves just let errors rise.
"""
from __future__ import annotations

import collections
import errno
import functools
import logging
import sqlite3

import pyfuse3

log = logging.getLogger("smpfs.mount.operations")

#: Requests served, by kind (logged at unmount: what a workload costs in round trips).
OP_COUNTS: collections.Counter = collections.Counter()

#: errnos that are ordinary answers to a request, not faults: not logged.
ANSWERS = frozenset({
    errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.EACCES,
    errno.EPERM, errno.EROFS, errno.EXDEV, errno.EINVAL, errno.ENAMETOOLONG, errno.ENODATA,
    errno.ERANGE, errno.E2BIG, errno.ENOSPC, errno.EDQUOT, errno.EBADF, errno.ESTALE,
    errno.ELOOP, errno.EMLINK, errno.EFBIG, errno.EOPNOTSUPP,
})


def disk_full(e: BaseException) -> bool:
    """sqlite's "database or disk is full" (SQLITE_FULL), told by its code, not its text."""
    return isinstance(e, sqlite3.Error) and \
        (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL


def fuse_error(op: str, e: Exception) -> pyfuse3.FUSEError:
    """The reply to request ``op`` that failed with ``e`` (call it in the except block)."""
    if isinstance(e, OSError):
        code = e.errno or errno.EIO
        if code == errno.EIO:
            log.error("I/O error: %s", e.strerror or e)      # damaged or unreadable data: the admin is told
        elif code not in ANSWERS:
            log.error("%s: %s", op, e)
        return pyfuse3.FUSEError(code)
    log.exception("%s failed", op)
    return pyfuse3.FUSEError(errno.ENOSPC if disk_full(e) else errno.EIO)


def handler(fn):
    """A FUSE request handler: counted, and raising only FUSEError."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args):
        OP_COUNTS[name] += 1
        try:
            return await fn(*args)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            raise fuse_error(name, e) from None
    return wrapper


def no_reply(fn):
    """A handler the kernel expects no reply from (forget): it must never raise."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args):
        OP_COUNTS[name] += 1
        try:
            await fn(*args)
        except Exception:
            log.exception("%s failed", name)
    return wrapper
