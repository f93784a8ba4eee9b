"""File content: blocks sealed copy-on-write, the dirty-block buffer, reads.

A rewritten block goes to a new file named by a fresh counter; the superseded
file is only unlinked after a *durable* commit (see statestore.py), so a crash
leaves either the old or the new version. Blocks of at most ``INLINE_MAX``
bytes are sealed into store.db instead. Writes are buffered per block; a
store writes its oldest dirty block when it holds more than ``DIRTY_MAX``
bytes, or when every store sharing its :class:`DirtyBudget` together does.
"""
from __future__ import annotations

import errno
import os
import time
import weakref
from collections import OrderedDict

from ..crypto import chunk
from ..crypto.chunk import BLOCK_SIZE
from . import diskio
from .blockjob import BlockJob, Dirty, ReadPart
from .layout import Attr, err, killed_mode
from .parts import StoreParts

DIRTY_MAX = 32 << 20               # plaintext bytes one store buffers before writing its oldest block
DIRTY_TOTAL_MAX = 64 << 20         # ... and all open stores together (the daemon's memory stays flat)
INLINE_MAX = 16 << 10              # blocks this small are sealed into store.db, not a file of their own
SPACE_RECHECK = 0.25               # seconds between statvfs() of the storage folder while writing
SPACE_SLACK = 256 << 20            # ...and at every write within this much of the minimum free space
DATA_HEADROOM = 1 << 20            # file content stops this far above the floor; names and xattrs may use it
META_OVERHEAD = 512                # what a new row costs store.db beyond its name and value (row, index, WAL)


class SpaceAfterDurable(OSError):
    """ENOSPC that a durable point of the store may cure: superseded block
    files wait for one to be unlinked. The daemon makes that durable point
    without blocking its loop and tries once more; anything else gets ENOSPC."""


class DirtyBudget:
    """The plaintext bytes buffered by every open store that shares this budget
    (by default all stores of the process: the daemon's memory stays flat)."""

    def __init__(self, limit: int = DIRTY_TOTAL_MAX):
        self.limit = limit
        self._stores: weakref.WeakSet = weakref.WeakSet()

    def add(self, store) -> None:
        self._stores.add(store)

    def total(self) -> int:
        return sum(st._dirty_bytes for st in self._stores)

    def over(self) -> bool:
        return self.total() > self.limit


PROCESS_BUDGET = DirtyBudget()


class BlocksMixin(StoreParts):
    """Part of :class:`~smpfs.store.statestore.StateStore`: file content."""

    def init_blocks(self, budget: DirtyBudget) -> None:
        self._dirty: OrderedDict[tuple[int, int], Dirty] = OrderedDict()
        self._dirty_bytes = 0
        self._unsynced: dict[int, set[int]] = {}      # ino -> counters written since its last fsync
        self._unsynced_all: set[int] = set()           # counters written since the last durable point
        self._superseded: list[int] = []               # block files to unlink after a durable commit
        self._inflight: dict[tuple[int, int], BlockJob] = {}   # blocks being sealed elsewhere
        self._errors: dict[int, OSError] = {}          # ino -> a write-back error to report
        self._pins: dict[int, int] = {}                # counters a read in flight still needs
        #: ``submit(job)`` hands a BlockJob to a worker and later calls
        #: ``finish_block(job, error)``; None = do it inline (tools, tests, fsck).
        self.submit = None
        self._budget = budget
        budget.add(self)
        self._space = (0.0, 0)                         # (when, free bytes) of the last statvfs
        # blocks.salt (format 3); a store opened read-only may be older
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(blocks)")}
        self._row_sql = ("SELECT counter, length, data, " + ("salt" if "salt" in cols else "NULL") +
                         ", " + ("mac" if "mac" in cols else "NULL") + " FROM blocks WHERE ino=? AND blkno=?")
        self.meta_pending = 0                          # store.db bytes added since the last commit (estimated)
        self.blocks_written = 0

    # -- what a durable point (statestore.py) needs to know ----------------------

    def take_unsynced(self, ino: int | None) -> set[int]:
        """Counters of block files not yet durable: the inode's (taken), or all (copied)."""
        if ino is None:
            return set(self._unsynced_all)
        return self._unsynced.pop(ino, set())

    def superseded_count(self) -> int:
        return len(self._superseded)

    def blocks_durable(self, counters: set[int], n_superseded: int) -> list[str]:
        """Record ``counters`` as durable; return the paths of the first
        ``n_superseded`` superseded block files, which may now be unlinked
        (those a read in flight still needs stay for the next durable point)."""
        self._unsynced_all -= counters
        for c in counters:
            for rest in self._unsynced.values():
                rest.discard(c)
        taken, self._superseded = self._superseded[:n_superseded], self._superseded[n_superseded:]
        keep = [c for c in taken if c in self._pins]     # a read in flight still needs it
        self._superseded[:0] = keep
        gone = [c for c in taken if c not in self._pins]
        return [self.block_path(c) for c in gone]

    def supersede(self, counters) -> None:
        """Block files no block-map row points to any more: unlink them after the next durable point."""
        self._superseded.extend(counters)

    def pending_unlinks(self) -> set[int]:
        """Counters of superseded block files waiting for a durable point."""
        return set(self._superseded)

    def discard_dirty(self) -> None:
        """Drop every buffered block (the store is being destroyed)."""
        self._dirty.clear()
        self._dirty_bytes = 0

    def forget_blocks(self, ino: int) -> None:
        """An inode is being freed: drop its buffered blocks and its block map."""
        for key in [k for k in self._dirty if k[0] == ino]:
            self._dirty_bytes -= len(self._dirty.pop(key).data)
        self._superseded.extend(r[0] for r in self.db.execute(
            "SELECT counter FROM blocks WHERE ino=? AND data IS NULL", (ino,)))
        self.db.execute("DELETE FROM blocks WHERE ino=?", (ino,))
        self._unsynced.pop(ino, None)

    def with_pending(self, a: Attr) -> Attr:
        """``a`` (an Attr with ``stored``) counting content still in memory too:
        a block in memory stands for its stored version, if any."""
        if not (self._dirty or self._inflight):
            return a
        mem = {k[1]: len(j.data) for k, j in self._inflight.items() if k[0] == a.ino}
        mem.update({k[1]: len(d.data) for k, d in self._dirty.items() if k[0] == a.ino})
        if mem:
            lengths = dict(self.db.execute("SELECT blkno, length FROM blocks WHERE ino=?", (a.ino,)))
            lengths.update(mem)
            a.stored = sum(lengths.values())
        return a

    def block_path(self, counter: int) -> str:
        return f"{self.path}/b/{counter & 0xFF:02x}/{counter:016x}"

    def block_cipher(self, salt: bytes | None, counter: int):
        """``(aead, nonce counter)`` of a block version: its own key and nonces
        0.. from its salt (format 3 on), or the store's content key and its
        counter (blocks sealed by formats 1-2, salt NULL). Any thread."""
        if salt is None:
            return self.keys.content, counter
        return self.keys.block_aead(salt), 0

    def _block_row(self, ino: int, blkno: int):
        """``(counter, length, inline data or None, salt or None)``, its MAC checked."""
        row = self.db.execute(self._row_sql, (ino, blkno)).fetchone()
        if row is None:
            return None
        self.check_block_row(ino, blkno, row[0], row[1], row[3], row[4])
        return row[:4]

    def _load_block(self, ino: int, blkno: int, row, first: int = 0, last: int | None = None) -> bytes | bytearray:
        """Decrypt chunks [first, last] of a stored block."""
        counter, length, inline, salt = row
        if inline is not None:
            try:
                aead, nonce_ctr = self.block_cipher(salt, counter)
                plain = chunk.decrypt_chunks(aead, self.sid, ino, blkno, nonce_ctr, length, 0, inline)
            except chunk.BlockAuthError as e:
                raise err(errno.EIO, str(e))
            return plain[first * chunk.CHUNK_SIZE:(last + 1) * chunk.CHUNK_SIZE] if last is not None \
                else plain[first * chunk.CHUNK_SIZE:]
        n = chunk.nchunks(length)
        if last is None or last >= n:
            last = n - 1
        if first > last:
            return b""
        size = min(length, (last + 1) * chunk.CHUNK_SIZE) - first * chunk.CHUNK_SIZE
        return self.fetch([ReadPart(ino, blkno, counter, length, first, last, 0, size, salt)])

    def read_plan(self, ino: int, off: int, size: int) -> list:
        """What a read needs: bytes already in memory, or ReadParts to fetch.
        Counters of the parts are pinned until :meth:`unpin`."""
        fsize = self.getattr(ino).size
        if off >= fsize or size <= 0:
            return []
        size = min(size, fsize - off)
        parts: list = []
        pos, end = off, off + size
        holes_checked = False
        while pos < end:
            blkno, boff = divmod(pos, BLOCK_SIZE)
            n = min(end - pos, BLOCK_SIZE - boff)
            key = (ino, blkno)
            mem = self._dirty.get(key) or self._inflight.get(key)
            if mem is not None:
                piece = bytes(mem.data[boff:boff + n])
                parts.append(piece + bytes(n - len(piece)) if len(piece) < n else piece)
            else:
                row = self._block_row(ino, blkno)
                if row is None and not holes_checked:    # a hole, or a block-map row deleted?
                    self.check_block_count(ino)
                    holes_checked = True
                if row is None or boff >= row[1]:
                    parts.append(bytes(n))               # a hole, or past the block's stored end
                elif row[2] is not None:                 # small and inline: decrypt right here
                    piece = bytes(self._load_block(ino, blkno, row)[boff:boff + n])
                    parts.append(piece + bytes(n - len(piece)) if len(piece) < n else piece)
                else:
                    first = boff // chunk.CHUNK_SIZE
                    last = (min(boff + n, row[1]) - 1) // chunk.CHUNK_SIZE
                    parts.append(ReadPart(ino, blkno, row[0], row[1], first, last,
                                          boff - first * chunk.CHUNK_SIZE, n, row[3]))
                    self._pins[row[0]] = self._pins.get(row[0], 0) + 1
            pos += n
        return parts

    def fetch(self, parts: list, chunks: list | None = None) -> bytes:
        """Read and decrypt a plan's parts. Thread-safe: touches no sqlite.
        With ``chunks``, the whole chunks decrypted are added to it as
        ``(file offset, plaintext)``."""
        out = []
        for p in parts:
            if not isinstance(p, ReadPart):
                out.append(p)
                continue
            start = chunk.chunk_offset(p.first)
            end = chunk.chunk_offset(p.last) + min(chunk.CHUNK_SIZE, p.length - p.last * chunk.CHUNK_SIZE) \
                + chunk.TAG_SIZE
            try:
                fd = os.open(self.block_path(p.counter), os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                raise err(errno.EIO, f"block file {p.counter:016x} is missing")
            except OSError as e:                 # e.g. ELOOP: a symlink planted in its place
                raise err(errno.EIO, f"block file {p.counter:016x} cannot be opened: {e.strerror}")
            try:
                if p.first == 0 and p.length > end:
                    # a reader at the start of a block will want the rest of it:
                    # start reading the whole block file from disk now
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                raw = os.pread(fd, end - start, start)
            finally:
                os.close(fd)
            if len(raw) != end - start:              # cut short, maybe on a chunk boundary
                raise err(errno.EIO, f"block file {p.counter:016x} is truncated")
            try:
                aead, nonce_ctr = self.block_cipher(p.salt, p.counter)
                plain = chunk.decrypt_chunks(aead, self.sid, p.ino, p.blkno, nonce_ctr, p.length, p.first, raw)
            except chunk.BlockAuthError as e:
                raise err(errno.EIO, str(e))
            if chunks is not None:
                chunks.append((p.blkno * BLOCK_SIZE + p.first * chunk.CHUNK_SIZE, memoryview(plain)))
            piece = memoryview(plain)[p.start:p.start + p.n]
            out.append(piece if len(piece) == p.n else bytes(piece) + bytes(p.n - len(piece)))
        return out[0] if len(out) == 1 else b"".join(out)

    def unpin(self, parts: list) -> None:
        for p in parts:
            if isinstance(p, ReadPart):
                left = self._pins[p.counter] - 1
                if left:
                    self._pins[p.counter] = left
                else:
                    del self._pins[p.counter]

    def read(self, ino: int, off: int, size: int) -> bytes:
        parts = self.read_plan(ino, off, size)
        try:
            return bytes(self.fetch(parts))
        finally:
            self.unpin(parts)

    def _check_space(self, nbytes: int, retry: bool = True, headroom: int = DATA_HEADROOM,
                     owed: bool = False) -> None:
        when, free = self._space
        now = time.monotonic()
        floor = self.min_free_bytes() + headroom
        if now - when > SPACE_RECHECK or free - nbytes < floor + SPACE_SLACK:
            st = os.statvfs(self.path)
            free = st.f_bavail * st.f_frsize
            when = now
            if free - nbytes < floor + SPACE_SLACK:
                self.near_floor()                    # keep the WAL small from now on
        # between statvfs calls (at most SPACE_RECHECK s apart, and always near the
        # floor) what this store wrote is subtracted from the last figure
        self._space = (when, free - nbytes)
        # blocks still in memory or in flight, and uncommitted rows, land on disk later: count them now
        pending = self._dirty_bytes + len(self._inflight) * BLOCK_SIZE + self.meta_pending
        if owed and free - nbytes - pending < floor + SPACE_SLACK:
            pending += self.wal_owed()               # rows in the WAL are copied into store.db later
        if free - nbytes - pending < floor:
            if retry and self._superseded:
                # deleted or rewritten blocks wait for a durable point to be unlinked:
                # make it now, so space freed by rm is usable at once
                if self.submit is not None:
                    # the daemon: never a blocking sync on its loop (blocks may be in flight)
                    raise SpaceAfterDurable(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.sync()
                return self._check_space(nbytes, retry=False, headroom=headroom)
            raise err(errno.ENOSPC, "the storage folder is at its minimum free space")

    def check_room(self, nbytes: int) -> None:
        """Before a change that grows store.db (a name, a symlink target, an
        xattr, a hard link): the folder's minimum free space holds for those too
        (file content stops ``DATA_HEADROOM`` earlier, so a full store can still
        be tidied up)."""
        self._check_space(nbytes + META_OVERHEAD, retry=False, headroom=0, owed=True)
        self.meta_pending += nbytes + META_OVERHEAD

    def write(self, ino: int, off: int, data, *, retry_space: bool = True) -> int:
        """Write ``data`` at ``off``. At the minimum free space: ENOSPC, or
        :class:`SpaceAfterDurable` (with ``retry_space``) when a durable point may make room."""
        self.check_writable()
        n = len(data)
        if n == 0:
            return 0
        self._check_space(n + chunk.TAG_SIZE * (n // chunk.CHUNK_SIZE + 1), retry=retry_space)
        mv = memoryview(data)
        pos, end = off, off + n
        self.begin_change()
        now = time.time_ns()                         # a write changes mtime and ctime (POSIX)
        self.db.execute("UPDATE inodes SET size=max(size, ?), mtime_ns=?, ctime_ns=? WHERE ino=?",
                        (end, now, now, ino))
        while pos < end:
            blkno, boff = divmod(pos, BLOCK_SIZE)
            k = min(end - pos, BLOCK_SIZE - boff)
            piece = mv[pos - off:pos - off + k]
            key = (ino, blkno)
            d = self._dirty.get(key)
            if d is None and boff == 0 and k == BLOCK_SIZE:
                self._store_block(ino, blkno, piece)          # a whole block: straight out
            else:
                if d is None:
                    job = self._inflight.get(key)
                    if job is not None:
                        base = bytearray(job.data)
                    else:
                        row = self._block_row(ino, blkno)
                        base = bytearray(self._load_block(ino, blkno, row)) if row else bytearray()
                    d = self._dirty[key] = Dirty(base)
                    self._dirty_bytes += len(base)
                before = len(d.data)
                if boff > before:
                    d.data.extend(bytes(boff - before))
                d.data[boff:boff + k] = piece
                self._dirty_bytes += len(d.data) - before
                if boff + k == BLOCK_SIZE:                    # the writer reached the block's end
                    self._flush_block(key)
            pos += k
        while self._dirty and (self._dirty_bytes > DIRTY_MAX or self._budget.over()):
            self._flush_block(next(iter(self._dirty)))
        return n

    def _flush_block(self, key) -> None:
        d = self._dirty.pop(key)
        self._dirty_bytes -= len(d.data)
        try:
            self._store_block(key[0], key[1], d.data)
        except BaseException:
            self._dirty[key] = d                # keep it: nothing written is lost
            self._dirty_bytes += len(d.data)
            raise

    def _store_block(self, ino: int, blkno: int, data) -> None:
        """Seal and write one block to a new file, then point the block map at it
        (through ``submit`` when a worker pool is attached)."""
        job = BlockJob(self, ino, blkno, self.counter.next(), data)
        if len(data) <= INLINE_MAX:
            self._record_block(job, job.seal())
            return
        if self.submit is None:
            try:
                job.run()
            except OSError as e:
                self.finish_block(job, e)
                raise
            self.finish_block(job, None)
            return
        self._inflight[(ino, blkno)] = job
        self.submit(job)

    def finish_block(self, job: BlockJob, error: OSError | None) -> None:
        """Record a written block in the block map (or keep its data dirty on error)."""
        key = (job.ino, job.blkno)
        if self._inflight.get(key) is job:
            del self._inflight[key]
        if self.db is None:
            return                                   # the store was closed or destroyed meanwhile
        row = self.db.execute("SELECT size FROM inodes WHERE ino=?", (job.ino,)).fetchone()
        stale = row is None or job.blkno * BLOCK_SIZE >= row[0]
        if error is not None:
            try:
                diskio.io.unlink(self.block_path(job.counter))
            except OSError:
                pass
            if not stale and key not in self._dirty and key not in self._inflight:
                data = bytearray(job.data)           # keep it: nothing written is lost
                self._dirty[key] = Dirty(data)
                self._dirty_bytes += len(data)
            self._errors[job.ino] = error if isinstance(error, OSError) else err(errno.EIO, str(error))
            return
        if stale:
            self._superseded.append(job.counter)     # the file shrank or went meanwhile
            return
        self._record_block(job, None)

    def _record_block(self, job: BlockJob, inline: bytes | bytearray | None) -> None:
        """Point the block map at a new version: ``inline`` ciphertext, or the job's file."""
        old = self._block_row(job.ino, job.blkno)
        if old is not None and old[0] > job.counter:  # a newer version won the race
            if inline is None:
                self._superseded.append(job.counter)
            return
        self.begin_change()
        self.db.execute("INSERT OR REPLACE INTO blocks (ino, blkno, counter, length, data, salt)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (job.ino, job.blkno, job.counter, len(job.data), inline, job.salt))
        if old is not None and old[2] is None:
            self._superseded.append(old[0])
        if inline is None:
            self._unsynced.setdefault(job.ino, set()).add(job.counter)
            self._unsynced_all.add(job.counter)
        self.blocks_written += 1

    def inflight(self, ino: int | None = None) -> bool:
        if ino is None:
            return bool(self._inflight)
        return any(k[0] == ino for k in self._inflight)

    def check_error(self, ino: int) -> None:
        """Raise the write-back error of an inode, if any, keeping it for close()/fsync()."""
        e = self._errors.get(ino)
        if e is not None:
            raise e

    def take_error(self, ino: int) -> None:
        """Raise (once) the write-back error of an inode, as close()/fsync() must."""
        e = self._errors.pop(ino, None)
        if e is not None:
            raise e

    def flush_inode(self, ino: int) -> None:
        """Write this inode's dirty blocks (a close() or before an fsync)."""
        for key in [k for k in self._dirty if k[0] == ino]:
            self._flush_block(key)

    def flush_all(self) -> None:
        while self._dirty:
            self._flush_block(next(iter(self._dirty)))

    def fsync(self, ino: int) -> None:
        """Return only when the inode's data and the metadata to read it back are durable."""
        self.flush_inode(ino)
        if self.inflight(ino):
            raise RuntimeError("fsync with blocks in flight: drain them first")
        self.take_error(ino)
        work, done = self.prepare_durable(ino)
        work()
        done()

    def truncate(self, ino: int, size: int, *, keep_privs: bool = False) -> None:
        """Change the size; clears setuid (and setgid with group-execute) unless
        ``keep_privs`` (the caller holds CAP_FSETID)."""
        self.check_writable()
        if self.inflight(ino):
            raise RuntimeError("truncate with blocks in flight: drain them first")
        a = self.getattr(ino)
        if size < a.size:
            keep_blocks = (size + BLOCK_SIZE - 1) // BLOCK_SIZE
            for key in [k for k in self._dirty if k[0] == ino and k[1] >= keep_blocks]:
                self._dirty_bytes -= len(self._dirty.pop(key).data)
            self.begin_change()
            self._superseded.extend(r[0] for r in self.db.execute(
                "SELECT counter FROM blocks WHERE ino=? AND blkno>=? AND data IS NULL", (ino, keep_blocks)))
            self.db.execute("DELETE FROM blocks WHERE ino=? AND blkno>=?", (ino, keep_blocks))
            tail = size % BLOCK_SIZE
            if tail:
                blkno = size // BLOCK_SIZE
                key = (ino, blkno)
                d = self._dirty.get(key)
                if d is not None:
                    if len(d.data) > tail:
                        self._dirty_bytes -= len(d.data) - tail
                        del d.data[tail:]
                else:
                    row = self._block_row(ino, blkno)
                    if row is not None and row[1] > tail:
                        data = self._load_block(ino, blkno, row)[:tail]
                        self._store_block(ino, blkno, data)
        now = time.time_ns()
        self.begin_change()
        self.db.execute("UPDATE inodes SET size=?, mtime_ns=?, ctime_ns=? WHERE ino=?", (size, now, now, ino))
        if not keep_privs and killed_mode(a.mode) != a.mode:
            self.db.execute("UPDATE inodes SET mode=? WHERE ino=?", (killed_mode(a.mode), ino))

    def clear_suid(self, ino: int) -> bool:
        """A write clears setuid, and setgid with group-execute (HANDLE_KILLPRIV:
        the kernel leaves it to us). True if the mode changed."""
        a = self.getattr(ino)
        if killed_mode(a.mode) == a.mode:
            return False
        self.begin_change()
        self.db.execute("UPDATE inodes SET mode=? WHERE ino=?", (killed_mode(a.mode), ino))
        return True
