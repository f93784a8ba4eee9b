"""A small ext4 filesystem on a loop device, for full-disk and read-only-media tests."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True)


@contextlib.contextmanager
def loop_ext4(size_mib: int, *, mode: int = 0o711):
    """Yield ``(image, mountpoint)``: a fresh ext4 of ``size_mib`` MiB mounted
    read-write (no reserved blocks); unmounted and removed afterwards, always."""
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 is missing (apt-get install e2fsprogs)")
    base = Path(tempfile.mkdtemp(prefix="smpfs-loop-"))
    base.chmod(0o711)
    image, mnt = base / "disk.img", base / "mnt"
    mnt.mkdir()
    try:
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        r = _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "root_owner=0:0", str(image))
        assert r.returncode == 0, r.stderr
        r = _run("mount", "-o", "loop", str(image), str(mnt))
        if r.returncode:
            pytest.skip(f"cannot loop-mount an ext4 image here: {r.stderr.strip()}")
        mnt.chmod(mode)
        try:
            yield image, mnt
        finally:
            umount(mnt)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def umount(mnt: Path) -> None:
    if _run("umount", str(mnt)).returncode:
        _run("umount", "-l", str(mnt))


def mount_read_only(image: Path, mnt: Path) -> None:
    r = _run("mount", "-o", "loop,ro", str(image), str(mnt))
    assert r.returncode == 0, r.stderr
