"""Choosing an SMP of the site: boundary groups, order, fallback and the final
refusal, with each SMP's answer scripted (the real thing, over HTTPS to two
mounted SMPs, is tests/mount/test_site_selection.py)."""
from __future__ import annotations

import pytest

from smpfs import errors
from smpfs.network.client import Unreachable
from smpfs.site import sitefile
from smpfs.site.select import SiteClient, boundary

SITE = """
[smp.A]
url = "https://10.0.0.5:8443"
[smp.B]
url = "https://10.0.1.5:8443"
[smp.C]
url = "https://192.168.7.5:8443"
[group.HQ]
ranges = ["10.0.0.0/24"]
smps = ["A", "B"]
[group.LAB]
names = ["LAB-*"]
smps = ["B", "C"]
"""

# the client's own address toward each SMP, as the routing table would give it
ADDRS = {"10.0.0.5": "10.0.0.77", "10.0.1.5": "10.0.0.77", "192.168.7.5": "192.168.7.1"}


def addr_of(host, port):
    return ADDRS.get(host)


def test_groups_by_address_toward_their_smps_and_by_name_merge_in_file_order():
    s = sitefile.parse(SITE)
    m = boundary(s, "LAB-01", addr_of)
    assert m.groups == ["HQ", "LAB"] and m.smps == ["A", "B", "C"]
    assert "10.0.0.77" in m.why["HQ"] and "LAB-*" in m.why["LAB"]
    assert boundary(s, "pc-9", addr_of).groups == ["HQ"]
    assert boundary(s, "lab-9", lambda h, p: "172.16.0.1").smps == ["B", "C"]
    assert boundary(s, "pc-9", lambda h, p: None).groups == []


class Scripted:
    """Stands for one SMP's HTTPS API: answers with what the test scripted for it."""
    answers: dict = {}
    asked: list = []

    def __init__(self, url, computer, secret, **kw):
        self.name = {"10.0.0.5": "A", "10.0.1.5": "B", "192.168.7.5": "C"}[url.split("//")[1].split(":")[0]]

    def step(self, action, kind):
        Scripted.asked.append(self.name)
        a = Scripted.answers[self.name]
        a = a.pop(0) if isinstance(a, list) else a
        if isinstance(a, Exception):
            raise a
        return {"unc": f"\\\\{self.name}\\S$\\1"}


def client(answers, retries=0, computer="pc-1"):
    Scripted.answers, Scripted.asked = answers, []
    slept = []
    sc = SiteClient(sitefile.parse(SITE), computer, "x" * 32, retries=retries, retry_delay=3,
                    sleep=slept.append, address_of=addr_of, client_factory=Scripted)
    return sc, slept


def test_a_capture_moves_on_from_a_full_smp_and_never_leaves_the_group():
    sc, _ = client({"A": errors.NoStorageRoom("full"), "B": None, "C": None})
    assert sc.step("request", "capture")["smp"] == "B"
    sc, slept = client({"A": errors.NoStorageRoom("full"), "B": Unreachable("down"), "C": None}, retries=2)
    with pytest.raises(errors.NoStorageRoom, match="A: no room.*B: unreachable"):
        sc.step("request", "capture")
    assert Scripted.asked == ["A", "B"] * 3 and slept == [3, 3]       # C is not in HQ


def test_the_final_refusal_counts_the_rounds_that_were_run():
    sc, slept = client({"A": errors.PermissionDenied("bad secret"), "B": errors.PermissionDenied("bad secret")},
                       retries=1)
    with pytest.raises(errors.PermissionDenied, match=r"\(after 1 round\)") as e:
        sc.step("request", "capture")
    assert Scripted.asked == ["A", "B"] and slept == [] and "2 round" not in e.value.message
    sc, slept = client({"A": errors.NoStorageRoom("full"), "B": errors.NoStorageRoom("full")}, retries=1)
    with pytest.raises(errors.NoStorageRoom, match=r"\(after 2 rounds\)"):
        sc.step("request", "capture")
    assert slept == [3]


def test_a_refusal_about_the_computer_itself_stops_the_search():
    sc, _ = client({"A": errors.CaptureInProgress("awaiting restore"), "B": None})
    with pytest.raises(errors.CaptureInProgress):
        sc.step("request", "capture")
    assert Scripted.asked == ["A"]


def test_a_restore_looks_through_the_group_then_the_whole_site():
    sc, _ = client({"A": errors.NotFound("none"), "B": errors.UnknownComputer("who?"), "C": None})
    r = sc.step("request", "restore")
    assert r["smp"] == "C" and Scripted.asked == ["A", "B", "C"]
    sc, slept = client({"A": errors.NotFound("none"), "B": errors.NotFound("none"), "C": errors.NotFound("no")},
                       retries=3)
    with pytest.raises(errors.NotFound):
        sc.step("request", "restore")
    assert slept == []                              # nobody full or down: asking again would not help


def test_a_request_outside_every_group_asks_no_smp_but_a_release_still_finds_its_store():
    sc, _ = client({"A": None, "B": None, "C": None}, computer="pc-1")
    sc.address_of = lambda h, p: "172.16.0.1"
    with pytest.raises(errors.OutsideBoundaryGroups) as e:
        sc.step("request", "capture")
    assert e.value.exit_code == 17 and Scripted.asked == []
    sc.answers = Scripted.answers = {"A": errors.NothingToRelease("no"), "B": None}
    assert sc.step("release", "capture")["smp"] == "B"


def test_a_computer_added_with_the_secret_it_has_on_another_smp_authenticates_with_it(tmp_path):
    from smpfs.lifecycle import api
    from smpfs.lifecycle.smp import Smp
    smp1, smp2 = Smp.init(tmp_path / "s1", server="SMP1"), Smp.init(tmp_path / "s2", server="SMP2")
    try:
        api.dispatch(smp1, 0, "computer_add", {"name": "PC-1", "uid": 4001})
        secret = api.dispatch(smp1, 0, "computer_secret", {"name": "PC-1"})["secret_value"]
        api.dispatch(smp2, 0, "computer_add", {"name": "PC-1", "uid": 4001, "secret_value": secret})
        assert api.dispatch(smp2, 0, "computer_auth", {"name": "PC-1", "secret_value": secret})["uid"] == 4001
        assert api.dispatch(smp2, 0, "computer_secret", {"name": "PC-1"})["secret_value"] == secret
        with pytest.raises(errors.PermissionDenied):
            api.dispatch(smp2, 0, "computer_auth", {"name": "PC-1", "secret_value": secret + "x"})
        for weak in ("short", "has a space in it, long enough", ""):
            with pytest.raises(errors.UsageError, match="at least 128 bits"):
                api.dispatch(smp2, 0, "computer_add", {"name": "PC-2", "uid": 4002, "secret_value": weak})
        with pytest.raises(errors.PermissionDenied):          # a computer's uid cannot add one
            api.dispatch(smp2, 4001, "computer_add", {"name": "PC-3", "uid": 4003, "secret_value": secret})
        log = api.dispatch(smp2, 0, "log", {})
        assert secret not in str(log) and "secret_given" in str(log)
    finally:
        smp1.close()
        smp2.close()
