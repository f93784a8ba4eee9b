"""Known-answer vectors: fixed keys, ids, counters and nonces give exactly
these bytes. A change of any byte layout (AD fields, their order, nonce
construction, purpose bytes, KDF labels, key wrapping) fails here, even
when the code that writes and the code that reads change together. A change
meant on purpose needs a new store format version and new vectors, with the
old ones kept for reading old stores. Metadata MACs (store format 4) are pinned too."""
from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from smpfs.crypto import chunk
from smpfs.crypto import keys as key
from smpfs.errors import IntegrityError

DATA_KEY = bytes(range(32))
MASTER = bytes(range(32, 64))
SID = bytes(range(64, 96)).hex()
SMALL = b"smpfs block vector " * 5
BIG = bytes(i % 251 for i in range(2 * chunk.CHUNK_SIZE + 10))

# format 1 and 2 blocks: nonce = counter (u64 BE) || chunk index (u32 BE)
BLOCK_SMALL_CTR = (
    "77cd71a5d36ec7e4b0d6d8784f605a4b0060189df7ee4750d6072cfdb6dcdf78fdcd3819577eb0a3120ddd56060790976d4c77b0"
    "6a56e1b48b03e1ca31416e809279043cea5a4bd4fe9e03fdc7077b5200ed31be9c83ffe3175d8de2d8b1be1788108bf5d7e36a30"
    "6c1115c2295074")
BLOCK_3CHUNKS_CTR_SHA256 = "e1c2cea907d2d2bc9e05eb7e8aba6b53e9754ceee43726110fc915e958047d2d"
# format 3 on: a key per block version from its salt, nonce = 0^8 || chunk index (u32 BE)
SALT = bytes(range(16))
BLOCK_SMALL_SALT = (
    "88c76a49d5991d3faf444eb98af139ffc7e71275ae900e8db35b513b9755961c50ceb7a07677333d1cd760b47993fa5ef03695c2"
    "c410ca310a7929959a7fd1fce4d0bfb086d78ec9a519b3b48c43a6d188598ad96ad9b6e9306e8a6b4099c9492bde67b83990043569"
    "a5f6c4c291bd")
NAME = "22a96717eccc5840bb76d49493b6e164b3f22504b08838368d301b"
XATTR_NAME = "0e139b42388586aebbe6d3771bec3d51d9f33ee907fb"
XATTR_VALUE = "6465666768696a6b6c6d6e6faa0bed81873ee9654c8ee3475a208029a8f1e43e5bcdb2b189"
LINK_TARGET = "c8c9cacbcccdcecfd0d1d2d3126c659e25dcaf1d6c4342e38b871f7fc13a54c6998eb1f478"
WRAPPED = ("000000000000000000000000e32fe35a905a625ec050ee496ab2016f7c256515b53c139baa2636bdf0ec81e9"
           "f1fee6122a11233accdd694ad37db809")


@pytest.fixture
def keys():
    return key.StoreKeys.from_data_key(SID, DATA_KEY)


def test_counter_block_sealing_known_answer(keys):
    sealed = chunk.encrypt_block(keys.content, keys.store_id, 5, 2, 0x0102030405, SMALL)
    assert bytes(sealed).hex() == BLOCK_SMALL_CTR
    big = chunk.encrypt_block(keys.content, keys.store_id, 9, 0, 77, BIG)
    assert hashlib.sha256(big).hexdigest() == BLOCK_3CHUNKS_CTR_SHA256
    assert chunk.decrypt_chunks(keys.content, keys.store_id, 5, 2, 0x0102030405, len(SMALL), 0,
                                bytes.fromhex(BLOCK_SMALL_CTR)) == SMALL


def test_counter_block_layout_is_the_documented_one():
    """Rebuilt from docs/architecture.md with nothing but the primitives."""
    content = HKDF(hashes.SHA256(), 32, salt=None, info=b"smpfs-v1:content").derive(DATA_KEY)
    sid = bytes.fromhex(SID)
    ad = b"smpfsB1\0" + sid + struct.pack("<QQIB", 5, 2, 0, 1)
    nonce = (0x0102030405).to_bytes(8, "big") + (0).to_bytes(4, "big")
    assert AESGCM(content).encrypt(nonce, SMALL, ad).hex() == BLOCK_SMALL_CTR


def test_salted_block_sealing_known_answer(keys):
    sealed = chunk.encrypt_block(keys.block_aead(SALT), keys.store_id, 5, 2, 0, SMALL)
    assert bytes(sealed).hex() == BLOCK_SMALL_SALT
    assert chunk.decrypt_chunks(keys.block_aead(SALT), keys.store_id, 5, 2, 0, len(SMALL), 0,
                                bytes.fromhex(BLOCK_SMALL_SALT)) == SMALL
    # rebuilt from the documented construction: HKDF-Expand of the blocks sub-key
    prk = HKDF(hashes.SHA256(), 32, salt=None, info=b"smpfs-v1:blocks").derive(DATA_KEY)
    block_key = hmac.digest(prk, b"smpfs-v3:block" + SALT + b"\x01", "sha256")
    assert block_key == HKDFExpand(hashes.SHA256(), 32, b"smpfs-v3:block" + SALT).derive(prk)
    ad = b"smpfsB1\0" + bytes.fromhex(SID) + struct.pack("<QQIB", 5, 2, 0, 1)
    assert AESGCM(block_key).encrypt(bytes(12), SMALL, ad).hex() == BLOCK_SMALL_SALT


def test_name_sealing_known_answer(keys):
    assert keys.seal_name(7, b"report.docx").hex() == NAME
    assert keys.open_name(7, bytes.fromhex(NAME)) == b"report.docx"
    names = HKDF(hashes.SHA256(), 64, salt=None, info=b"smpfs-v1:names").derive(DATA_KEY)
    assert AESSIV(names).encrypt(b"report.docx", [bytes.fromhex(SID), (7).to_bytes(8, "little")]).hex() == NAME
    with pytest.raises(IntegrityError):
        keys.open_name(8, bytes.fromhex(NAME))


def test_xattr_and_symlink_sealing_known_answer(keys):
    assert keys.seal_name(-12 & 0xFFFFFFFFFFFFFFFF, b"user.k").hex() == XATTR_NAME
    xv = keys.seal_value(12, b"xv" + b"user.k", b"the value", nonce=bytes(range(100, 112)))
    assert xv.hex() == XATTR_VALUE
    assert keys.open_value(12, b"xvuser.k", bytes.fromhex(XATTR_VALUE)) == b"the value"
    lt = keys.seal_value(13, b"lt", b"../target", nonce=bytes(range(200, 212)))
    assert lt.hex() == LINK_TARGET
    meta = HKDF(hashes.SHA256(), 32, salt=None, info=b"smpfs-v1:meta").derive(DATA_KEY)
    ad = bytes.fromhex(SID) + (13).to_bytes(8, "little") + b"lt"
    assert bytes(range(200, 212)) + AESGCM(meta).encrypt(bytes(range(200, 212)), b"../target", ad) == lt
    with pytest.raises(IntegrityError):
        keys.open_value(14, b"lt", lt)


def test_key_wrapping_known_answer():
    assert key.wrap(MASTER, SID, DATA_KEY, nonce=bytes(12)).hex() == WRAPPED
    assert key.unwrap(MASTER, SID, bytes.fromhex(WRAPPED)) == DATA_KEY
    ad = b"smpfs-wrap-v1:" + SID.encode()
    assert bytes(12) + AESGCM(MASTER).encrypt(bytes(12), DATA_KEY, ad) == bytes.fromhex(WRAPPED)


def test_metadata_macs_known_answer(keys):
    from smpfs.store.metamac import MetaMac
    m = MetaMac(keys.meta_mac, keys.store_id)
    inode = m.inode((5, 0o100644, 1000, 1001, 1, 4096, 0, 1, 2, 3), 1)
    dentry = m.dentry(1, b"sealed-name", 5)
    block = m.block(5, 0, 7, 4096, SALT)
    assert inode.hex() == "a771a6f3d64b1528391311b81f224b95"
    assert dentry.hex() == "571392eb56c0a158ef5eb894f64f2bd2"
    assert block.hex() == "e8fbdc3561070770b7e7d441b617ee7e"
    assert m.block(5, 1, 8, 100, None).hex() == "3a6d0b3e148d503c34d4548b5a3959fd"
    # rebuilt from docs/architecture.md (Metadata MACs)
    k = HKDF(hashes.SHA256(), 32, salt=None, info=b"smpfs-v1:metamac").derive(DATA_KEY)
    sid = bytes.fromhex(SID)

    def mac(msg):
        return hashlib.blake2b(msg, key=k, digest_size=16).digest()
    assert mac(b"smpfsI4\0" + sid + struct.pack("<QIIIqQQqqqQ", 5, 0o100644, 1000, 1001, 1, 4096,
                                                0, 1, 2, 3, 1)) == inode
    assert mac(b"smpfsD4\0" + sid + struct.pack("<QQ", 1, 5) + b"sealed-name") == dentry
    assert mac(b"smpfsK4\0" + sid + struct.pack("<QQQQ", 5, 0, 7, 4096) + SALT) == block
