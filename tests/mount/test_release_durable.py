"""A released capture survives a power cut the moment ``release capture`` returns.

The old computer is wiped right after its state is released: once the SMP
has acknowledged the release, every byte captured must be on the disk, not
in the page cache. The storage folder lives on an ext4 image on a loop
device; what reached the "disk" is exactly what the image file holds, so a
copy of the image taken the instant the release returns is the disk after a
power cut then. That copy is mounted (its journal replayed, as at boot) and
the store is read back from it with the recovery key: every file, as the
destination saw it through the mount.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

from loopdisk import loop_ext4, umount
from test_flow import snapshot, write_tree

from smpfs import testing

MiB = 1 << 20


def test_a_released_capture_is_on_disk_when_the_release_returns(tmp_path):
    with loop_ext4(256) as (image, mnt):
        folder = mnt / "folder"
        with testing.mounted(folder=folder) as smp:
            old, new = smp.add_computer(), smp.add_computer()
            smp.associate(old, new)
            store = smp.request_capture(old)
            # written without fsync, released at once: the release must make it durable
            # (enough data that making it durable takes a while: a release that
            # answers first is caught while it is still writing)
            smp.as_uid(old, write_tree, store, random.Random(11).randbytes(96 * MiB + 17))
            smp.release_capture(old)
            cut = tmp_path / "after-power-cut.img"
            shutil.copyfile(image, cut)                 # the disk as it is now
            expected = smp.as_uid(new, snapshot, store)
            shown = json.loads(smp.cli("key", "show", old.name, "--json").out)
            key, rel = shown["recovery_key"], Path(shown["store_path"]).relative_to(mnt)

            rebooted = tmp_path / "rebooted"
            rebooted.mkdir()
            r = subprocess.run(["mount", "-o", "loop", str(cut), str(rebooted)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            try:
                out = tmp_path / "recovered"
                r = smp.cli("recover", "--key", key, rebooted / rel, out, check=False)
                assert r.code == 0, f"the released store did not survive the power cut: {r.err}"
                assert snapshot(out) == expected
            finally:
                umount(rebooted)
