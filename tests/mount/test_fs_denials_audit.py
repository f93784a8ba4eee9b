"""The filesystem's own refusals reach the audit log, counted, never flooding it."""
from __future__ import annotations

import json
import os

from smpfs.testing import errname


def fs_denied(smp):
    return [e for e in map(json.loads, smp.cli("log", "--json").out.splitlines()) if e["action"] == "fs_denied"]


def test_a_uid_probing_a_store_is_counted_by_uid_and_store_in_few_entries(smp):
    old, new, stranger = smp.add_computer(), smp.add_computer(), smp.add_computer()
    smp.associate(old, new)
    store = smp.request_capture(old)
    probes = 300

    def probe():
        return [errname(os.listdir, store) for _ in range(probes)]
    assert set(smp.as_uid(stranger, probe)) == {"EACCES"}
    smp.release_capture(old)
    assert smp.as_uid(new, errname, lambda: open(f"{store}/x", "w")) == "EROFS"

    smp.umount()                       # the rest of the window is written at unmount
    smp.mount()
    entries = fs_denied(smp)
    mine = [e for e in entries if e["uid"] == stranger.uid]
    assert 1 <= len(mine) <= 2, mine                      # 300 refusals, one window: at most two entries
    assert all(e["store_id"] == store.name and e["outcome"] == "denied" for e in mine)
    assert mine[0]["computer"] == stranger.name
    assert sum(e["detail"]["count"] for e in mine) >= probes
    assert set().union(*(e["detail"]["errnos"] for e in mine)) == {"EACCES"}
    ro = [e for e in entries if e["uid"] == new.uid]
    assert ro and ro[0]["detail"]["errnos"].get("EROFS", 0) >= 1 and ro[0]["store_id"] == store.name
