"""What smbd needs of the host: Samba's tools and nss_wrapper, a private
runtime directory in RAM, a free port, and finding its processes (the one
listening, and the RPC helpers it starts) through /proc. Used by smb.py."""
from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from ..errors import MountError

log = logging.getLogger("smpfs.network.smb")

SMB_DIR = "smb"
#: Samba's volatile databases: they hold the names of open files (locking.tdb),
#: so they live in RAM (a tmpfs), never in the state dir
RUN_DIRS = ("lock", "state", "cache", "pid", "ncalrpc")
RUNTIME_BASES = ("/run", "/dev/shm")
RUNDIR_NOTE = "rundir"
NSS_WRAPPER_GLOBS = ("/usr/lib/*/libnss_wrapper.so", "/usr/lib64/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so")


def find_nss_wrapper() -> str:
    env = os.environ.get("SMPFS_NSS_WRAPPER")
    for cand in ([env] if env else []) + [p for g in NSS_WRAPPER_GLOBS for p in sorted(glob.glob(g))]:
        if cand and os.path.exists(cand):
            return cand
    raise MountError("SMB needs Samba's nss_wrapper library (libnss_wrapper.so), which is not installed",
                     "Debian: apt-get install samba libnss-wrapper")


def runtime_base(state_dir: Path) -> Path:
    """Where smbd's volatile files go: the first tmpfs of /run, /dev/shm
    (``$SMPFS_RUNTIME_DIR`` overrides), else the state dir's ``smb/``."""
    tmpfs = set()
    try:
        with open("/proc/self/mounts") as f:
            tmpfs = {line.split()[1] for line in f if line.split()[2] == "tmpfs"}
    except OSError:
        pass
    base = os.environ.get("SMPFS_RUNTIME_DIR") or next((b for b in RUNTIME_BASES if b in tmpfs), None)
    if base is None:
        log.info("no tmpfs at %s: Samba's lock databases stay in the state dir", " or ".join(RUNTIME_BASES))
        return Path(state_dir) / SMB_DIR
    return Path(base)


def make_runtime_dir(state_dir: Path) -> Path:
    """A new directory for smbd's volatile files, ``smpfs-smb-<random>`` (mode
    0700) under :func:`runtime_base`, made by mkdtemp: its name cannot be
    guessed before it exists, so nothing another uid plants in a world-writable
    /dev/shm is ever followed or removed. Its name is kept in STATE/smb/rundir
    so that the next mount removes it if this one could not."""
    base = runtime_base(state_dir)
    note = Path(state_dir) / SMB_DIR / RUNDIR_NOTE
    try:
        old = note.read_text().strip()
    except OSError:
        old = ""
    if old:
        remove_runtime_dir(Path(old))
    try:
        path = Path(tempfile.mkdtemp(prefix="smpfs-smb-", dir=base))
    except OSError as e:
        raise MountError(f"cannot create Samba's runtime directory in {base}: {e.strerror}",
                         "set $SMPFS_RUNTIME_DIR to a root-only directory on a tmpfs")
    write_file(note, f"{path}\n", 0o600)
    return path


def own_dir(path: Path) -> bool:
    """``path`` is a directory smpfs made: a real one (not a symlink), ours, 0700."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
            and path.name.startswith("smpfs-smb-"))


def remove_runtime_dir(path: Path) -> None:
    """Remove a runtime directory smpfs made: only a real directory owned by
    root (never a symlink or what another uid put there)."""
    if not os.path.lexists(path):
        return
    if not own_dir(path):
        log.warning("not removing %s: not a directory of smpfs's own", path)
        return
    shutil.rmtree(path, ignore_errors=True)     # rmtree never follows symlinks inside


def find_tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise MountError(f"SMB needs Samba's {name}, which is not installed", "Debian: apt-get install samba")
    return path


def check_port_free(address: str, port: int) -> None:
    """MountError at once if another process listens on ``address:port``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address or "0.0.0.0", port))
        except OSError as e:
            raise MountError(f"cannot serve SMB on {address}:{port}: {e.strerror}",
                             f"another process uses the port (ss -ltnp 'sport = :{port}' names it): stop it, "
                             "or pick another port with `smpfs config --smb-port [ADDR:]PORT`") from None


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a socket listening on TCP ``port``
    (/proc/net/tcp{,6} of this network namespace, and the process's fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False



def helpers_of(conf: Path) -> list[int]:
    """Root's processes started with ``--configfile=CONF`` (Samba's RPC
    helpers of our smbd), found through /proc."""
    want = f"--configfile={conf}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != 0:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if want in args:
            pids.append(int(entry.name))
    return pids


def write_file(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` (mode ``mode``) in one rename."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
