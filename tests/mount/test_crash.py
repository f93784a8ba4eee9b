"""Crash loops: SIGKILL the daemon at random moments, remount, check what survived.

Three loops, all with real mounts, real crypto and a real ``kill -9``:

* during a random write workload of the capturing computer (new files,
  write-fsync-rename replacements, whole-file overwrites in place, unlinks);
* during ``release capture`` right after a large unsynced capture;
* during a retention deletion.

After every kill: ``smpfs fsck`` runs on the unmounted SMP and may only find
what a crash legitimately leaves (orphan block files and orphan inodes, an
interrupted deletion to finish) -- never anything unrepairable; then the
SMP is mounted again and, as the computers themselves:

* every file whose ``fsync`` or ``close`` returned is there and intact (a
  SIGKILL keeps the kernel's page cache: only the daemon's memory is lost);
* a file being written reads, block by block, as one of its versions or
  (past what was flushed) zeros -- never garbage, never EIO;
* the new version of a write-fsync-rename replacement is reachable under
  one of its two names; an unlinked file is either gone or intact;
* the store's lifecycle state is the one before or the one after the
  interrupted command, never a state in between.

Seeds are printed; ``SMPFS_CRASH_SEED`` replays the random choices (the
moment of each kill is random by nature). ``SMPFS_LONG=1`` loops longer.
"""
from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import random
import select
import threading
import time

import pytest

from smpfs.mount import control

LONG = os.environ.get("SMPFS_LONG") == "1"
WRITE_KILLS = 60 if LONG else 14
RELEASE_KILLS = 15 if LONG else 4
RETENTION_KILLS = 15 if LONG else 5
MiB = 1 << 20
PAGE = 4096
MAX_SETTLED = 24                   # files kept across iterations (older ones are unlinked)

#: what fsck may find after a SIGKILL: leftovers, never damage
ALLOWED_FINDINGS = ("orphan blocks", "orphan inodes")
TALLY = {"n": 0}                  # daemon kills survived (see the min_count marks)
#: seconds between sending a lifecycle command and the kill: before, during, after it
SHORT_DELAYS = (0.0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.015, 0.03, 0.06)


def _seed(name: str) -> int:
    s = os.environ.get("SMPFS_CRASH_SEED")
    seed = int(s) if s else random.SystemRandom().randrange(1 << 32)
    print(f"{name}: seed {seed} (replay the choices: SMPFS_CRASH_SEED={seed})")
    return seed


def gen(seed, name: str, v: int, size: int) -> bytes:
    """The content of version ``v`` of file ``name``: deterministic, incompressible."""
    return random.Random(f"{seed}/{name}/{v}").randbytes(size)


def h(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# -- running the workload in a child, as the computer ----------------------------

def _dead(e: OSError, killpipe: int) -> bool:
    """Whether an error comes from the announced kill of the daemon."""
    if select.select([killpipe], [], [], 0)[0]:
        return True
    time.sleep(0.3)                      # the parent announces just before it kills
    return bool(select.select([killpipe], [], [], 0)[0])


def _write_file(path: str, data: bytes, rng, flags=os.O_CREAT | os.O_EXCL | os.O_WRONLY) -> int:
    fd = os.open(path, flags, 0o644)
    try:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, PAGE * rng.randrange(1, 80))
            os.pwrite(fd, data[pos:pos + n], pos)
            pos += n
    except BaseException:
        os.close(fd)
        raise
    return fd


def _workload(root: str, seed, it: int, settled: dict, killpipe: int) -> dict:
    """Random operations until the mount dies. Returns the journal of what *returned*."""
    rng = random.Random(f"{seed}/work/{it}")
    journal: list[tuple] = []
    touched: set[str] = set()
    j = 0
    try:
        while True:
            j += 1
            v = it * 10000 + j
            free = [n for n in settled if n not in touched]
            gens = [n for n in free if settled[n][0] == "ver"]
            op = rng.choices(["new", "replace", "inplace", "unlink"],
                             [5, 2 if gens else 0, 2 if gens else 0, 1 if free else 0])[0]
            if op == "new":
                name = f"n{it}_{j}"
                size = rng.choice([0, 1, rng.randrange(1, MiB), rng.randrange(MiB, 2 * MiB + 5000)])
                spec = ("ver", v, size)
                journal.append(("new", name, spec))
                touched.add(name)
                fd = _write_file(f"{root}/{name}", gen(seed, name, v, size), rng)
                if rng.random() < 0.5:
                    os.fsync(fd)
                    journal.append(("durable", name, spec))
                os.close(fd)
                journal.append(("durable", name, spec))
            elif op == "replace":                       # the write, fsync, rename pattern
                name = rng.choice(gens)
                old = settled[name]
                tmp = f"{name}.tmp{it}_{j}"
                spec = ("ver", v, rng.randrange(0, 2 * MiB))
                journal.append(("replace", name, tmp, spec, old))
                touched.update((name, tmp))
                fd = _write_file(f"{root}/{tmp}", gen(seed, name, v, spec[2]), rng)
                os.fsync(fd)
                os.close(fd)
                journal.append(("tmp_durable", tmp))
                journal.append(("renaming", name, tmp))
                os.rename(f"{root}/{tmp}", f"{root}/{name}")
                journal.append(("renamed", name, tmp))
            elif op == "inplace":                       # overwrite the whole file, same size
                name = rng.choice(gens)
                old = settled[name]
                spec = ("ver", v, old[2])
                journal.append(("inplace", name, spec, old))
                touched.add(name)
                fd = _write_file(f"{root}/{name}", gen(seed, name, v, old[2]), rng, flags=os.O_WRONLY)
                if rng.random() < 0.5:
                    os.fsync(fd)
                    journal.append(("durable", name, spec))
                os.close(fd)
                journal.append(("durable", name, spec))
            else:
                name = rng.choice(free)
                journal.append(("unlink", name, settled[name]))
                touched.add(name)
                os.unlink(f"{root}/{name}")
    except OSError as e:
        if not _dead(e, killpipe):
            return {"journal": journal, "error": f"{type(e).__name__}: {e} (before the daemon was killed)"}
    return {"journal": journal, "error": None}


def rules_from(journal: list, settled: dict) -> tuple[dict, list]:
    """What may be found after the crash: name -> rule, plus cross-checks."""
    rules = {n: {"must": True, "exact": [s], "mix": None} for n, s in settled.items()}
    either = []                                         # (spec, [names]): spec must be under one name
    for ev in journal:
        kind = ev[0]
        if kind == "new":
            rules[ev[1]] = {"must": False, "exact": [], "mix": [ev[2]], "zeros": True}
        elif kind == "durable":
            rules[ev[1]] = {"must": True, "exact": [ev[2]], "mix": None}
        elif kind == "replace":
            _, name, tmp, spec, old = ev
            rules[tmp] = {"must": False, "exact": [], "mix": [spec], "zeros": True, "of": name}
        elif kind == "tmp_durable":
            rules[ev[1]] = {"must": True, "exact": [rules[ev[1]]["mix"][0]], "mix": None, "of": rules[ev[1]]["of"]}
        elif kind == "renaming":
            _, name, tmp = ev
            new = rules[tmp]["exact"][0]
            rules[name] = {"must": True, "exact": [settled[name], new], "mix": None}
            rules[tmp] = {"must": False, "exact": [new], "mix": None, "of": name}
            either.append((new, [name, tmp]))
        elif kind == "renamed":
            pass                 # metadata is committed in batches: the rename may be undone
        elif kind == "inplace":
            _, name, spec, old = ev
            rules[name] = {"must": True, "exact": [old, spec], "mix": [old, spec], "zeros": False}
        elif kind == "unlink":
            rules[ev[1]] = {"must": False, "exact": [ev[2]], "mix": None}
    return rules, either


def _content(seed, name: str, spec, of: str | None = None):
    if spec[0] == "ver":
        return gen(seed, of or name, spec[1], spec[2])
    return None


def _mixed_ok(data: bytes, cands: list[bytes], zeros: bool) -> int | None:
    """None if every aligned piece of ``data`` is the same piece of one candidate
    (or zeros); else the offset of the first piece that is none of them."""
    if len(data) > max((len(c) for c in cands), default=0):
        return len(data)
    def ok(lo: int, hi: int) -> int | None:
        piece = data[lo:hi]
        for c in cands:
            if c[lo:hi] == piece:
                return None
        if zeros and piece.count(0) == len(piece):
            return None
        if hi - lo <= PAGE:
            return lo
        mid = lo + max(PAGE, ((hi - lo) // 2) // PAGE * PAGE)
        r = ok(lo, mid)
        return r if r is not None else ok(mid, hi)
    return ok(0, len(data)) if data else None


def _verify(root: str, seed, rules: dict, either: list) -> dict:
    """In the child, as the computer: check every rule; return what is there now."""
    problems, observed = [], {}
    present = set(os.listdir(root))
    for name in sorted(present - set(rules)):
        problems.append(f"{name}: unexpected file after the crash")
    for name, r in sorted(rules.items()):
        if name not in present:
            if r["must"]:
                problems.append(f"{name}: missing, although its fsync/close had returned")
            continue
        try:
            with open(f"{root}/{name}", "rb") as f:
                data = f.read()
        except OSError as e:
            problems.append(f"{name}: {errno.errorcode.get(e.errno, e.errno)} reading it after the crash")
            continue
        of = r.get("of")
        found = None
        for spec in r["exact"]:
            want = _content(seed, name, spec, of)
            if (want is not None and data == want) or (spec[0] == "hash" and h(data) == spec[1]):
                found = spec
                break
        if found is None and r["mix"]:
            cands = [_content(seed, name, s, of) for s in r["mix"]]
            bad = _mixed_ok(data, cands, r.get("zeros", False))
            if bad is not None:
                problems.append(f"{name}: {len(data)} bytes, garbage at offset {bad}: "
                                f"not any version of the file (nor a hole)")
            found = ("hash", h(data))
        elif found is None:
            problems.append(f"{name}: {len(data)} bytes that are none of the allowed versions "
                            f"{[s[:2] for s in r['exact']]}")
            found = ("hash", h(data))
        observed[name] = found
    for spec, names in either:
        if not any(observed.get(n) == spec for n in names):
            problems.append(f"the fsynced new version {spec[:2]} is under none of {names}")
    return {"observed": observed, "problems": problems, "files": len(observed),
            "bytes": sum(s[2] for s in observed.values() if s[0] == "ver")}


def _settle(root: str, observed: dict, keep: int) -> dict:
    """After verification: fold leftovers of replacements into plain files and
    keep at most ``keep`` files, then make that durable (fsync of the store)."""
    settled = {}
    for name, spec in sorted(observed.items()):
        if ".tmp" in name:
            os.unlink(f"{root}/{name}")
        else:
            settled[name] = spec
    for name in sorted(settled)[:max(0, len(settled) - keep)]:
        os.unlink(f"{root}/{name}")
        del settled[name]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return settled


def fsck_after_crash(smp) -> list[str]:
    """``smpfs fsck`` on the unmounted SMP: exit 0 and only findings a crash may leave."""
    r = smp.cli("fsck", "--json", check=False)
    assert r.code == 0, f"fsck after a crash exited {r.code}: {r.err} {r.out}"
    report = json.loads(r.out)
    assert report["unrepairable"] == 0, report
    odd = [f for f in report["findings"]
           if not (any(k in f for k in ALLOWED_FINDINGS) or f.startswith("finished removing"))]
    assert not odd, f"fsck after a SIGKILL found damage, not just leftovers: {odd}"
    return report["findings"]


def kill_daemon(smp) -> None:
    assert smp.daemon_pid(), "no daemon to kill"
    smp.kill()
    TALLY["n"] += 1


class Background(threading.Thread):
    """Run ``fn`` in a thread; keep its result or exception."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = self.error = None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:          # noqa: BLE001 - reported by the test
            self.error = e

    def get(self, timeout=120):
        self.join(timeout)
        assert not self.is_alive(), f"{self.fn.__name__} still running {timeout}s after the kill"
        return self.result, self.error


# -- 1. kills during a write workload -------------------------------------------------

@pytest.mark.min_count(WRITE_KILLS)
def test_kill_during_writes(smp):
    seed = _seed("kill during writes")
    rng = random.Random(f"{seed}/delays")
    src, dst = smp.add_computer(), smp.add_computer()
    smp.associate(src, dst)
    root = str(smp.request_capture(src))
    settled: dict = {}
    findings = []
    t0 = time.monotonic()
    checked = 0
    for it in range(WRITE_KILLS):
        r, w = os.pipe()
        try:
            bg = Background(smp.as_uid, src, _workload, root, seed, it, settled, r)
            time.sleep(rng.uniform(0.05, 1.0))
            os.write(w, b"k")
            kill_daemon(smp)
            res, err = bg.get()
        finally:
            os.close(r)
            os.close(w)
        assert err is None, f"iteration {it} (seed {seed}): the workload failed: {err!r}"
        assert res["error"] is None, f"iteration {it} (seed {seed}): {res['error']}"
        findings += fsck_after_crash(smp)
        smp.mount()
        rules, either = rules_from(res["journal"], settled)
        v = smp.as_uid(src, _verify, root, seed, rules, either)
        assert not v["problems"], (f"iteration {it} (seed {seed}), after a kill "
                                   f"{len(res['journal'])} events in:\n  " + "\n  ".join(v["problems"]))
        must = sum(1 for r in rules.values() if r["must"])
        assert v["files"] >= must, f"iteration {it}: verified {v['files']} files of the {must} that must be there"
        checked += v["files"]
        settled = smp.as_uid(src, _settle, root, v["observed"], MAX_SETTLED)
    print(f"kill during writes: {WRITE_KILLS} kills survived, {checked} file checks, "
          f"fsck findings: {len(findings)} (leftovers only), {time.monotonic() - t0:.0f}s")
    # however slow the machine, each kill must have cut into real work
    assert checked >= 10 * WRITE_KILLS, f"only {checked} file checks in {WRITE_KILLS} kills"
    # and the whole store still goes through the lifecycle, read by the destination
    smp.release_capture(src)
    smp.request_restore(dst)
    rules = {n: {"must": True, "exact": [s], "mix": None} for n, s in settled.items()}
    v = smp.as_uid(dst, _verify, root, seed, rules, [])
    assert not v["problems"], v["problems"]


# -- 2. kills during release capture ------------------------------------------------

def _capture_files(root: str, seed, n: int) -> dict:
    rng = random.Random(f"{seed}/capture")
    out = {}
    for i in range(n):
        name = f"USMT{i}.MIG"
        size = rng.randrange(MiB // 2, 3 * MiB)
        fd = _write_file(f"{root}/{name}", gen(seed, name, 1, size), rng)
        os.close(fd)                              # closed, never fsynced
        out[name] = ("ver", 1, size)
    return out


def _try_write(root: str) -> int:
    try:
        with open(f"{root}/after-release", "wb") as f:
            f.write(b"x")
        return 0
    except OSError as e:
        return e.errno


def _assoc(smp, src) -> dict:
    rows = json.loads(smp.cli("association", "list", "--json").out)
    return next(a for a in rows if a["source"].lower() == src.name.lower())


@pytest.mark.min_count(RELEASE_KILLS)
def test_kill_during_release_capture(smp):
    seed = _seed("kill during release capture")
    rng = random.Random(f"{seed}/delays")
    outcomes = []
    for it in range(RELEASE_KILLS):
        src, dst = smp.add_computer(), smp.add_computer()
        smp.associate(src, dst)
        root = str(smp.request_capture(src))
        files = smp.as_uid(src, _capture_files, root, seed, 6)
        # release (as root, through the daemon, like the CLI) and kill it meanwhile
        bg = Background(control.call, smp.state, "release_capture", {"computer": src.name}, 30)
        time.sleep(0.0 if it % 2 == 0 else rng.choice(SHORT_DELAYS))
        kill_daemon(smp)
        _res, err = bg.get()
        fsck_after_crash(smp)
        smp.mount()
        status = _assoc(smp, src)["status"]
        outcomes.append((status, "answered" if err is None else "cut"))
        assert status in ("capturing", "captured"), f"release capture interrupted: store is {status}"
        if err is None:
            assert status == "captured", "release capture answered, but the store is still capturing"
        if status == "capturing":                # before: still the source's, writable
            assert smp.as_uid(src, _try_write, root) == 0
            files["after-release"] = ("hash", h(b"x"))
            smp.release_capture(src)
        else:                                    # after: frozen, for the destination only
            assert smp.as_uid(src, _try_write, root) == errno.EACCES
            assert smp.as_uid(dst, _try_write, root) == errno.EROFS
        smp.request_restore(dst)
        rules = {n: {"must": True, "exact": [s], "mix": None} for n, s in files.items()}
        v = smp.as_uid(dst, _verify, root, seed, rules, [])
        assert not v["problems"], (f"iteration {it} (seed {seed}), release cut at state {status}: "
                                   + "; ".join(v["problems"]))
    print(f"kill during release capture: {RELEASE_KILLS} kills, outcomes {outcomes}")


# -- 3. kills during a retention deletion ----------------------------------------------

def _many_files(root: str, n: int) -> dict:
    out = {}
    for i in range(n):
        data = f"file {i}\n".encode() * (i % 50 + 1)
        with open(f"{root}/f{i:04d}", "wb") as f:
            f.write(data)
        out[f"f{i:04d}"] = ("hash", h(data))
    os.mkdir(f"{root}/big")
    with open(f"{root}/big/blob", "wb") as f:
        data = random.Random(n).randbytes(3 * MiB)
        f.write(data)
    out["big"] = None
    return out


def _read_all(root: str, names: dict) -> list[str]:
    bad = []
    for name, spec in names.items():
        if spec is None:
            continue
        try:
            with open(f"{root}/{name}", "rb") as f:
                if h(f.read()) != spec[1]:
                    bad.append(f"{name}: content differs")
        except OSError as e:
            bad.append(f"{name}: {e}")
    return bad


def _gone(root: str) -> int:
    try:
        os.listdir(root)
        return 0
    except OSError as e:
        return e.errno


@pytest.mark.min_count(RETENTION_KILLS)
def test_kill_during_retention_deletion(smp):
    seed = _seed("kill during retention deletion")
    rng = random.Random(f"{seed}/delays")
    outcomes = []
    folder = smp.status()["folders"][0]["path"]
    for it in range(RETENTION_KILLS):
        src, dst = smp.add_computer(), smp.add_computer()
        smp.associate(src, dst)
        root = smp.request_capture(src)
        files = smp.as_uid(src, _many_files, str(root), 150)
        smp.release_capture(src)
        smp.request_restore(dst)
        smp.release_restore(dst)                 # kept one day by default
        store_id = root.name
        at = (dt.datetime.now() + dt.timedelta(days=30)).isoformat()
        moment = ["when its files start going", "at once", "a moment later"][it % 3]
        bg = Background(control.call, smp.state, "retention_run", {"at": at}, 30)
        if moment == "when its files start going":    # the store dir is renamed aside first
            dying = os.path.join(folder, f".deleting-{store_id}")
            deadline = time.monotonic() + 10
            while not os.path.exists(dying) and bg.is_alive() and time.monotonic() < deadline:
                pass
        elif moment == "a moment later":
            time.sleep(rng.choice(SHORT_DELAYS))
        kill_daemon(smp)
        _res, err = bg.get()
        mid = _assoc(smp, src)["status"]         # the database right after the kill
        fsck_after_crash(smp)
        smp.mount()                              # finishes an interrupted deletion first
        a = _assoc(smp, src)
        outcomes.append((moment, mid, a["status"]))
        assert a["status"] in ("restored", "deleted"), \
            f"retention deletion interrupted: after remount the store is {a['status']}"
        on_disk = sorted(n for n in os.listdir(folder) if store_id in n)
        if a["status"] == "restored":            # before: all there, readable by the destination
            assert err is not None, "retention run answered, but the store was not deleted"
            assert on_disk == [store_id]
            assert smp.as_uid(dst, _read_all, str(root), files) == []
        else:                                    # after: gone for good, key and files
            assert on_disk == [], f"deleted store left {on_disk} in the storage folder"
            assert smp.as_uid(dst, _gone, str(root)) == errno.ENOENT
            r = smp.cli("request", "restore", uid=dst, check=False)
            assert r.code == 15, (r.code, r.err)
            from smpfs.lifecycle.smp import Smp
            s = Smp.open(smp.state)
            try:
                assert s.store(store_id)["wrapped_key"] is None
            finally:
                s.close()
    print(f"kill during retention deletion: {RETENTION_KILLS} kills, "
          f"(moment, db after kill, after remount): {outcomes}")
