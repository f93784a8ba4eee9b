"""Running code as another uid: fork, drop to the uid (keeping only the
capabilities asked for) and run a function, without exec, so no interpreter
has to be reachable by that uid. Used by the test plugin (testing.py) and
tools/demo.sh."""
from __future__ import annotations

import os
import pickle
import traceback


def spawn_as(who, fn, *args, gid: int | None = None, groups=(), caps: int = 0) -> tuple[int, int]:
    """Fork a child that runs ``fn(report_fd, *args)`` as ``who`` and keeps running
    (a tool still writing when the daemon is killed, say). Returns ``(pid,
    read end of report_fd)``; the child exits 0 when ``fn`` returns, 1 if it raises.
    ``groups``: its supplementary groups; ``caps``: the capabilities it keeps
    effective (a bit mask, ``1 << CAP_N``), as a tool started with
    systemd's ``AmbientCapabilities=`` or ``setpriv --ambient-caps`` would."""
    uid = getattr(who, "uid", who)                  # a Computer, or a uid
    gid = uid if gid is None else gid
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child
        os.close(r)
        code = 0
        try:
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            if caps:
                _prctl(PR_SET_KEEPCAPS, 1)
            os.setresuid(uid, uid, uid)
            if caps:
                set_caps(caps)
            fn(w, *args)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _prctl(option: int, arg: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def set_caps(caps: int) -> None:
    """Make ``caps`` (a mask of capability bits) this process's permitted and
    effective set, nothing inheritable (capset(2))."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    data = (Data * 2)(Data(caps & 0xFFFFFFFF, caps & 0xFFFFFFFF, 0), Data(caps >> 32, caps >> 32, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(ctypes.byref(Header(_LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def as_uid(uid: int, fn, *args, gid: int | None = None, groups=(), caps: int = 0, **kwargs):
    """Run ``fn(*args, **kwargs)`` in a forked child as ``uid``; return its result.

    Exceptions in the child are re-raised here (an ``OSError`` keeps its errno)."""
    def child(w):
        try:
            payload = ("ok", fn(*args, **kwargs))
        except BaseException as e:                   # noqa: BLE001 - shipped to the parent
            payload = ("err", e, traceback.format_exc())
        try:
            data = pickle.dumps(payload)
        except Exception as e:                       # unpicklable result or exception
            data = pickle.dumps(("err", RuntimeError(f"{type(e).__name__}: {e}"), ""))
        with os.fdopen(w, "wb") as f:
            f.write(data)

    pid, r = spawn_as(uid, child, gid=gid, groups=groups, caps=caps)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"child running as uid {uid} died (status {status})")
    payload = pickle.loads(data)
    if payload[0] == "ok":
        return payload[1]
    exc = payload[1]
    if isinstance(exc, BaseException) and payload[2]:
        exc.add_note(f"(raised as uid {uid}):\n{payload[2]}")
    raise exc
