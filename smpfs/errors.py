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
    #: What to do next when the raiser gave no hint (every error a user sees has one).
    default_hint = "see `smpfs COMMAND --help`, and STATE/smpfs.log for a mounted SMP"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint

    def __str__(self) -> str:  # message, then what to do next
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(SmpError):
    exit_code = 2
    errno = errno.EINVAL
    default_hint = "see `smpfs COMMAND --help` for the arguments and an example"


class StateDirError(SmpError):
    """State dir missing, already initialised, unreadable, wrong schema."""
    exit_code = 3
    errno = errno.ENOENT
    default_hint = "point --state (or $SMPFS_STATE, default /var/lib/smpfs) at the directory `smpfs init` made"


class KeyFileError(SmpError):
    """Master key missing, wrong size, or unsafe permissions."""
    exit_code = 4
    errno = errno.EACCES
    default_hint = "the master key is STATE/master.key (0600, root); a recovery key comes from `smpfs key show SOURCE`"


class MountError(SmpError):
    """Mountpoint missing/busy, no /dev/fuse, already mounted, daemon died."""
    exit_code = 5
    errno = errno.EIO
    default_hint = "see STATE/smpfs.log, and `smpfs status` for what is mounted where"


class NotMountedError(SmpError):
    exit_code = 6
    errno = errno.ENOTCONN
    default_hint = "an admin mounts the SMP with `smpfs mount MOUNTPOINT`"


class PermissionDenied(SmpError):
    exit_code = 7
    errno = errno.EACCES
    default_hint = "ask the SMP admin (root), or act only for the computer mapped to your uid"


class UnknownComputer(SmpError):
    exit_code = 10
    errno = errno.ENOENT
    default_hint = "see `smpfs computer list`; an admin adds one with `smpfs computer add NAME --uid UID`"


class RestoreOnlyMode(SmpError):
    exit_code = 11
    errno = errno.EROFS
    default_hint = "restores continue; an admin turns it off with `smpfs config --restore-only off`"


class NoStorageRoom(SmpError):
    exit_code = 12
    errno = errno.ENOSPC
    default_hint = ("free space, raise the limits with `smpfs folder set PATH --max-clients N --min-f"
                    "ree SIZE`, or add a folder")


class CaptureInProgress(SmpError):
    """Refusals caused by the store's lifecycle state (wrong step order)."""
    exit_code = 13
    errno = errno.EBUSY
    default_hint = "finish the previous step first (the SMP admin sees where each migration stands: `smpfs status`)"


class NothingToRelease(SmpError):
    exit_code = 14
    errno = errno.ENOENT
    default_hint = "every release follows its request (the SMP admin sees each store's state: `smpfs status`)"


class NotFound(SmpError):
    """An association, store, folder ... that does not exist."""
    exit_code = 15
    errno = errno.ENOENT
    default_hint = "see `smpfs status` (or `smpfs association list`, `smpfs folder list`)"


class Conflict(SmpError):
    """Already exists / still in use (folder holds stores, duplicate name)."""
    exit_code = 16
    errno = errno.EEXIST
    default_hint = "see `smpfs status` for what already exists or is in use"


class OutsideBoundaryGroups(SmpError):
    """A computer that no boundary group of the site file takes (by address or name)."""
    exit_code = 17
    errno = errno.EACCES


class IntegrityError(SmpError):
    """Tampered or missing ciphertext, failed fsck."""
    exit_code = 20
    errno = errno.EIO
    default_hint = "run `smpfs fsck --no-repair` for the details; restore the storage folder from a backup"


class AuthenticationFailed(OSError, IntegrityError):  # type: ignore[misc]  # errno: both say EIO
    """Ciphertext or a MAC of a store fails authentication: an ``OSError(EIO)``
    to the layers that serve files, an :class:`IntegrityError` to tools."""

    def __init__(self, message: str):
        OSError.__init__(self, errno.EIO, f"{os.strerror(errno.EIO)}: {message}")
        self.message = message
        self.hint = self.default_hint

    __str__ = OSError.__str__


def smp_error_in(e: BaseException) -> SmpError | None:
    """The SmpError ``e`` is or carries: trio's nurseries wrap what a task raised
    in an ExceptionGroup (with the Cancelled of its siblings), which must reach
    a user as that error, not as a bug."""
    if isinstance(e, SmpError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            found = smp_error_in(sub)
            if found is not None:
                return found
    return None
