"""Request/Release State Store over HTTPS: smpfs's SMPISAPI.

HTTP/1.1 is parsed by ``h11`` (the python-hyper project's sans-I/O protocol
library, also under hypercorn) driven directly by trio's TLS streams: no
framework, no HTTP parsing of our own, and every limit is ours to set:

* bodies up to :data:`MAX_BODY` (1 MiB; 413 past it, announced or not),
  request heads up to 16 KiB;
* a slow client gets :data:`HEAD_TIMEOUT` for the TLS handshake and the
  request head and :data:`BODY_TIMEOUT` for its body, then 408 and the
  connection is closed; an idle keep-alive connection is closed after
  :data:`IDLE_TIMEOUT`; at most :data:`MAX_REQUESTS` requests per connection;
* at most :data:`MAX_CONNECTIONS` connections at once and
  :data:`MAX_PER_ADDRESS` from one address; when full, a new connection
  closes the one idle longest (still in its TLS handshake or request head, or
  kept alive between requests) of the address holding the most, so idle
  connections cannot keep a client out; only when every connection is busy
  with a request is the new one closed.

Each connection is its own trio task, so one slow or hostile client never
holds up another. Every call is authenticated with HTTP Basic (computer name
and secret, over TLS), then runs as that computer's uid through the same
lifecycle dispatch as the local commands (``Daemon.call``), audited with the
client's address. The API is documented in docs/network.md.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import sqlite3
import ssl
from collections import Counter

import h11
import trio

from ..errors import MountError, PermissionDenied, SmpError, UsageError
from ..lifecycle.computer import shown
from ..mount.control import Throttled
from .client import ServerBusy

log = logging.getLogger("smpfs.network.https")

MAX_BODY = 1 << 20
MAX_HEAD = 16 << 10
HEAD_TIMEOUT = 5.0
BODY_TIMEOUT = 10.0
IDLE_TIMEOUT = 10.0
CALL_TIMEOUT = 120.0
MAX_REQUESTS = 100
MAX_CONNECTIONS = 256
MAX_PER_ADDRESS = 32
#: when full, a new connection closes one idle at least this long (see _evict)
EVICT_AFTER = 0.5
#: lifecycle calls run at once (each a worker thread writing smp.db); more wait their turn
MAX_CALLS = 8

#: path -> lifecycle command
ROUTES = {
    "/v1/request/capture": "request_capture",
    "/v1/release/capture": "release_capture",
    "/v1/request/restore": "request_restore",
    "/v1/release/restore": "release_restore",
}

#: exit code -> HTTP status (anything else: 500)
STATUS = {2: 400, 7: 403, 10: 404, 11: 503, 12: 503, 13: 409, 14: 409, 15: 404, 16: 409}


class _Conn:
    """One open connection: its address, and since when it waits for a request
    (None while it is busy with one)."""

    def __init__(self, addr: str, now: float):
        self.addr = addr
        self.scope = trio.CancelScope()
        self.idle_since: float | None = now
        self.counted = True


class HttpError(Exception):
    def __init__(self, status: int, err: SmpError):
        self.status, self.err = status, err


class HttpsService:
    """The HTTPS endpoint, run inside the mount daemon (see smpfs.mount.daemon)."""

    #: where ``smpfs status`` shows this service (see :meth:`health`)
    status_key = "http"

    def __init__(self, address: str, port: int, cert, key, smb_port: int | None = None):
        self.address, self.port = address, port
        self.cert, self.key = str(cert), str(key)
        self.smb_port = smb_port
        self.host = None
        self.scope: trio.CancelScope | None = None
        self.active = 0
        self.per_address: Counter = Counter()
        self.conns: set[_Conn] = set()
        self.listen_port: int | None = None
        self.calls = trio.CapacityLimiter(MAX_CALLS)
        self.serving = False
        self.done: trio.Event | None = None
        self.trouble = Throttled()

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    async def run(self, host, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.host = host
        self.done = trio.Event()
        try:
            await self._run(task_status)
        finally:
            self.done.set()

    async def _run(self, task_status) -> None:
        try:
            listeners = await trio.open_ssl_over_tcp_listeners(
                self.port, self.ssl_context(), host=self.address, https_compatible=True)
        except (OSError, ssl.SSLError) as e:
            raise MountError(f"cannot serve HTTPS on {self.address}:{self.port}: {e}",
                             "pick another port with `smpfs config --http ADDR:PORT`, or turn it off")
        self.listen_port = listeners[0].transport_listener.socket.getsockname()[1]
        log.info("serving HTTPS on %s:%d", self.address, self.listen_port)
        try:
            with trio.CancelScope() as self.scope:
                self.serving = True
                task_status.started()
                await trio.serve_listeners(self._connection, listeners)
        finally:
            self.serving = False
            for listener in listeners:           # the port is free when stop() returns
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    async def stop(self) -> None:
        self.serving = False
        if self.scope is not None:
            self.scope.cancel()
        if self.done is not None:
            with trio.CancelScope(shield=True):
                await self.done.wait()

    def health(self) -> dict:
        """For ``smpfs status``: whether the endpoint serves now."""
        return {"serving": self.serving, "problem": None if self.serving else "stopped"}

    def changed(self, cmd: str, result: dict) -> None:
        pass

    # -- one connection ------------------------------------------------------------

    async def _connection(self, stream: trio.SSLStream) -> None:
        try:
            addr = stream.transport_stream.socket.getpeername()[0]
        except OSError:
            addr = "?"
        full = self.active >= MAX_CONNECTIONS or self.per_address[addr] >= MAX_PER_ADDRESS
        if full and not self._evict(addr if self.per_address[addr] >= MAX_PER_ADDRESS else None):
            self.trouble.info(f"full-{addr}", "https: too many connections; closing one from %s", addr,
                              logger=log)
            await trio.aclose_forcefully(stream)
            return
        conn = _Conn(addr, trio.current_time())
        self.conns.add(conn)
        self.active += 1
        self.per_address[addr] += 1
        try:
            with conn.scope:
                await self._serve(stream, addr, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as e:
            log.debug("https: connection from %s ended: %s", addr, e)
        except Exception:
            self.trouble.warn(f"failed-{addr}", "https: connection from %s failed", addr, logger=log,
                              level=logging.ERROR, exc_info=True)
        finally:
            self._release(conn)
            await trio.aclose_forcefully(stream)

    def _release(self, conn: _Conn) -> None:
        if conn.counted:
            conn.counted = False
            self.conns.discard(conn)
            self.active -= 1
            self.per_address[conn.addr] -= 1
            if not self.per_address[conn.addr]:
                del self.per_address[conn.addr]

    def _evict(self, addr: str | None) -> bool:
        """Make room for a new connection (from ``addr`` when that address is at
        its limit, else from anyone) by closing the connection idle longest (TLS
        handshake, request head not yet sent, or kept alive between requests)
        of the address holding the most connections; one busy with a request is
        never closed, nor one idle less than EVICT_AFTER. False if none may go."""
        now = trio.current_time()
        idle = [c for c in self.conns if c.idle_since is not None and now - c.idle_since >= EVICT_AFTER
                and not c.scope.cancel_called and (addr is None or c.addr == addr)]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (-self.per_address[c.addr], c.idle_since))
        victim.scope.cancel()
        self.trouble.info(f"evict-{victim.addr}", "https: full; closed an idle connection from %s",
                          victim.addr, logger=log)
        self._release(victim)          # its slot is free now, though its task leaves a moment later
        return True

    async def _serve(self, stream, addr: str, slot: _Conn) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        for n in range(MAX_REQUESTS):
            timeout = HEAD_TIMEOUT if n == 0 else IDLE_TIMEOUT
            slot.idle_since = trio.current_time()
            try:
                with trio.fail_after(timeout):
                    event = await _next_event(stream, conn)
                if not isinstance(event, h11.Request):
                    return                      # closed, or nothing but a half-sent head
                slot.idle_since = None          # busy with a request: never evicted
                status, payload = await self._request(stream, conn, event, addr)
            except trio.TooSlowError:
                log.info("https: %s too slow; closing", addr)
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and conn.their_state != h11.DONE:
                    await _send(stream, conn, 408, _error(UsageError("request timed out")), close=True)
                return
            except h11.RemoteProtocolError as e:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = e.error_status_hint
                    await _send(stream, conn, status, _error(UsageError(f"bad request: {e}")), close=True)
                return
            keep = conn.their_state == h11.DONE and (status < 400 or status in (401, 403, 404, 409, 503))
            await _send(stream, conn, status, payload, close=not keep)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _request(self, stream, conn, req: h11.Request, addr: str) -> tuple[int, dict]:
        method, target = req.method.decode("ascii", "replace"), req.target.decode("ascii", "replace")
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in req.headers}
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            length = MAX_BODY + 1
        if length > MAX_BODY:
            return 413, _error(UsageError(f"request body over {MAX_BODY} bytes"))
        with trio.fail_after(BODY_TIMEOUT):
            body = await _read_body(stream, conn)
        if body is None:
            return 413, _error(UsageError(f"request body over {MAX_BODY} bytes"))
        context = {"via": "https", "address": addr}
        path = target.split("?", 1)[0]
        who, computer = None, None
        try:
            if path == "/v1/info" and method == "GET":
                who = await self._authenticate(headers, context)
                return 200, {"ok": True, "result": await self._info(who)}
            cmd = ROUTES.get(path)
            if cmd is None:
                return 404, _error(UsageError(f"no such API: {method} {path}", "see docs/network.md"))
            if method != "POST":
                return 405, _error(UsageError(f"{path} takes POST, not {method}", API_HINT))
            who = await self._authenticate(headers, context)      # before anything reads the body
            try:
                args = json.loads(body or b"{}")
                if not isinstance(args, dict):
                    raise ValueError("not an object")
                computer = args.get("computer")
                if computer is not None and not isinstance(computer, str):
                    raise ValueError("computer must be a string")
            except RecursionError:
                return 400, _error(UsageError("the body must be a JSON object: nested too deep", API_HINT))
            except (ValueError, UnicodeDecodeError) as e:
                return 400, _error(UsageError(f"the body must be a JSON object: {str(e)[:200]}", API_HINT))
            with trio.fail_after(CALL_TIMEOUT):
                result = await self._call(who["uid"], cmd, {"computer": computer or who["name"]}, context)
            log.info("https %s %s %s: ok", addr, who["name"], cmd)
            return 200, {"ok": True, "result": self._public(result)}
        except HttpError as e:
            return e.status, _error(e.err)
        except (sqlite3.OperationalError, trio.TooSlowError) as e:
            log.info("https %s %s: busy (%s)", addr, path, e)
            return 503, _error(ServerBusy("the SMP is busy; ask again", "smpfs client --retries does"))
        except SmpError as e:
            log.info("https %s %s: %s", addr, path, e.message)
            if isinstance(e, PermissionDenied) and who is not None and computer is not None:
                # a remote computer is its name, not the uid the SMP maps it to
                e = PermissionDenied(f"computer {who['name']} cannot act for {computer}",
                                     "a computer requests and releases only its own state stores; "
                                     "leave out \"computer\" (or give its own name)")
            return STATUS.get(e.exit_code, 500), _error(e)

    async def _authenticate(self, headers: dict, context: dict) -> dict:
        kind, _, token = headers.get("authorization", "").partition(" ")
        name = secret = ""
        if kind.lower() == "basic":
            try:
                name, _, secret = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                pass
        if not name:
            raise HttpError(401, PermissionDenied("authentication required: computer name and secret",
                                                  "HTTP Basic: the computer name and its secret"))
        try:
            return await self._call(0, "computer_auth", {"name": name, "secret_value": secret}, context)
        except PermissionDenied as e:
            self.trouble.info(f"auth-{context['address']}", "https %s: authentication failed for %s",
                              context["address"], shown(name), logger=log)
            raise HttpError(401, e)

    async def _call(self, uid: int, cmd: str, args: dict, context: dict) -> dict:
        async with self.calls:
            return await self.host.call(uid, cmd, args, audit_context=context)

    async def _info(self, who: dict) -> dict:
        st = await self._call(0, "status", {}, {})
        return {"server": st["settings"]["server"], "restore_only": st["settings"]["restore_only"],
                "computer": who["name"], "smb": {"port": self.smb_port},
                "folders": [{"share": f["share_name"], "clients": f["clients"], "max_clients": f["max_clients"],
                             "free_bytes": f.get("free_bytes"), "has_room": f["has_room"]}
                            for f in st["folders"]]}

    def _public(self, result: dict) -> dict:
        """What a remote computer gets back: no paths of this host."""
        out = {k: v for k, v in result.items() if k not in ("path", "store_path", "changed_stores")}
        out["smb"] = {"port": self.smb_port}
        return out


#: The hint of an API caller's mistake (a remote client has no `smpfs COMMAND --help`).
API_HINT = ("see docs/network.md: POST /v1/request/capture|restore or /v1/release/capture|restore "
            "with a JSON object body ({} or {\"computer\": NAME}) and HTTP Basic authentication")


def _error(e: SmpError) -> dict:
    hint = API_HINT if "smpfs COMMAND" in (e.hint or "") else e.hint
    return {"ok": False, "error": {"type": type(e).__name__, "exit_code": e.exit_code,
                                   "message": e.message, "hint": hint}}


async def _next_event(stream, conn: h11.Connection):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        return event


async def _read_body(stream, conn: h11.Connection) -> bytes | None:
    """The request body, or None once it passes MAX_BODY (chunked bodies too)."""
    body = bytearray()
    while True:
        event = await _next_event(stream, conn)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return None
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        elif event is None or isinstance(event, h11.ConnectionClosed):
            raise trio.BrokenResourceError("client went away mid-body")


async def _send(stream, conn: h11.Connection, status: int, payload: dict, close: bool) -> None:
    data = json.dumps(payload, default=str).encode() + b"\n"
    headers = [("content-type", "application/json"), ("content-length", str(len(data))),
               ("cache-control", "no-store")]
    if status == 401:
        headers.append(("www-authenticate", 'Basic realm="smpfs", charset="UTF-8"'))
    if close:
        headers.append(("connection", "close"))
    try:
        with trio.fail_after(BODY_TIMEOUT):
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=data)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
    except (trio.TooSlowError, h11.LocalProtocolError):
        pass
