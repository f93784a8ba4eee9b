"""The client side of the HTTPS API, for computers that are not the SMP host.

Standard library only (``http.client``, ``ssl``): it needs no root, no FUSE
and nothing of the SMP's state, so it runs on any Linux client or CI job.
:class:`SmpClient` talks to one SMP; :func:`run_step` adds the retries. A
site of several SMPs picks among :class:`SmpClient` objects and calls
:func:`run_step` on each in turn (``on_event`` tells it what happened).

Refusals come back as the same SmpError classes, with the same exit codes,
as the local commands; an SMP that cannot be reached is NotMountedError (6).
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import time
import urllib.parse

from .. import errors
from ..crypto.tls import format_fingerprint, normalize_fingerprint

STEPS = {("request", "capture"), ("release", "capture"), ("request", "restore"), ("release", "restore")}


class ServerBusy(errors.SmpError):
    """The SMP was too busy to answer (HTTP 503, ServerBusy): worth asking again."""


def error_from_wire(d: dict) -> errors.SmpError:
    cls = {"ServerBusy": ServerBusy}.get(str(d.get("type", ""))) or getattr(errors, str(d.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.SmpError)):
        cls = errors.SmpError
    e = cls(str(d.get("message", "unknown error from the SMP")), d.get("hint"))
    if cls is errors.SmpError and isinstance(d.get("exit_code"), int):
        e.exit_code = d["exit_code"]
    return e


class Unreachable(errors.NotMountedError):
    """The SMP did not answer (connection refused, timeout, TLS failure)."""


class SmpClient:
    """One SMP's HTTPS API, as one computer."""

    def __init__(self, url: str, computer: str, secret: str, cacert: str | None = None,
                 sha256: str | None = None, timeout: float = 60.0):
        u = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
        if u.scheme != "https" or not u.hostname:
            raise errors.UsageError("--smp takes https://HOST[:PORT]")
        self.url, self.host, self.port = url, u.hostname, u.port or 443
        self.computer, self.secret = computer, secret.strip()
        self.timeout = timeout
        self.pin = None
        if sha256:
            try:
                self.pin = normalize_fingerprint(sha256)
            except ValueError as e:
                raise errors.UsageError(f"--sha256: {e}", "give the fingerprint `smpfs status` shows")
        if self.pin:
            # the pinned fingerprint is the trust: any chain, any name, this exact certificate
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        else:
            try:
                self.ctx = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as e:
                raise errors.UsageError(f"--cacert {cacert}: {e}")
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    def _connect(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.ctx)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as e:
            conn.close()
            raise errors.PermissionDenied(f"the SMP's certificate is not trusted: {e.verify_message}",
                                          "give --cacert FILE or --sha256 FINGERPRINT (smpfs status shows it)")
        except (OSError, ssl.SSLError) as e:
            conn.close()
            raise Unreachable(f"cannot reach the SMP at {self.url}: {e}", "is it mounted, with --http on?")
        if self.pin:
            der = conn.sock.getpeercert(binary_form=True)
            got = format_fingerprint(hashlib.sha256(der).digest())
            if got != self.pin:
                conn.close()
                raise errors.PermissionDenied(f"the SMP's certificate fingerprint is {got}, not the pinned one",
                                              "check --sha256 against `smpfs status` on the SMP")
        return conn

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One API call; its ``result``, or the SmpError it was refused with."""
        data = json.dumps(body or {}).encode() if method == "POST" else None
        token = base64.b64encode(f"{self.computer}:{self.secret}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = self._connect()
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(4 << 20)
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"the SMP at {self.url} did not answer: {e}")
        finally:
            conn.close()
        try:
            msg = json.loads(raw)
        except ValueError:
            raise errors.SmpError(f"the SMP answered {resp.status} with no JSON")
        if resp.status == 200 and msg.get("ok"):
            return msg.get("result") or {}
        raise error_from_wire(msg.get("error") or {"message": f"HTTP {resp.status}"})

    def step(self, action: str, kind: str, computer: str | None = None) -> dict:
        if (action, kind) not in STEPS:
            raise errors.UsageError(f"no such step: {action} {kind}")
        result = self.call("POST", f"/v1/{action}/{kind}", {"computer": computer or self.computer})
        if result.get("unc"):
            result["smb_url"] = self.smb_url(result)
        return result

    def info(self) -> dict:
        return self.call("GET", "/v1/info")

    def certificate(self) -> str:
        """Connect (checking the certificate as every call does) and return the
        SHA-256 fingerprint of the certificate the SMP showed; sends no request."""
        conn = self._connect()
        try:
            return format_fingerprint(hashlib.sha256(conn.sock.getpeercert(binary_form=True)).digest())
        finally:
            conn.close()

    def smb_url(self, result: dict) -> str:
        """smb://HOST[:PORT]/SHARE/ID for the UNC path in ``result``: the host is the
        one this client reached the SMP by, the port the SMP's SMB port."""
        parts = [p for p in result["unc"].split("\\") if p]
        port = (result.get("smb") or {}).get("port")
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{host}:{port}" if port and port != 445 else host
        return "smb://" + where + "/" + "/".join(urllib.parse.quote(p, safe="$") for p in parts[1:])


#: refusals worth asking again for: the SMP may get room, or come back
RETRYABLE = (errors.NoStorageRoom, Unreachable, ServerBusy)


def run_step(client: SmpClient, action: str, kind: str, retries: int = 0, retry_delay: float = 0.0,
             on_event=None, sleep=time.sleep) -> dict:
    """``client.step`` with up to ``retries`` more attempts on a retryable refusal."""
    for attempt in range(int(retries) + 1):
        try:
            result = client.step(action, kind)
            if on_event:
                on_event({"smp": client.url, "attempt": attempt + 1, "outcome": "ok"})
            return result
        except RETRYABLE as e:
            if on_event:
                on_event({"smp": client.url, "attempt": attempt + 1, "outcome": type(e).__name__,
                          "message": e.message})
            if attempt >= int(retries):
                raise
            sleep(float(retry_delay))
    raise AssertionError("unreachable")


def read_secret(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as e:
        raise errors.UsageError(f"cannot read the secret file {path}: {e.strerror}")
    if not value:
        raise errors.UsageError(f"the secret file {path} is empty")
    return value


__all__ = ["SmpClient", "run_step", "read_secret", "Unreachable"]
