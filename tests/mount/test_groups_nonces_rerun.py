"""Group changes, a rolled-back nonce record, and re-run restores against retention."""
from __future__ import annotations

import errno
import os
import time

from smpfs.crypto import keys as key
from smpfs.lifecycle import api, retention
from smpfs.lifecycle.smp import Smp
from smpfs.store import counter, layout, statestore


def test_owner_may_give_a_file_only_to_its_own_groups(smp):
    comp = smp.add_computer()
    store = smp.request_capture(comp)

    def chgrp(gid):
        path = f"{store}/f"
        open(path, "w").close()
        try:
            os.chown(path, -1, gid)
            return "ok", os.stat(path).st_gid
        except OSError as e:
            return errno.errorcode[e.errno], os.stat(path).st_gid

    assert smp.as_uid(comp, chgrp, comp.uid) == ("ok", comp.uid)       # its own group: fine
    assert smp.as_uid(comp, chgrp, 0) == ("EPERM", comp.uid)           # root's group: refused
    assert smp.as_uid(comp, chgrp, 12345) == ("EPERM", comp.uid)       # a stranger's: refused


def test_rolled_back_counter_files_cannot_make_nonces_repeat(tmp_path):
    """Whoever can write the storage folder can put back an old store.db and
    counter file; the SMP's own record of the high-water mark (smp.db) still
    keeps every later counter above every one already used."""
    sid = os.urandom(32).hex()
    keys = key.StoreKeys.from_data_key(sid, key.new_data_key())
    path = layout.create_store(tmp_path, sid, keys, 1000)
    saved_db = (path / "store.db").read_bytes()
    recorded = []
    st = statestore.StateStore(path, keys, on_reserve=recorded.append)
    ino = st.mknode(layout.ROOT, b"f", 0o100644, 1000, 1000).ino
    st.write(ino, 0, b"x" * 100)
    st.flush_inode(ino)
    used = st.db.execute("SELECT counter FROM blocks").fetchone()[0]
    st.close()
    assert recorded and recorded[-1] >= used
    # roll the store's own records back to before anything was written
    os.unlink(path / counter.COUNTER_FILE)
    for suffix in ("-wal", "-shm"):
        if (path / f"store.db{suffix}").exists():
            os.unlink(path / f"store.db{suffix}")
    (path / "store.db").write_bytes(saved_db)
    st = statestore.StateStore(path, keys, min_counter=recorded[-1])
    ino = st.mknode(layout.ROOT, b"g", 0o100644, 1000, 1000).ino
    st.write(ino, 0, b"y" * 100)
    st.flush_inode(ino)
    assert st.db.execute("SELECT counter FROM blocks").fetchone()[0] > recorded[-1] >= used
    st.close()


def test_smp_db_keeps_the_high_water_mark_of_a_mounted_store(smp):
    comp = smp.add_computer()
    store = smp.request_capture(comp)
    smp.as_uid(comp, lambda: open(f"{store}/f", "wb").write(b"z" * 3000))
    s = Smp.open(smp.state)
    try:
        assert s.store(store.name)["nonce_hwm"] >= 1
    finally:
        s.close()


def test_a_rerun_restore_is_not_deleted_under_its_reader(tmp_path):
    s = Smp.init(tmp_path / "state", server="SMP01")
    try:
        for name, uid in (("PC-OLD", 1001), ("PC-NEW", 1002)):
            api.dispatch(s, 0, "computer_add", {"name": name, "uid": uid})
        api.dispatch(s, 0, "associate", {"source": "PC-OLD", "dest": "PC-NEW"})
        api.dispatch(s, 0, "config", {"delete_after": "1h"})
        sid = api.dispatch(s, 1001, "request_capture", {})["store_id"]
        api.dispatch(s, 1001, "release_capture", {})
        api.dispatch(s, 1002, "request_restore", {})
        api.dispatch(s, 1002, "release_restore", {})
        api.dispatch(s, 1002, "request_restore", {})           # the restore is run again
        assert retention.sweep(s, now=time.time() + 7200) == []
        assert s.store(sid)["status"] == "restoring"
        api.dispatch(s, 1002, "release_restore", {})            # a new deadline from now
        assert retention.sweep(s, now=time.time() + 60) == []
        assert [d["store_id"] for d in retention.sweep(s, now=time.time() + 7200)] == [sid]
    finally:
        s.close()
