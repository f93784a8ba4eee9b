"""Keys: the SMP master key, per-store data keys, wrapping, recovery keys.

* The **master key** (256 bit) lives in ``STATE/master.key``, mode 0600,
  owned by root. It never encrypts user data; it only wraps data keys.
* Each state store has its own random 256-bit **data key**. The SMP
  database keeps it only *wrapped* (AES-256-GCM under the master key, bound
  to the store id). Destroying the wrapped copy crypto-shreds the store.
* The **recovery key** an admin sees is the data key itself, printed as
  eight dash-separated groups of hex; with it ``smpfs recover`` opens a
  store straight from its storage folder.
* From the data key, HKDF derives the sub-keys actually used: one for file
  content (AES-256-GCM), one for names (AES-SIV, deterministic so lookups
  by name work), one for small metadata values (AES-256-GCM, random nonce).
"""
from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AuthenticationFailed, KeyFileError

KEY_BYTES = 32
MASTER_KEY_FILE = "master.key"
_WRAP_AD = b"smpfs-wrap-v1:"
BLOCK_SALT_BYTES = 16
_BLOCK_INFO = b"smpfs-v3:block"


# -- master key --------------------------------------------------------------

def create_master_key(path: Path) -> None:
    """Write a fresh master key; refuses to overwrite one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)


def load_master_key(path: Path) -> bytes:
    """Read the master key, refusing one that other users could read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"master key {path} is missing",
                           "restore it from your key backup; without it no store can be opened")
    except OSError as e:
        raise KeyFileError(f"cannot open master key {path}: {e.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"master key {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"master key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                f"run: chmod 600 {path}  (and consider the key compromised)")
        if st.st_uid != os.geteuid():
            raise KeyFileError(f"master key {path} is owned by uid {st.st_uid}, not {os.geteuid()}",
                               f"run: chown {os.geteuid()} {path}")
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise KeyFileError(f"master key {path} has {len(data)} bytes, expected {KEY_BYTES}",
                           "the file is damaged or not an smpfs key")
    return data


def key_id(master: bytes) -> str:
    """A fingerprint of a master key (safe to store: one-way), to tell which
    key ``smp.db`` is wrapped under."""
    return hmac.digest(master, b"smpfs-master-key-id", "sha256")[:16].hex()


# -- data keys ----------------------------------------------------------------

def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def wrap(master: bytes, store_id: str, data_key: bytes, *, nonce: bytes | None = None) -> bytes:
    """AEAD-wrap ``data_key`` under ``master``, bound to ``store_id``.
    (``nonce``: only for known-answer tests; by default a random one.)"""
    nonce = os.urandom(12) if nonce is None else nonce
    return nonce + AESGCM(master).encrypt(nonce, data_key, _WRAP_AD + store_id.encode())


def unwrap(master: bytes, store_id: str, wrapped: bytes) -> bytes:
    try:
        return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], _WRAP_AD + store_id.encode())
    except InvalidTag:
        raise KeyFileError(f"the key of store {store_id[:12]}… does not unwrap",
                           "the master key is not the one this SMP was created with")


def format_recovery_key(data_key: bytes) -> str:
    h = data_key.hex().upper()
    return "-".join(h[i:i + 8] for i in range(0, len(h), 8))


def parse_recovery_key(text: str) -> bytes:
    h = "".join(c for c in text if c not in "- \t\n")
    try:
        key = bytes.fromhex(h)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError("that is not a recovery key",
                           "a recovery key is 64 hex digits in 8 groups, as `smpfs key show` prints it")
    return key


# -- the keys one store uses ---------------------------------------------------

def _derive(data_key: bytes, label: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=b"smpfs-v1:" + label).derive(data_key)


@dataclass
class StoreKeys:
    """Sub-keys of one store's data key. Build with :meth:`from_data_key`."""

    store_id: bytes                      # 32 raw bytes of the 64-hex id
    content: AESGCM = field(repr=False)  # blocks of formats 1-2 (counter nonces)
    names: AESSIV = field(repr=False)
    meta: AESGCM = field(repr=False)
    blocks_prk: bytes = field(repr=False, default=b"")   # format 3 on: one key per sealed block
    meta_mac: bytes = field(repr=False, default=b"")     # format 4 on: MACs of store.db rows
    _block_keys: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_data_key(cls, store_id: str, data_key: bytes) -> StoreKeys:
        return cls(store_id=bytes.fromhex(store_id),
                   content=AESGCM(_derive(data_key, b"content", 32)),
                   names=AESSIV(_derive(data_key, b"names", 64)),
                   meta=AESGCM(_derive(data_key, b"meta", 32)),
                   blocks_prk=_derive(data_key, b"blocks", 32),
                   meta_mac=_derive(data_key, b"metamac", 32))

    # From format 3 on, every sealed block (every version of it) has a key of
    # its own: HKDF-Expand(PRK = blocks sub-key, info = "smpfs-v3:block" ||
    # salt, L = 32), with a random 128-bit ``salt`` kept in the block map. No
    # nonce depends on a counter surviving a crash or a rollback: two blocks
    # share a key only if two random salts collide.
    def block_aead(self, salt: bytes) -> AESGCM:
        aead = self._block_keys.get(salt)
        if aead is None:
            if len(salt) != BLOCK_SALT_BYTES:
                raise AuthenticationFailed(f"a block salt of {len(salt)} bytes")
            aead = AESGCM(hmac.digest(self.blocks_prk, _BLOCK_INFO + salt + b"\x01", "sha256"))
            if len(self._block_keys) >= 256:          # the blocks read and written just now
                self._block_keys.clear()
            self._block_keys[salt] = aead
        return aead

    # Names are encrypted deterministically (AES-SIV) with the parent inode
    # as associated data: equal names in one directory give equal
    # ciphertext, so the database can look a name up without knowing it.
    def seal_name(self, parent: int, name: bytes) -> bytes:
        return self.names.encrypt(name, [self.store_id, parent.to_bytes(8, "little")])

    def open_name(self, parent: int, blob: bytes) -> bytes:
        try:
            return self.names.decrypt(blob, [self.store_id, parent.to_bytes(8, "little")])
        except InvalidTag:
            raise AuthenticationFailed(f"a file name under inode {parent} fails authentication")

    # Small values (symlink targets, xattr values): random nonce, bound to
    # the inode and what the value is for.
    def seal_value(self, ino: int, purpose: bytes, value: bytes, *, nonce: bytes | None = None) -> bytes:
        nonce = os.urandom(12) if nonce is None else nonce          # (given: known-answer tests only)
        return nonce + self.meta.encrypt(nonce, value, self._ad(ino, purpose))

    def open_value(self, ino: int, purpose: bytes, blob: bytes) -> bytes:
        try:
            return self.meta.decrypt(blob[:12], blob[12:], self._ad(ino, purpose))
        except InvalidTag:
            raise AuthenticationFailed(f"metadata of inode {ino} fails authentication")

    def _ad(self, ino: int, purpose: bytes) -> bytes:
        return self.store_id + ino.to_bytes(8, "little") + purpose
