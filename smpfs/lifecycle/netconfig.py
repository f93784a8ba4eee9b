"""Network settings of an SMP: where the SMB and HTTPS services listen, and the
HTTPS certificate. Kept in smp.db's ``meta`` (``smb``, ``http``, ``tls_cert``,
``tls_key``); ``smpfs mount`` starts what is configured (smpfs.network). Off
by default: a plain mount serves nothing on the network.

A certificate the admin gives is used in place; otherwise one is made, self
signed, into ``STATE/tls/`` when HTTPS is first configured.
"""
from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

from ..crypto import tls
from ..errors import UsageError

TLS_DIR = "tls"


def parse_endpoint(text, what: str, default_addr: str | None = None) -> tuple[str, int] | None:
    """'off' -> None; 'ADDR:PORT', '[V6]:PORT' or (with a default address) 'PORT'."""
    s = str(text).strip()
    if s.lower() in ("off", "", "none", "no"):
        return None
    addr, sep, port = s.rpartition(":")
    if not sep:
        if default_addr is None:
            raise UsageError(f"{what} takes ADDR:PORT or off", f"e.g. {what} 0.0.0.0:8443")
        addr, port = default_addr, s
    addr = addr.strip("[]")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"{what}: bad port", "a port is a number from 1 to 65535")
    if not addr:
        raise UsageError(f"{what}: no address", f"e.g. {what} 0.0.0.0:{port}")
    return addr, int(port)


def format_endpoint(ep: tuple[str, int] | None) -> str:
    if ep is None:
        return ""
    addr, port = ep
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def smb_endpoint(smp) -> tuple[str, int] | None:
    return parse_endpoint(_get(smp, "smb"), "--smb-port", default_addr="0.0.0.0")


def http_endpoint(smp) -> tuple[str, int] | None:
    return parse_endpoint(_get(smp, "http"), "--http")


def tls_files(smp) -> tuple[Path, Path]:
    cert, key = _get(smp, "tls_cert"), _get(smp, "tls_key")
    if cert and key:
        return Path(cert), Path(key)
    d = smp.state_dir / TLS_DIR
    return d / "cert.pem", d / "key.pem"


def _get(smp, name: str) -> str:
    row = smp.query_one("SELECT value FROM meta WHERE key=?", (name,))
    return row["value"] if row else ""


def configure(smp, smb_port=None, http=None, tls_cert=None, tls_key=None) -> dict:
    """Validate and persist what is given; returns {setting: (old, new)} of what changed."""
    changed = {}
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("give --tls-cert and --tls-key together")
    if smb_port is not None:
        ep = parse_endpoint(smb_port, "--smb-port", default_addr="0.0.0.0")
        changed["smb"] = (_get(smp, "smb"), format_endpoint(ep))
    if http is not None:
        ep = parse_endpoint(http, "--http")
        changed["http"] = (_get(smp, "http"), format_endpoint(ep))
    if tls_cert is not None:
        cert, key = Path(tls_cert).absolute(), Path(tls_key).absolute()
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"cannot use {cert} with {key}: {e}",
                             "give a PEM certificate (chain) and its unencrypted PEM key")
        changed["tls_cert"] = (_get(smp, "tls_cert"), str(cert))
        changed["tls_key"] = (_get(smp, "tls_key"), str(key))
    for name, (_old, new) in changed.items():
        smp.set_setting(name, new)
    if http_endpoint(smp) is not None:
        ensure_certificate(smp)
    return changed


def ensure_certificate(smp) -> tuple[Path, Path]:
    """The certificate and key to serve; a self-signed pair is made if none is configured."""
    cert, key = tls_files(smp)
    if cert.exists() and key.exists():
        return cert, key
    if _get(smp, "tls_cert"):
        raise UsageError(f"the configured certificate {cert} or key {key} is missing",
                         "give them again with --tls-cert/--tls-key")
    cert.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(cert.parent, 0o700)
    names = [smp.setting("server"), socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    ep = http_endpoint(smp)
    if ep and ep[0] not in ("0.0.0.0", "::"):
        names.insert(0, ep[0])
    tls.self_signed(cert, key, [n for n in names if n])
    return cert, key


def describe(smp) -> dict:
    """For ``smpfs status``: {"smb": {"port", "address"}, "http": {"url", "certificate", "sha256"}}."""
    smb = smb_endpoint(smp)
    http = http_endpoint(smp)
    out = {"smb": {"port": smb[1] if smb else None, "address": smb[0] if smb else None},
           "http": {"url": None, "certificate": None, "sha256": None}}
    if http:
        addr, port = http
        host = smp.setting("server") if addr in ("0.0.0.0", "::") else addr
        host = f"[{host}]" if ":" in host else host
        cert, _key = tls_files(smp)
        out["http"] = {"url": f"https://{host}:{port}", "certificate": str(cert),
                       "sha256": tls.fingerprint(cert) if cert.exists() else None}
    return out
