"""What the daemon sets on its host: systemd's notify socket, the open-file
limit, the mount's read-ahead, and each storage folder's free-space floor."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..store.reserve import reserve_size

log = logging.getLogger("smpfs.mount.daemon")


def sd_notify(msg: str) -> None:
    """Tell systemd (Type=notify) how we are doing; a no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    import socket
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(msg.encode())
    except OSError as e:
        log.warning("could not notify systemd: %s", e)


def raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard one: every control
    connection and open store costs descriptors, and systemd's soft default
    of 1024 is soon reached."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20     # nr_open's default
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.info("could not raise the open-file limit from %s to %s: %s", soft, target, e)
        return
    log.info("open-file limit raised from %s to %s", soft, target)


READAHEAD_KB = 4096


def set_readahead(mountpoint: Path, kb: int = READAHEAD_KB) -> None:
    """Let the kernel read ahead 4 MiB (it defaults to 128 KiB for FUSE): reads
    then arrive as 1 MiB requests, one per block. Found through mountinfo, since a
    stat() of the mount would wait for the loop that is not running yet."""
    dev = None
    try:
        for line in open("/proc/self/mountinfo"):
            f = line.split()
            if f[4] == str(mountpoint):
                dev = f[2]
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as fh:
            fh.write(str(kb))
        log.info("read-ahead of %s (bdi %s) set to %d KiB", mountpoint, dev, kb)
    except (OSError, IndexError) as e:
        log.info("could not raise read-ahead for %s: %s", mountpoint, e)


def min_free_fn(spec, path, state_dir):
    """The folder's minimum free space; on the state dir's filesystem at least
    the state dir's reserve too, so no client can take the room smp.db and the
    log need (computer add, release capture, the audit log)."""
    total, state_reserve = [], []

    def threshold() -> int:
        if not state_reserve:
            try:
                same = os.stat(path).st_dev == os.stat(state_dir).st_dev
            except OSError:
                same = False
            state_reserve.append(reserve_size(state_dir) if same else 0)
        if spec.percent is None:
            return max(spec.bytes, state_reserve[0])
        if not total:                      # a filesystem's size does not change under us
            v = os.statvfs(path)
            total.append(v.f_blocks * v.f_frsize)
        return max(spec.threshold(total[0]), state_reserve[0])
    return threshold
