"""Errors that reach a user, each with its own exit code.

One exit code per failure class (the gocryptfs habit), so scripts and task
sequences can branch on *why* a command failed without parsing messages.
The table is documented in docs/admin.md; never renumber a code.
"""
from __future__ import annotations

import errno
import os


class SmpError(Exception):
    """A failure explained to the user. ``exit_code`` is stable API."""

    exit_code = 1
    errno = errno.EIO

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # message, then what to do next
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(SmpError):
    exit_code = 2
    errno = errno.EINVAL


class StateDirError(SmpError):
    """State dir missing, already initialised, unreadable, wrong schema."""
    exit_code = 3
    errno = errno.ENOENT


class KeyFileError(SmpError):
    """Master key missing, wrong size, or unsafe permissions."""
    exit_code = 4
    errno = errno.EACCES


class MountError(SmpError):
    """Mountpoint missing/busy, no /dev/fuse, already mounted, daemon died."""
    exit_code = 5
    errno = errno.EIO


class NotMountedError(SmpError):
    exit_code = 6
    errno = errno.ENOTCONN


class PermissionDenied(SmpError):
    exit_code = 7
    errno = errno.EACCES


class UnknownComputer(SmpError):
    exit_code = 10
    errno = errno.ENOENT


class RestoreOnlyMode(SmpError):
    exit_code = 11
    errno = errno.EROFS


class NoStorageRoom(SmpError):
    exit_code = 12
    errno = errno.ENOSPC


class CaptureInProgress(SmpError):
    """Refusals caused by the store's lifecycle state (wrong step order)."""
    exit_code = 13
    errno = errno.EBUSY


class NothingToRelease(SmpError):
    exit_code = 14
    errno = errno.ENOENT


class NotFound(SmpError):
    """An association, store, folder ... that does not exist."""
    exit_code = 15
    errno = errno.ENOENT


class Conflict(SmpError):
    """Already exists / still in use (folder holds stores, duplicate name)."""
    exit_code = 16
    errno = errno.EEXIST


class IntegrityError(SmpError):
    """Tampered or missing ciphertext, failed fsck."""
    exit_code = 20
    errno = errno.EIO


class AuthenticationFailed(OSError, IntegrityError):  # type: ignore[misc]  # errno: both say EIO
    """Ciphertext or a MAC of a store fails authentication: an ``OSError(EIO)``
    to the layers that serve files, an :class:`IntegrityError` to tools."""

    def __init__(self, message: str):
        OSError.__init__(self, errno.EIO, f"{os.strerror(errno.EIO)}: {message}")
        self.message = message
        self.hint = None

    __str__ = OSError.__str__
