"""Computer secrets: making them, wrapping them, and their verifiers.

A computer's secret is 192 random bits, written as 32 URL-safe base64
characters. The SMP keeps it wrapped under the master key (so
``smpfs computer secret`` can show it again) and a **verifier** of it:

* for HTTPS, ``sha256$SALT$HMAC-SHA256(SALT, secret)``: the secret has far
  more entropy than any password, so one keyed hash is enough (no slow KDF
  needed), and checking it needs no key at all;
* for SMB, Samba's NT hash (MD4 of the UTF-16LE secret), which Samba's passdb
  must hold. It is password-equivalent *for NTLM*: whoever reads it can log
  on over SMB as that computer. It is only ever written to the SMB service's
  root-only passdb, never to smp.db or a log.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRET_BYTES = 24                       # 192 bits
_WRAP_AD = b"smpfs-secret-v1:"


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def make_verifier(secret: str) -> str:
    salt = secrets.token_bytes(16)
    mac = hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()
    return f"sha256${salt.hex()}${mac}"


def check_verifier(verifier: str | None, secret: str) -> bool:
    """Constant-time check of ``secret`` against a stored verifier."""
    try:
        scheme, salt_hex, mac_hex = (verifier or "").split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != "sha256":
        return False
    mac = hmac.new(salt, secret.encode(errors="surrogateescape"), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, mac_hex)


def wrap_secret(master: bytes, name: str, secret: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(master).encrypt(nonce, secret.encode(), _WRAP_AD + name.lower().encode())


def unwrap_secret(master: bytes, name: str, wrapped: bytes) -> str:
    wrapped = bytes(wrapped)
    return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], _WRAP_AD + name.lower().encode()).decode()


def nt_hash(secret: str) -> str:
    """Samba's NT hash of ``secret``: MD4(UTF-16LE), upper-case hex."""
    return md4(secret.encode("utf-16-le")).hex().upper()


def md4(data: bytes) -> bytes:
    """MD4 (RFC 1320). OpenSSL 3 no longer offers it, and NTLM needs it."""
    def rol(x: int, n: int) -> int:
        x &= 0xFFFFFFFF
        return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF

    msg = data + b"\x80" + b"\0" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    for off in range(0, len(msg), 64):
        x = struct.unpack("<16I", msg[off:off + 64])
        a, b, c, d = h
        for i in range(16):                                   # round 1
            k, s = i, (3, 7, 11, 19)[i % 4]
            a, b, c, d = d, rol(a + ((b & c) | (~b & d)) + x[k], s), b, c
        for i in range(16):                                   # round 2
            k, s = (i % 4) * 4 + i // 4, (3, 5, 9, 13)[i % 4]
            a, b, c, d = d, rol(a + ((b & c) | (b & d) | (c & d)) + x[k] + 0x5A827999, s), b, c
        for i in range(16):                                   # round 3
            k = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)[i]
            s = (3, 9, 11, 15)[i % 4]
            a, b, c, d = d, rol(a + (b ^ c ^ d) + x[k] + 0x6ED9EBA1, s), b, c
        h = [(v + w) & 0xFFFFFFFF for v, w in zip(h, (a, b, c, d), strict=True)]
    return struct.pack("<4I", *h)
