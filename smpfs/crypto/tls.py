"""The HTTPS endpoint's certificate: a self-signed one when the admin gives
none, and the SHA-256 fingerprint clients pin (``smpfs client --sha256``)."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(cert_path: Path, key_path: Path, names: list[str], days: int = 3650) -> None:
    """Write a self-signed ECDSA P-256 certificate for ``names`` (DNS names or IP
    addresses) and its key (mode 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smpfs State Migration Point")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate (DER), as colon-separated upper-case hex."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return format_fingerprint(cert.fingerprint(hashes.SHA256()))


def format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def normalize_fingerprint(text: str) -> str:
    """Accept AB:CD:…, abcd… or AB CD …; return AB:CD:… (raises ValueError)."""
    h = "".join(c for c in text if c not in ": ").lower()
    raw = bytes.fromhex(h)
    if len(raw) != 32:
        raise ValueError("a SHA-256 fingerprint has 32 bytes")
    return format_fingerprint(raw)
