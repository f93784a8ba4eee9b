

def test_capture_release_restore_roundtrip(smp):
    old, new = smp.add_computer(), smp.add_computer()
    smp.associate(old, new)
    store = smp.request_capture(old)
    smp.as_uid(old, lambda: open(f"{store}/USMT.MIG", "wb").write(b"x" * 100))
    smp.release_capture(old)
    assert smp.request_restore(new) == store
    assert smp.as_uid(new, lambda: open(f"{store}/USMT.MIG", "rb").read()) == b"x" * 100
