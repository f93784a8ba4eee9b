"""Computer secrets, their verifiers, the NT hash Samba needs, network settings
and the client's URL handling: no root, no FUSE, no network."""
from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.exceptions import InvalidTag

from smpfs.crypto import secrets, tls
from smpfs.errors import PermissionDenied, UsageError
from smpfs.lifecycle import api, computer, netconfig
from smpfs.lifecycle.smp import Smp
from smpfs.network.client import SmpClient, error_from_wire


def test_md4_and_the_nt_hash_match_published_vectors():
    # RFC 1320 test suite, and the NT hash of "password" every NTLM reference quotes
    assert secrets.md4(b"").hex() == "31d6cfe0d16ae931b73c59d7e0c089c0"
    assert secrets.md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"
    assert secrets.md4(b"message digest").hex() == "d9130a8164549fe818874806e1c7014b"
    assert secrets.md4(b"1234567890" * 8).hex() == "e33b4ddc9c38f2199c3e7b164fcc0536"
    assert secrets.nt_hash("password") == "8846F7EAEE8FB117AD06BDD830B7586C"


def test_a_secret_has_at_least_128_random_bits_and_only_its_verifier_checks():
    a, b = secrets.new_secret(), secrets.new_secret()
    assert a != b and len(a) * 6 >= 128
    v = secrets.make_verifier(a)
    assert a not in v and secrets.check_verifier(v, a)
    assert not secrets.check_verifier(v, b)
    assert not secrets.check_verifier(v, a[:-1])
    assert secrets.make_verifier(a) != v, "salted"
    for broken in (None, "", "md5$00$00", "sha256$zz$00"):
        assert not secrets.check_verifier(broken, a)


def test_a_wrapped_secret_opens_only_under_its_master_key_and_name():
    master = bytes(range(32))
    w = secrets.wrap_secret(master, "PC01", "s3cret")
    assert secrets.unwrap_secret(master, "pc01", w) == "s3cret"
    with pytest.raises(InvalidTag):
        secrets.unwrap_secret(master, "PC02", w)
    with pytest.raises(InvalidTag):
        secrets.unwrap_secret(bytes(32), "PC01", w)


@pytest.fixture
def smp(tmp_path):
    s = Smp.init(tmp_path / "state", server="SMPX")
    yield s
    s.close()


def test_computer_add_stores_a_secret_that_smp_db_never_holds_in_clear(smp):
    c = api.dispatch(smp, 0, "computer_add", {"name": "PC01", "uid": 4242})
    assert "secret_wrapped" not in c and "secret_verifier" not in c
    shown = api.dispatch(smp, 0, "computer_secret", {"name": "PC01"})["secret_value"]
    assert computer.authenticate(smp, "pc01", shown)["uid"] == 4242
    for f in smp.state_dir.glob("smp.db*"):
        assert shown.encode() not in f.read_bytes()
    for row in api.dispatch(smp, 0, "computer_list")["computers"]:
        assert not {"secret_wrapped", "secret_verifier"} & set(row) and shown not in json.dumps(row)
    rotated = api.dispatch(smp, 0, "computer_secret", {"name": "PC01", "rotate": True})["secret_value"]
    assert rotated != shown
    with pytest.raises(PermissionDenied) as e:
        computer.authenticate(smp, "PC01", shown)
    assert e.value.exit_code == 7
    assert [a["nt_hash"] for a in computer.smb_accounts(smp)] == [secrets.nt_hash(rotated)]
    log = json.dumps([dict(r) for r in smp.query("SELECT * FROM audit")])
    assert shown not in log and rotated not in log


def test_computer_secret_refuses_non_root(smp):
    api.dispatch(smp, 0, "computer_add", {"name": "PC01", "uid": 4242})
    with pytest.raises(PermissionDenied) as e:
        api.dispatch(smp, 4242, "computer_secret", {"name": "PC01"})
    assert e.value.exit_code == 7


def test_network_settings_parse_persist_and_show(smp):
    assert netconfig.describe(smp) == {"smb": {"port": None, "address": None},
                                       "http": {"url": None, "certificate": None, "sha256": None}}
    r = api.dispatch(smp, 0, "config", {"smb_port": "1445", "http": "127.0.0.1:8443"})
    assert r["smb"] == {"port": 1445, "address": "0.0.0.0"}
    assert r["http"]["url"] == "https://127.0.0.1:8443"
    cert = r["http"]["certificate"]
    assert r["http"]["sha256"] == tls.fingerprint(cert)
    assert (smp.state_dir / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    r = api.dispatch(smp, 0, "config", {"smb_port": "off", "http": "off"})
    assert r["smb"]["port"] is None and r["http"]["url"] is None
    for bad in ({"http": "8443"}, {"http": "host:99999"}, {"smb_port": "x"}, {"tls_cert": "/nonexistent"}):
        with pytest.raises(UsageError):
            api.dispatch(smp, 0, "config", bad)


def test_a_given_certificate_is_used_and_fingerprinted(smp, tmp_path):
    tls.self_signed(tmp_path / "c.pem", tmp_path / "k.pem", ["smp.example"])
    r = api.dispatch(smp, 0, "config", {"http": "0.0.0.0:8443", "tls_cert": str(tmp_path / "c.pem"),
                                        "tls_key": str(tmp_path / "k.pem")})
    assert r["http"]["certificate"] == str(tmp_path / "c.pem")
    assert r["http"]["url"] == "https://SMPX:8443"
    assert not (smp.state_dir / "tls").exists(), "no self-signed certificate when one is given"
    with pytest.raises(UsageError):
        api.dispatch(smp, 0, "config", {"tls_cert": str(tmp_path / "k.pem"), "tls_key": str(tmp_path / "k.pem")})


def test_fingerprints_are_normalized():
    fp = "ab" * 32
    assert tls.normalize_fingerprint(fp) == ":".join(["AB"] * 32)
    assert tls.normalize_fingerprint(":".join(["ab"] * 32)) == ":".join(["AB"] * 32)
    with pytest.raises(ValueError):
        tls.normalize_fingerprint("abcd")
    assert hashlib.sha256(b"").digest()


def test_the_client_builds_the_smb_url_and_maps_errors_back_to_exit_codes():
    c = SmpClient("https://10.1.2.3:8443", "PC01", "x", sha256="00" * 32)
    r = {"unc": "\\\\SMP1\\SMPSTORED_0A1B2C3D$\\" + "f" * 64, "smb": {"port": 1445}}
    assert c.smb_url(r) == "smb://10.1.2.3:1445/SMPSTORED_0A1B2C3D$/" + "f" * 64
    assert c.smb_url({**r, "smb": {"port": 445}}).startswith("smb://10.1.2.3/SMPSTORED_")
    assert error_from_wire({"type": "NoStorageRoom", "message": "full"}).exit_code == 12
    assert error_from_wire({"type": "Whatever", "exit_code": 13}).exit_code == 13
    with pytest.raises(UsageError):
        SmpClient("http://x:80", "PC01", "x")
    with pytest.raises(UsageError):
        SmpClient("https://x", "PC01", "x", sha256="abc")
