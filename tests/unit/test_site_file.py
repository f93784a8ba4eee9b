"""The site file: what it accepts, and mistakes reported with their line and key."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from smpfs import cli
from smpfs.site import sitefile
from smpfs.site.sitefile import SiteFileError

GOOD = """\
[site]
retries = 2
retry_delay = 0.5

[smp.SMP1]
url = "https://10.0.0.5:8443"
sha256 = "FINGERPRINT"

[smp.SMP2]
url = "https://smp2.corp.example:8443/"
cacert = "/etc/smpfs/ca.pem"
timeout = 5

[group.HQ]
ranges = ["10.0.0.0/24", "fd00::/64"]
names = ["HQ-*"]
smps = ["SMP1", "SMP2"]

[group.LAB]
names = ["lab-??"]
smps = ["SMP2"]
""".replace("FINGERPRINT", ":".join(["AB"] * 32))


def test_a_good_site_file_gives_its_smps_and_groups_in_order():
    s = sitefile.parse(GOOD, "site.toml")
    assert list(s.smps) == ["SMP1", "SMP2"]
    assert s.smps["SMP2"].url == "https://smp2.corp.example:8443"
    assert (s.smps["SMP2"].host, s.smps["SMP2"].port, s.smps["SMP2"].timeout) == ("smp2.corp.example", 8443, 5.0)
    assert s.groups["HQ"].smps == ["SMP1", "SMP2"]
    assert (s.retries, s.retry_delay) == (2, 0.5)
    assert s.groups_of("SMP2") == ["HQ", "LAB"]
    assert s.warnings == []


def test_groups_match_addresses_by_range_and_names_by_pattern_in_any_case():
    s = sitefile.parse(GOOD)
    hq, lab = s.groups["HQ"], s.groups["LAB"]
    assert hq.matches_address("10.0.0.77") and not hq.matches_address("10.0.1.1")
    assert hq.matches_address("fd00::5") and not hq.matches_address("fd01::5")
    assert not hq.matches_address("not-an-address") and not hq.matches_address(None)
    assert hq.matches_name("hq-0042") and hq.matches_name("HQ-0042") and not hq.matches_name("BR-0042")
    assert lab.matches_name("LAB-01") and not lab.matches_name("LAB-001")


def _error(text: str) -> str:
    with pytest.raises(SiteFileError) as e:
        sitefile.parse(text, "site.toml")
    assert e.value.exit_code == 2
    return str(e.value)


def test_a_group_naming_an_unknown_smp_is_reported_at_its_line():
    msg = _error(GOOD.replace('smps = ["SMP1", "SMP2"]', 'smps = ["SMP1", "SMP3"]'))
    assert "site.toml, line 17: group.HQ.smps: unknown SMP 'SMP3'" in msg


def test_toml_syntax_errors_say_where():
    msg = _error(GOOD.replace('retries = 2', 'retries = '))
    assert "not valid TOML" in msg and "line 2" in msg


@pytest.mark.parametrize("old,new,expected", [
    ('url = "https://10.0.0.5:8443"', 'url = "http://10.0.0.5:8443"', "line 6: smp.SMP1.url: url must be https"),
    ('url = "https://10.0.0.5:8443"', 'url = "https://10.0.0.5:99999"', "line 6: smp.SMP1.url"),
    ('url = "https://10.0.0.5:8443"', 'uri = "https://10.0.0.5:8443"', "line 6: smp.SMP1.uri: unknown key"),
    ('sha256 = "AB', 'sha256 = "ZZ', "line 7: smp.SMP1.sha256"),
    ('timeout = 5', 'timeout = 0', "line 12: smp.SMP2.timeout"),
    ('"10.0.0.0/24"', '"10.0.0.5/24"', "line 15: group.HQ.ranges: bad address range '10.0.0.5/24'"),
    ('names = ["HQ-*"]', 'names = "HQ-*"', "line 16: group.HQ.names: names must be a list"),
    ('retry_delay = 0.5', 'retry_delay = -1', "line 3: site.retry_delay"),
    ('[group.LAB]\nnames = ["lab-??"]\n', '[group.LAB]\n', "line 19: group.LAB: a boundary group needs ranges"),
    ('smps = ["SMP2"]\n', 'smps = ["SMP2", "SMP2"]\n', "group.LAB.smps: an SMP is listed twice"),
    ('[group.HQ]', '[groups.HQ]', "line 14: groups: unknown table"),
    ('[smp.SMP2]', '[smp."SMP 2"]', "smp.SMP 2: bad smp name"),
])
def test_mistakes_name_their_line_and_key(old, new, expected):
    assert old in GOOD
    assert expected in _error(GOOD.replace(old, new, 1))


def test_a_site_needs_smps_and_groups():
    assert "no SMP" in _error("[group.A]\nnames=['x']\nsmps=[]\n")
    assert "no boundary group" in _error("[smp.A]\nurl = 'https://a:1'\n")


def test_an_smp_in_no_group_is_a_warning_not_an_error():
    s = sitefile.parse(GOOD + '\n[smp.SPARE]\nurl = "https://10.0.0.9:8443"\n')
    assert any("SPARE is in no boundary group" in w for w in s.warnings)


def test_site_check_offline_validates_the_file(tmp_path):
    f = tmp_path / "site.toml"
    f.write_text(GOOD)
    r = CliRunner().invoke(cli.main, ["site", "check", str(f), "--offline", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["valid"] and [s["name"] for s in d["smps"]] == ["SMP1", "SMP2"]
    f.write_text(GOOD.replace('"SMP2"]', '"SMPX"]'))
    r = CliRunner().invoke(cli.main, ["site", "check", str(f), "--offline"])
    assert r.exit_code == 2 and "unknown SMP 'SMPX'" in r.output
    r = CliRunner().invoke(cli.main, ["site", "check", str(tmp_path / "missing.toml"), "--offline"])
    assert r.exit_code == 2 and "cannot read the site file" in r.output
