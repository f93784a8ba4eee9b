"""The crypto and metadata layers on their own (no FUSE, no daemon).

StateStore, chunk and key are used directly on a store in a temp dir:
nonce uniqueness under rewrites (across close/reopen and a crash),
truncation detection, associated-data binding, recovery keys, key wrapping,
name checks, and a random model test of the store's file content.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smpfs.crypto import chunk
from smpfs.crypto import keys as key
from smpfs.crypto.chunk import BLOCK_SIZE, CHUNK_SIZE, TAG_SIZE, BlockAuthError
from smpfs.errors import IntegrityError, KeyFileError
from smpfs.store import counter, layout
from smpfs.store.layout import ROOT
from smpfs.store.statestore import StateStore

MiB = 1 << 20


@pytest.fixture
def new_store(tmp_path):
    """A fresh store; returns (path, keys)."""
    sid = os.urandom(32).hex()
    keys = key.StoreKeys.from_data_key(sid, key.new_data_key())
    path = layout.create_store(tmp_path, sid, keys, owner_uid=1000)
    return path, keys


def _open(path, keys) -> StateStore:
    return StateStore(path, keys)


def _new_file(st: StateStore, name: bytes, parent: int = ROOT) -> int:
    return st.mknode(parent, name, stat.S_IFREG | 0o644, 1000, 1000).ino


def _lookup(st: StateStore, name: bytes) -> int:
    return st.lookup(ROOT, name)


# -- nonces -----------------------------------------------------------------------------

class CounterWatch:
    """Every sealed block that exists anywhere in the store right now, as
    {counter: sha256 of its ciphertext}: block files on disk (kept until the
    next durable point even when superseded) and inline blocks in store.db.
    Observed after every operation, a counter seen with two different
    ciphertexts is a nonce used twice."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: dict[int, bytes] = {}

    def observe(self, st: StateStore | None = None) -> int:
        new = 0
        found = {}
        b = self.path / "b"
        for sub in os.listdir(b):
            for n in os.listdir(b / sub):
                found[int(n, 16)] = hashlib.sha256((b / sub / n).read_bytes()).digest()
        if st is not None:
            for ctr, data in st.db.execute("SELECT counter, data FROM blocks WHERE data IS NOT NULL"):
                found[ctr] = hashlib.sha256(data).digest()
        for ctr, h in found.items():
            old = self.seen.get(ctr)
            assert old is None or old == h, f"counter {ctr} sealed two different blocks: nonce reuse"
            if old is None:
                self.seen[ctr] = h
                new += 1
        return new


def test_nonce_never_repeats_under_rewrites_reopen_and_crash(new_store):
    path, keys = new_store
    watch = CounterWatch(path)
    rnd = random.Random(11)
    written = 0

    def session(st: StateStore, ino: int, rounds: int):
        nonlocal written
        before = st.blocks_written
        for r in range(rounds):
            kind = r % 4
            if kind == 0:       # a whole block, straight out
                st.write(ino, 0, rnd.randbytes(BLOCK_SIZE))
            elif kind == 1:     # a partial rewrite of the same block, flushed
                st.write(ino, rnd.randrange(0, BLOCK_SIZE - 100), rnd.randbytes(100))
                st.flush_inode(ino)
            elif kind == 2:     # the same block after an fsync (superseded files are unlinked)
                st.write(ino, 10, b"x" * 5000)
                st.fsync(ino)
                st.sync()
            else:               # a small block kept inline in store.db, rewritten
                small = _lookup(st, b"small")
                st.write(small, 0, rnd.randbytes(rnd.randrange(1, 4000)))
                st.flush_inode(small)
            watch.observe(st)
        st.flush_all()
        watch.observe(st)
        written += st.blocks_written - before

    st = _open(path, keys)
    ino = _new_file(st, b"f")
    _new_file(st, b"small")
    session(st, ino, 40)
    st.close()
    for _ in range(2):                   # close and reopen: counters continue, never restart
        st = _open(path, keys)
        session(st, ino, 20)
        st.close()
    # a crash: blocks written (their files exist) but nothing committed or closed
    st = _open(path, keys)
    session(st, ino, 12)
    st.abandon()
    st = _open(path, keys)
    session(st, ino, 12)
    st.close()
    assert written >= 100
    assert len(watch.seen) == written, \
        f"{written} blocks sealed but {len(watch.seen)} distinct counters observed"


def test_counter_reservation_is_durable_before_use(new_store):
    """After a crash, the next counter is above every counter handed out before."""
    path, keys = new_store
    st = _open(path, keys)
    ino = _new_file(st, b"f")
    for i in range(5):
        st.write(ino, i * BLOCK_SIZE, os.urandom(BLOCK_SIZE))
    used = max(int(n, 16) for sub in os.listdir(path / "b") for n in os.listdir(path / "b" / sub))
    st.abandon()                          # nothing committed: the block map never saw them
    st = _open(path, keys)
    ino = _new_file(st, b"g")
    st.write(ino, 0, os.urandom(BLOCK_SIZE))
    (ctr,) = st.db.execute("SELECT counter FROM blocks WHERE ino=?", (ino,)).fetchone()
    assert ctr > used
    st.close()


def test_a_damaged_or_lost_counter_file_costs_nothing(new_store):
    """Counters only name block files: a store whose counter record is damaged
    or gone opens, reads, and writes above every counter its block map holds,
    each block version under a key of its own."""
    path, keys = new_store
    st = _open(path, keys)
    ino = _new_file(st, b"f")
    data = os.urandom(BLOCK_SIZE)
    st.write(ino, 0, data)
    st.write(ino, 0, os.urandom(BLOCK_SIZE))      # supersede: counter 1's file goes at the sync
    st.write(ino, 0, data)
    st.close()
    for damage in ("garbage\n", None):
        if damage is None:
            (path / counter.COUNTER_FILE).unlink()
        else:
            (path / counter.COUNTER_FILE).write_text(damage)
        st = _open(path, keys)
        assert st.read(ino, 0, BLOCK_SIZE) == data
        before = st.db.execute("SELECT max(counter) FROM blocks").fetchone()[0]
        st.write(ino, BLOCK_SIZE, os.urandom(BLOCK_SIZE))
        assert st.db.execute("SELECT counter FROM blocks WHERE blkno=1").fetchone()[0] > before
        assert st.read(ino, 0, BLOCK_SIZE) == data
        st.close()
    salts = [r[0] for r in _open(path, keys).db.execute("SELECT salt FROM blocks")]
    assert len(salts) == 2 and None not in salts and len(set(salts)) == 2


def _versions(path: Path, st: StateStore) -> dict[int, tuple[bytes, bytes]]:
    """Every block version stored now: counter -> (salt, ciphertext)."""
    out = {}
    for ctr, salt, data in st.db.execute("SELECT counter, salt, data FROM blocks"):
        out[ctr] = (salt, data if data is not None else Path(st.block_path(ctr)).read_bytes())
    return out


def test_rolling_back_the_state_dir_never_repeats_a_key_and_nonce(new_store):
    """The attack: put back an older store.db, counter file and smp.db record
    (what restoring a backup of the state dir does), then write again. The
    counters handed out after the backup are handed out again, but no block is
    sealed twice under one key and nonce: the two ciphertexts of a reissued
    counter do not XOR to the XOR of their plaintexts."""
    path, keys = new_store
    smp_db = [0]                                       # smp.db's nonce_hwm

    def session(content: dict[bytes, bytes]) -> dict[int, tuple[bytes, bytes]]:
        st = StateStore(path, keys, min_counter=smp_db[0], on_reserve=lambda n: smp_db.__setitem__(0, n))
        for name, data in content.items():
            try:
                ino = st.lookup(ROOT, name)
            except OSError:
                ino = _new_file(st, name)
            st.write(ino, 0, data)
        st.sync()
        got = _versions(path, st)
        st.close()
        return got

    session({b"f": os.urandom(200_000), b"g": os.urandom(100)})
    backup = {n: (path / n).read_bytes() for n in ("store.db", counter.COUNTER_FILE)}
    backup.update({str(f.relative_to(path)): f.read_bytes() for f in (path / "b").rglob("*") if f.is_file()})
    backup_hwm = smp_db[0]
    p2 = {b"f": os.urandom(200_000), b"g": os.urandom(100)}
    v2 = session(p2)
    # the restore of the backup (files written since stay, as a plain copy back leaves them)
    for n, raw in backup.items():
        (path / n).write_bytes(raw)
    for suffix in ("-wal", "-shm"):
        (path / f"store.db{suffix}").unlink(missing_ok=True)
    smp_db[0] = backup_hwm
    p3 = {b"f": os.urandom(200_000), b"g": os.urandom(100)}
    v3 = session(p3)
    reissued = set(v2) & set(v3)
    assert len(reissued) >= 2, "the rollback did not reissue counters: the attack was not reproduced"
    for ctr in reissued:
        (s2, c2), (s3, c3) = v2[ctr], v3[ctr]
        assert s2 is not None and s3 is not None and s2 != s3, f"counter {ctr}: one key twice"
        n = min(len(c2), len(c3)) - chunk.TAG_SIZE
        pt2 = next(d for d in p2.values() if chunk.stored_size(len(d)) == len(c2))
        pt3 = next(d for d in p3.values() if chunk.stored_size(len(d)) == len(c3))
        xor_ct = bytes(a ^ b for a, b in zip(c2[:n], c3[:n], strict=True))
        xor_pt = bytes(a ^ b for a, b in zip(pt2[:n], pt3[:n], strict=True))
        assert xor_ct != xor_pt, f"counter {ctr}: keystream reused"
    # and everything after the restore reads back
    st = _open(path, keys)
    for name, data in p3.items():
        assert st.read(st.lookup(ROOT, name), 0, len(data) + 1) == data
    st.close()


# -- truncation and AD binding ----------------------------------------------------------------

SID = bytes(range(32))


def _aead():
    return AESGCM(os.urandom(32))


def test_no_two_chunks_share_a_nonce():
    """Equal plaintext in every chunk of a block, and of two blocks: under
    GCM, a repeated (key, nonce) would give equal ciphertext. None is equal."""
    aead, sid = _aead(), os.urandom(32)
    plain = bytes(CHUNK_SIZE) * 8
    seen = set()
    for ctr in (1, 2):
        sealed = chunk.encrypt_block(aead, sid, 5, 0, ctr, plain)
        for i in range(8):
            c = bytes(sealed[chunk.chunk_offset(i):chunk.chunk_offset(i) + CHUNK_SIZE])
            assert c not in seen, f"chunk {i} of the block sealed with counter {ctr} repeats a keystream"
            seen.add(c)


def test_chunk_roundtrip_and_sizes():
    aead = _aead()
    for n in (1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5, BLOCK_SIZE):
        data = os.urandom(n)
        sealed = chunk.encrypt_block(aead, SID, 7, 3, 99, data)
        assert len(sealed) == chunk.stored_size(n) == n + chunk.nchunks(n) * TAG_SIZE
        assert chunk.decrypt_chunks(aead, SID, 7, 3, 99, n, 0, sealed) == data
        # any chunk on its own
        last = chunk.nchunks(n) - 1
        start = chunk.chunk_offset(last)
        assert chunk.decrypt_chunks(aead, SID, 7, 3, 99, n, last, sealed[start:]) == data[last * CHUNK_SIZE:]
    assert data not in sealed and data[:64] not in sealed


def test_truncation_is_detected():
    aead = _aead()
    n = 3 * CHUNK_SIZE + 100
    data = os.urandom(n)
    sealed = chunk.encrypt_block(aead, SID, 7, 0, 5, data)
    # bytes missing from the end, inside the last chunk (a cut on a chunk boundary
    # cannot be seen here, the caller knows how many bytes it asked for: see below)
    for cut in (1, TAG_SIZE, 99 + TAG_SIZE):
        with pytest.raises(BlockAuthError):
            chunk.decrypt_chunks(aead, SID, 7, 0, 5, n, 0, sealed[:-cut])
    # whole chunks dropped, with a length that claims the block was always that short:
    # the chunk that was not last was sealed as "not last"
    for keep in (1, 2, 3):
        short = keep * CHUNK_SIZE
        with pytest.raises(BlockAuthError):
            chunk.decrypt_chunks(aead, SID, 7, 0, 5, short, 0, sealed[:chunk.chunk_offset(keep)])


def test_truncated_block_file_reads_as_eio(new_store):
    path, keys = new_store
    st = _open(path, keys)
    ino = _new_file(st, b"f")
    data = os.urandom(3 * CHUNK_SIZE + 1000)
    st.write(ino, 0, data)
    st.close()
    blocks = [p for p in (path / "b").rglob("*") if p.is_file()]
    assert len(blocks) == 1
    raw = blocks[0].read_bytes()
    st = _open(path, keys)
    assert st.read(ino, 0, len(data)) == data
    st.close()
    for cut in (chunk.chunk_offset(3), chunk.chunk_offset(2), len(raw) - 1):
        blocks[0].write_bytes(raw[:cut])
        st = _open(path, keys)
        with pytest.raises(OSError) as e:
            st.read(ino, 0, len(data))
        assert e.value.errno == errno.EIO
        st.close()


def test_associated_data_binds_store_inode_block_counter_and_position():
    aead = _aead()
    data = os.urandom(2 * CHUNK_SIZE + 10)
    n = len(data)
    sealed = chunk.encrypt_block(aead, SID, 7, 3, 99, data)
    assert chunk.decrypt_chunks(aead, SID, 7, 3, 99, n, 0, sealed) == data
    other_sid = bytes(31) + b"\x01"
    for args in [(other_sid, 7, 3, 99), (SID, 8, 3, 99), (SID, 7, 4, 99), (SID, 7, 3, 100)]:
        with pytest.raises(BlockAuthError):
            chunk.decrypt_chunks(aead, *args, n, 0, sealed)
    with pytest.raises(BlockAuthError):                     # another key
        chunk.decrypt_chunks(_aead(), SID, 7, 3, 99, n, 0, sealed)
    # chunks reordered inside the block
    c0 = sealed[:chunk.chunk_offset(1)]
    c1 = sealed[chunk.chunk_offset(1):chunk.chunk_offset(2)]
    with pytest.raises(BlockAuthError):
        chunk.decrypt_chunks(aead, SID, 7, 3, 99, n, 0, c1 + c0 + sealed[chunk.chunk_offset(2):])
    # a chunk presented as another index
    with pytest.raises(BlockAuthError):
        chunk.decrypt_chunks(aead, SID, 7, 3, 99, n, 1, c0)
    # a flipped bit anywhere
    for pos in (0, 100, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[pos] ^= 1
        with pytest.raises(BlockAuthError):
            chunk.decrypt_chunks(aead, SID, 7, 3, 99, n, 0, bytes(bad))


def test_names_and_values_are_bound_to_their_place():
    sid = os.urandom(32).hex()
    dk = key.new_data_key()
    k = key.StoreKeys.from_data_key(sid, dk)
    sealed = k.seal_name(5, b"report.docx")
    assert b"report" not in sealed
    assert k.open_name(5, sealed) == b"report.docx"
    assert k.seal_name(5, b"report.docx") == sealed            # deterministic: lookups work
    assert k.seal_name(6, b"report.docx") != sealed
    with pytest.raises(IntegrityError):
        k.open_name(6, sealed)                                 # moved to another directory
    other = key.StoreKeys.from_data_key(os.urandom(32).hex(), dk)
    with pytest.raises(IntegrityError):
        other.open_name(5, sealed)                             # another store, even with the same key
    v = k.seal_value(9, b"xv" + b"user.k", b"secret value")
    assert b"secret" not in v and k.seal_value(9, b"xv" + b"user.k", b"secret value") != v
    assert k.open_value(9, b"xv" + b"user.k", v) == b"secret value"
    for ino, purpose in [(10, b"xv" + b"user.k"), (9, b"xv" + b"user.j"), (9, b"lt")]:
        with pytest.raises(IntegrityError):
            k.open_value(ino, purpose, v)


# -- keys ------------------------------------------------------------------------------

def test_recovery_key_format_roundtrip():
    for _ in range(20):
        dk = key.new_data_key()
        text = key.format_recovery_key(dk)
        groups = text.split("-")
        assert len(groups) == 8 and all(len(g) == 8 for g in groups)
        assert all(c in "0123456789ABCDEF" for c in "".join(groups))
        assert key.parse_recovery_key(text) == dk
        assert key.parse_recovery_key(text.lower()) == dk
        assert key.parse_recovery_key("  " + text.replace("-", " ") + "\n") == dk
        assert key.parse_recovery_key(dk.hex()) == dk
    good = key.format_recovery_key(bytes(range(32)))
    for bad in ("", good[:-1], good + "0", good.replace("0", "G", 1), "not a key", good[:-2] + "-"):
        with pytest.raises(KeyFileError):
            key.parse_recovery_key(bad)


def test_wrap_and_unwrap():
    master, sid, dk = os.urandom(32), os.urandom(32).hex(), key.new_data_key()
    w = key.wrap(master, sid, dk)
    assert dk not in w
    assert key.unwrap(master, sid, w) == dk
    assert key.wrap(master, sid, dk) != w                       # a fresh nonce each time
    with pytest.raises(KeyFileError):
        key.unwrap(os.urandom(32), sid, w)                     # the wrong master key
    with pytest.raises(KeyFileError):
        key.unwrap(master, os.urandom(32).hex(), w)            # bound to its store
    for pos in (0, 13, len(w) - 1):
        bad = bytearray(w)
        bad[pos] ^= 0x20
        with pytest.raises(KeyFileError):
            key.unwrap(master, sid, bytes(bad))


def test_master_key_file(tmp_path):
    p = tmp_path / "master.key"
    key.create_master_key(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    k = key.load_master_key(p)
    assert len(k) == 32
    with pytest.raises(FileExistsError):
        key.create_master_key(p)                               # never overwritten
    assert key.load_master_key(p) == k
    for mode in (0o644, 0o604, 0o640):
        os.chmod(p, mode)
        with pytest.raises(KeyFileError):
            key.load_master_key(p)                             # readable by others: refused
    os.chmod(p, 0o600)
    p.write_bytes(k[:31])
    with pytest.raises(KeyFileError):
        key.load_master_key(p)


# -- names and the store's content --------------------------------------------------------

def test_check_name():
    layout.check_name(b"n" * 255)
    for bad, code in [(b"n" * 256, errno.ENAMETOOLONG), (b"a/b", errno.EINVAL), (b"a\0b", errno.EINVAL),
                      (b"", errno.EINVAL)]:
        with pytest.raises(OSError) as e:
            layout.check_name(bad)
        assert e.value.errno == code, bad


def test_store_refuses_bad_names_itself(new_store):
    path, keys = new_store
    st = _open(path, keys)
    ino = _new_file(st, b"f")
    for bad, code in [(b"x" * 256, errno.ENAMETOOLONG), (b"a/b", errno.EINVAL), (b"a\0b", errno.EINVAL)]:
        for op in (lambda n: st.mknode(ROOT, n, stat.S_IFREG | 0o644, 0, 0),
                   lambda n: st.link(ino, ROOT, n),
                   lambda n: st.rename(ROOT, b"f", ROOT, n)):
            with pytest.raises(OSError) as e:
                op(bad)
            assert e.value.errno == code
    assert [n for _, n, _ in st.readdir(ROOT)] == [b"f"]
    st.close()


def test_store_content_against_a_model(new_store):
    """Random writes, truncates and reads on the store directly, with reopens."""
    path, keys = new_store
    rnd = random.Random(99)
    st = _open(path, keys)
    ino = _new_file(st, b"f")
    model = bytearray()
    for step in range(600):
        r = rnd.random()
        if r < 0.55:
            off = rnd.randrange(0, 5 * MiB)
            n = rnd.choice([1, 100, CHUNK_SIZE, CHUNK_SIZE + 1, 200_000, BLOCK_SIZE, BLOCK_SIZE + 7, 16 << 10])
            data = rnd.randbytes(n)
            assert st.write(ino, off, data) == n
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + n] = data
        elif r < 0.65:
            size = rnd.choice([0, rnd.randrange(0, 5 * MiB), BLOCK_SIZE, len(model) // 2, len(model) + 5000])
            st.truncate(ino, size)
            if size < len(model):
                del model[size:]
            else:
                model.extend(bytes(size - len(model)))
        elif r < 0.9:
            off = rnd.randrange(0, len(model) + 100)
            n = rnd.randrange(1, 2 * MiB)
            assert st.read(ino, off, n) == bytes(model[off:off + n]), f"step {step}"
        elif r < 0.95:
            st.fsync(ino)
        else:
            st.close()
            st = _open(path, keys)
        assert st.getattr(ino).size == len(model), f"step {step}"
    st.close()
    st = _open(path, keys)
    assert st.read(ino, 0, len(model) + 10) == bytes(model)
    st.close()


# -- authenticated metadata ---------------------------------------------------------------

def test_edited_rows_of_store_db_are_eio_not_wrong_answers(new_store):
    """Each edit that once gave another answer (zeros, another file, a forged
    mode, a cut size) fails authentication; untouched rows still read."""
    import sqlite3
    path, keys = new_store
    st = _open(path, keys)
    data = {n: os.urandom(2 * BLOCK_SIZE + 10) for n in (b"a", b"b", b"c", b"d", b"e")}
    inos = {}
    for n, d in data.items():
        inos[n] = _new_file(st, n)
        st.write(inos[n], 0, d)
    st.close()
    db = sqlite3.connect(path / "store.db")
    with db:
        db.execute("DELETE FROM blocks WHERE ino=? AND blkno=1", (inos[b"a"],))
        db.execute("UPDATE inodes SET size=10 WHERE ino=?", (inos[b"b"],))
        db.execute("UPDATE dentries SET ino=? WHERE ino=?", (inos[b"d"], inos[b"c"]))
        db.execute("UPDATE inodes SET mode=?, uid=0 WHERE ino=?", (stat.S_IFREG | 0o6777, inos[b"e"]))
        db.execute("UPDATE blocks SET length=length-1 WHERE ino=? AND blkno=2", (inos[b"d"],))
    db.close()
    st = _open(path, keys)
    for what, fn in [("deleted block-map row", lambda: st.read(inos[b"a"], 0, 3 * BLOCK_SIZE)),
                     ("edited size", lambda: st.getattr(inos[b"b"])),
                     ("repointed name", lambda: st.lookup(ROOT, b"c")),
                     ("repointed name (attributes)", lambda: st.lookup_attr(ROOT, b"c")),
                     ("forged mode and owner", lambda: st.getattr(inos[b"e"])),
                     ("edited block length", lambda: st.read(inos[b"d"], 2 * BLOCK_SIZE, 100))]:
        with pytest.raises(OSError) as e:
            fn()
        assert e.value.errno == errno.EIO, what
    assert st.read(inos[b"d"], 0, BLOCK_SIZE) == data[b"d"][:BLOCK_SIZE]
    st.close()


def test_metadata_macs_hold_through_every_kind_of_change(new_store):
    """Renames, links, truncation, xattrs, chmod, rewrites: the rows the store
    changed itself verify after a reopen (its MACs follow every change)."""
    path, keys = new_store
    st = _open(path, keys)
    d = st.mknode(ROOT, b"d", stat.S_IFDIR | 0o755, 1000, 1000).ino
    f = _new_file(st, b"f", d)
    st.write(f, 0, os.urandom(3 * BLOCK_SIZE))
    st.truncate(f, BLOCK_SIZE + 5)
    st.write(f, 10, b"x" * 100)
    st.link(f, ROOT, b"hard")
    st.rename(d, b"f", ROOT, b"moved")
    st.setattr(f, mode=0o600, mtime_ns=5)
    st.setxattr(f, b"user.a", b"v")
    g = _new_file(st, b"g")
    st.write(g, 0, b"small")
    st.rename(ROOT, b"g", ROOT, b"hard")          # replaces a link of f
    st.mknode(ROOT, b"sym", stat.S_IFLNK | 0o777, 1000, 1000, target=b"moved")
    st.close()
    st = _open(path, keys)
    assert sorted(n for _c, n, _a in st.readdir(ROOT)) == [b"d", b"hard", b"moved", b"sym"]
    a = st.lookup_attr(ROOT, b"moved")
    assert a.size == BLOCK_SIZE + 5 and stat.S_IMODE(a.mode) == 0o600 and a.nlink == 1
    assert st.read(a.ino, 10, 100) == b"x" * 100 and st.read(st.lookup(ROOT, b"hard"), 0, 10) == b"small"
    assert st.readlink(st.lookup(ROOT, b"sym")) == b"moved"


def test_rename_exchange_of_a_file_and_a_directory_across_directories_keeps_link_counts(new_store):
    from smpfs.store import fsck
    st = _open(*new_store)
    a = st.mknode(ROOT, b"a", stat.S_IFDIR | 0o755, 1000, 1000).ino
    b = st.mknode(ROOT, b"b", stat.S_IFDIR | 0o755, 1000, 1000).ino
    f = st.mknode(a, b"f", stat.S_IFREG | 0o644, 1000, 1000).ino
    d = st.mknode(b, b"d", stat.S_IFDIR | 0o755, 1000, 1000).ino
    assert (st.getattr(a).nlink, st.getattr(b).nlink) == (2, 3)
    st.rename(a, b"f", b, b"d", exchange=True)            # a/f is now the directory, b/d the file
    assert (st.lookup(a, b"f"), st.lookup(b, b"d")) == (d, f)
    assert (st.getattr(a).nlink, st.getattr(b).nlink) == (3, 2)
    assert st.lookup(d, b"..") == a
    assert fsck.check_store(st, repair=False)["link_counts"] == []
    st.rename(b, b"d", a, b"f", exchange=True)            # and back
    assert (st.getattr(a).nlink, st.getattr(b).nlink) == (2, 3)
    assert fsck.check_store(st, repair=False)["link_counts"] == []
    st.close()


def test_read_only_store_refuses_every_change(new_store):
    st = _open(*new_store)
    f = st.mknode(ROOT, b"f", stat.S_IFREG | 0o644, 1001, 1001).ino
    d = st.mknode(ROOT, b"d", stat.S_IFDIR | 0o755, 1001, 1001).ino
    st.write(f, 0, b"captured")
    st.setxattr(f, b"user.a", b"1")
    st.sync()
    st.read_only = True
    changes = {
        "write": lambda: st.write(f, 0, b"x"),
        "truncate": lambda: st.setattr(f, size=0),
        "chmod": lambda: st.setattr(f, mode=0o777),
        "chown": lambda: st.setattr(f, uid=1002),
        "create": lambda: st.mknode(ROOT, b"g", stat.S_IFREG | 0o644, 1001, 1001),
        "mkdir": lambda: st.mknode(d, b"e", stat.S_IFDIR | 0o755, 1001, 1001),
        "unlink": lambda: st.unlink(ROOT, b"f"),
        "rmdir": lambda: st.unlink(ROOT, b"d", want_dir=True),
        "rename": lambda: st.rename(ROOT, b"f", d, b"f"),
        "link": lambda: st.link(f, d, b"l"),
        "setxattr": lambda: st.setxattr(f, b"user.b", b"2"),
        "removexattr": lambda: st.removexattr(f, b"user.a"),
    }
    for what, change in changes.items():
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EROFS, what
    assert st.read(f, 0, 100) == b"captured" and st.getxattr(f, b"user.a") == b"1"
    assert [n for _c, n, _a in st.readdir(ROOT)] == [b"f", b"d"]
    st.close()
