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

import json
import os
import socket
import struct
from pathlib import Path

from .. import errors

SOCKET_NAME = "control.sock"
MAX_MESSAGE = 1 << 20


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


async def serve(path: Path, handler, task_status=None):
    """Serve the control socket with trio until cancelled.
    ``handler(uid, cmd, args) -> dict`` may be async; SmpErrors become error replies."""
    import trio

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
                conn, _ = await listener.accept()
                nursery.start_soon(_serve_one, conn, handler)
        finally:
            listener.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


async def _serve_one(conn, handler):
    import trio

    with conn:
        try:
            uid = peer_uid(conn)
            buf = b""
            with trio.move_on_after(30):
                while not buf.endswith(b"\n") and len(buf) < MAX_MESSAGE:
                    piece = await conn.recv(65536)
                    if not piece:
                        break
                    buf += piece
            try:
                msg = json.loads(buf)
                cmd, args = str(msg["cmd"]), dict(msg.get("args") or {})
            except (ValueError, KeyError, TypeError):
                raise errors.UsageError("malformed control request")
            result = handler(uid, cmd, args)
            if hasattr(result, "__await__"):
                result = await result
            reply = {"ok": True, "result": result}
        except errors.SmpError as e:
            reply = {"ok": False, "error": error_to_wire(e)}
        except Exception as e:  # never let one request take the daemon down
            import logging
            logging.getLogger("smpfs.mount.control").exception("control request failed")
            reply = {"ok": False, "error": {"type": "SmpError", "exit_code": 1,
                                            "message": f"internal error: {type(e).__name__}: {e}"}}
        data = memoryview(json.dumps(reply, default=str).encode() + b"\n")
        try:
            while data:
                data = data[await conn.send(data):]
        except OSError:
            pass
