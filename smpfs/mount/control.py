"""The daemon's control socket: one JSON request per connection.

The CLI talks to a mounted SMP through ``STATE/control.sock``. The daemon
learns who is calling from the kernel (``SO_PEERCRED``), never from what
the caller claims, so a non-root computer can request and release its own
state store and nothing else. Request and reply are one line of JSON each::

    {"cmd": "request_capture", "args": {"computer": "PC01"}}
    {"ok": true, "result": {...}}
    {"ok": false, "error": {"type": "RestoreOnlyMode", "exit_code": 11,
                             "message": "...", "hint": "..."}}
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
import time
from pathlib import Path

from .. import errors

log = logging.getLogger("smpfs.mount.control")

SOCKET_NAME = "control.sock"
MAX_MESSAGE = 1 << 20

# Anyone may connect (peer credentials decide what they get), so connections
# are bounded: per uid, and in total for all uids but root, which has its own
# bound so that the admin always gets in. A connection that has not sent its
# request within IDLE_TIMEOUT is closed; so is one that does not take its reply.
MAX_PER_UID = 16
MAX_CONNECTIONS = 256
MAX_ROOT = 64
IDLE_TIMEOUT = 10.0


def socket_path(state_dir) -> Path:
    return Path(state_dir) / SOCKET_NAME


def call(state_dir, command: str, args: dict | None = None, timeout: float | None = 600) -> dict:
    """Run ``command`` in the mounted SMP's daemon; raise NotMountedError if none runs."""
    path = socket_path(state_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
        s.close()
        raise errors.NotMountedError(f"the SMP at {state_dir} is not mounted ({e.strerror})",
                                     "mount it with: smpfs mount MOUNTPOINT")
    except PermissionError:
        s.close()
        raise errors.PermissionDenied(f"cannot reach the SMP's control socket {path}",
                                      "every directory on the way to the state dir must be traversable")
    try:
        s.sendall(json.dumps({"cmd": command, "args": args or {}}).encode() + b"\n")
        reply = _read_line(s)
    finally:
        s.close()
    if not reply:
        raise errors.MountError("the smpfs daemon closed the connection without answering",
                                "see STATE/smpfs.log")
    msg = json.loads(reply)
    if msg.get("ok"):
        return msg.get("result") or {}
    raise error_from_wire(msg.get("error") or {})


def _read_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        piece = s.recv(65536)
        if not piece:
            break
        buf += piece
        if len(buf) > MAX_MESSAGE * 64:
            raise errors.MountError("reply from the daemon too large")
    return buf.strip()


def error_to_wire(e: errors.SmpError) -> dict:
    return {"type": type(e).__name__, "exit_code": e.exit_code, "message": e.message, "hint": e.hint}


def error_from_wire(d: dict) -> errors.SmpError:
    cls = getattr(errors, d.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.SmpError)):
        cls = errors.SmpError
    e = cls(d.get("message", "unknown error from the daemon"), d.get("hint"))
    if cls is errors.SmpError and "exit_code" in d:
        e.exit_code = d["exit_code"]
    return e


def peer_uid(sock) -> int:
    """The uid of the process at the other end of a Unix socket, from the kernel."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class Admission:
    """Open control connections per uid, against the bounds above."""

    def __init__(self, per_uid: int = MAX_PER_UID, total: int = MAX_CONNECTIONS, root: int = MAX_ROOT):
        self.per_uid, self.total, self.root = per_uid, total, root
        self.open: dict[int, int] = {}
        self.others = 0                      # open connections of uids but root

    def admit(self, uid: int) -> bool:
        n = self.open.get(uid, 0)
        if uid == 0:
            if n >= self.root:
                return False
        elif n >= self.per_uid or self.others >= self.total:
            return False
        self.open[uid] = n + 1
        self.others += uid != 0
        return True

    def leave(self, uid: int) -> None:
        self.open[uid] -= 1
        if not self.open[uid]:
            del self.open[uid]
        self.others -= uid != 0


class Throttled:
    """Log one line per kind of trouble per minute, with how often it happened
    (a caller provoking the same trouble in a loop cannot flood the log)."""

    def __init__(self, every: float = 60.0):
        self.every, self.last, self.count = every, {}, {}

    def warn(self, kind: str, msg: str, *args, level: int = logging.WARNING, logger=None,
             exc_info: bool = False) -> None:
        if kind not in self.count and len(self.count) >= 1000:     # memory stays bounded
            self.count.clear()
            self.last.clear()
        self.count[kind] = self.count.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.last.get(kind, -self.every) >= self.every:
            (logger or log).log(level, msg + " (%d time(s) since the last report)", *args, self.count[kind],
                                exc_info=exc_info)
            self.last[kind], self.count[kind] = now, 0

    def info(self, kind: str, msg: str, *args, logger=None) -> None:
        self.warn(kind, msg, *args, level=logging.INFO, logger=logger)


async def serve(path: Path, handler, task_status=None, admission: Admission | None = None):
    """Serve the control socket with trio until cancelled.
    ``handler(uid, cmd, args) -> dict`` may be async; SmpErrors become error replies.

    Nothing a client does ends this loop: accept() failing (EMFILE when the
    daemon is out of file descriptors, say) is logged and retried a moment later.
    """
    import trio

    admission = admission or Admission()
    trouble = Throttled()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    os.chmod(path, 0o666)          # anyone may ask; peer credentials decide what they get
    listener.listen(64)
    if task_status is not None:
        task_status.started()
    async with trio.open_nursery() as nursery:
        try:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as e:
                    trouble.warn("accept", "control socket: accept failed: %s", os.strerror(e.errno or 0))
                    await trio.sleep(0.1 if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                                        errno.ENOMEM) else 0.01)
                    continue
                nursery.start_soon(_serve_one, conn, handler, admission, trouble)
        finally:
            listener.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


async def _serve_one(conn, handler, admission: Admission, trouble: Throttled):
    import trio

    with conn:
        try:
            uid = peer_uid(conn)
        except OSError:
            return
        if not admission.admit(uid):
            trouble.warn(f"full-{uid}", "control socket: refused a connection of uid %d: too many open", uid)
            err = errors.MountError(f"the SMP is busy: too many open connections from uid {uid}",
                                    "close idle connections to the control socket, then try again")
            with trio.move_on_after(1):
                await _send(conn, {"ok": False, "error": error_to_wire(err)})
            return
        try:
            await _answer(conn, uid, handler, trouble)
        except Exception:  # noqa: BLE001 - one connection never takes the daemon down
            trouble.warn(f"failed-{uid}", "control connection of uid %d failed", uid, exc_info=True)
        finally:
            admission.leave(uid)


async def _send(conn, reply: dict) -> None:
    data = memoryview(json.dumps(reply, default=str).encode() + b"\n")
    try:
        while data:
            data = data[await conn.send(data):]
    except OSError:
        pass


async def _answer(conn, uid: int, handler, trouble: Throttled | None = None) -> None:
    import trio

    try:
        buf = b""
        with trio.move_on_after(IDLE_TIMEOUT) as idle:
            while not buf.endswith(b"\n") and len(buf) < MAX_MESSAGE:
                piece = await conn.recv(65536)
                if not piece:
                    break
                buf += piece
        if idle.cancelled_caught:
            raise errors.UsageError(f"no request within {IDLE_TIMEOUT:.0f}s: connection closed")
        try:
            msg = json.loads(buf)
            cmd, args = str(msg["cmd"]), dict(msg.get("args") or {})
        except (ValueError, KeyError, TypeError, RecursionError):   # RecursionError: nested too deep
            raise errors.UsageError("malformed control request",
                                    'one line of JSON: {"cmd": "...", "args": {...}}')
        result = handler(uid, cmd, args)
        if hasattr(result, "__await__"):
            result = await result
        reply = {"ok": True, "result": result}
    except errors.SmpError as e:
        reply = {"ok": False, "error": error_to_wire(e)}
    except Exception as e:  # never let one request take the daemon down
        (trouble or Throttled()).warn(f"request-{uid}-{type(e).__name__}", "control request of uid %d failed",
                                      uid, level=logging.ERROR, exc_info=True)
        reply = {"ok": False, "error": {"type": "SmpError", "exit_code": 1,
                                        "message": f"internal error: {type(e).__name__}: {e}"}}
    with trio.move_on_after(IDLE_TIMEOUT):        # a caller that does not read its reply
        await _send(conn, reply)
