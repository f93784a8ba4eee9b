"""`smpfs plan`: the capacity arithmetic, on cases worked out by hand."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from smpfs import cli
from smpfs.errors import UsageError
from smpfs.site.plan import parse_link, plan

GB = 10**9


def test_the_seeds_example_gives_about_23_two_gigabyte_stores_an_hour_on_100_mbit():
    # 100 Mbit/s / 8 = 12.5 MB/s; x 3600 = 45 GB/hour; / 2 GB = 22.5 (the seed says 23)
    p = plan(clients=23, state_size=2 * GB, link_bits=100e6, window_hours=1)
    assert p.link_bytes_per_second == 12.5e6
    assert p.bytes_per_hour == 45e9
    assert p.bytes_per_hour / 60 == 750e6            # the seed's 750 Megabytes/min
    assert p.stores_per_hour == 22.5
    assert p.stores_per_hour_rounded == 23
    assert p.complete_stores_per_hour == 22
    # only 22 whole stores fit in one hour, so 23 clients need a second SMP
    assert p.stores_per_window_per_smp == 22
    assert (p.smps, p.stores_per_smp) == (2, 12)
    assert any("typo" in a for a in p.assumptions)
    assert any("overhead 0%" in a for a in p.assumptions)


def test_a_thousand_clients_of_4gb_in_an_8_hour_window_on_100_mbit():
    # 45 GB/h x 8 h = 360 GB / 4 GB = 90 per SMP; 1000/90 -> 12 SMPs; 1000/12 -> 84 each;
    # 84 <= 100 max clients -> 1 folder; disk 84 x 4 GB + 500 MB = 336.5 GB; site x 12
    p = plan(clients=1000, state_size=4 * GB, link_bits=100e6, window_hours=8)
    assert p.stores_per_hour == 11.25
    assert p.stores_per_window_per_smp == 90
    assert (p.smps, p.stores_per_smp, p.folders_per_smp) == (12, 84, 1)
    assert p.disk_per_smp == 336_500_000_000
    assert p.disk_total == 12 * 336_500_000_000


def test_concurrent_writers_share_the_link_and_only_whole_rounds_count():
    # 1 Gbit/s = 125 MB/s; 20 x 8 GB at once: 160 GB / 125 MB/s = 1280 s each round;
    # 10 h = 36000 s / 1280 = 28.1 -> 28 rounds x 20 = 560 per SMP -> 1 SMP;
    # 500 stores / 100 max clients = 5 folders; 500 x 8 GB + 5 x 500 MB
    p = plan(clients=500, state_size=8 * GB, link_bits=1e9, window_hours=10, concurrent=20)
    assert p.seconds_per_store == 1280
    assert p.stores_per_window_per_smp == 560
    assert (p.smps, p.folders_per_smp) == (1, 5)
    assert p.disk_per_smp == 500 * 8 * GB + 5 * 500_000_000


def test_overhead_takes_its_share_of_the_link():
    # 20% of 12.5 MB/s lost: 10 MB/s = 36 GB/h = 18 stores of 2 GB
    p = plan(clients=18, state_size=2 * GB, link_bits=100e6, window_hours=1, overhead=0.2)
    assert p.stores_per_hour == pytest.approx(18)
    assert p.smps == 1


def test_a_window_too_short_for_one_round_is_refused_with_the_reason():
    # 23 at once on 12.5 MB/s: 46 GB take 3680 s > the 3600 s window
    with pytest.raises(UsageError, match="not one store fits"):
        plan(clients=23, state_size=2 * GB, link_bits=100e6, window_hours=1, concurrent=23)


@pytest.mark.parametrize("text,bits", [
    ("100Mbit", 100e6), ("100Mbit/s", 100e6), ("100Mbps", 100e6), ("1Gbit", 1e9), ("10 Gbps", 10e9),
    ("12.5MB/s", 100e6), ("512kbit", 512e3),
])
def test_link_speeds_in_bits_or_bytes(text, bits):
    assert parse_link(text) == bits


@pytest.mark.parametrize("bad", ["100", "fast", "100MB", "0Mbit", "-1Gbit", ""])
def test_a_link_speed_without_a_clear_unit_is_refused(bad):
    with pytest.raises(UsageError):
        parse_link(bad)


def test_smpfs_plan_prints_the_arithmetic_and_json():
    r = CliRunner().invoke(cli.main, ["plan", "--clients", "23", "--state-size", "2GB", "--link", "100Mbit",
                                      "--window", "1"])
    assert r.exit_code == 0, r.output
    assert "22.50 (~23" in r.output and "45.0GB/hour" in r.output and "750.0MB/min" in r.output
    r = CliRunner().invoke(cli.main, ["plan", "--clients", "100", "--state-size", "2GB", "--link", "100Mbit",
                                      "--window", "2", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["stores_per_hour"] == 22.5 and d["stores_per_window_per_smp"] == 45 and d["smps"] == 3
    r = CliRunner().invoke(cli.main, ["plan", "--clients", "1", "--state-size", "2GB", "--link", "fast",
                                      "--window", "1"])
    assert r.exit_code == 2 and "invalid link speed" in r.output
