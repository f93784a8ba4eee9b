"""Capacity planning for a site of SMPs: pure arithmetic, nothing is touched.

The seed's rule (Microsoft's sizing note for distribution points, which sizes
an SMP the same way): "100 Megabits/sec = 12.5 Megabytes/sec = 750
Megabytes/min = 45 Gigabytes/hour = 23 images @ 2GB per image". Its first
line, "1 Megabit transfers 8 Megabytes", is a typo: 8 megabits make one
megabyte, so a link of L bit/s moves L/8 bytes a second. The arithmetic,
with decimal units as network speeds and ConfigMgr's console use them
(1 MB = 10^6 bytes, 1 GB = 10^9):

    bytes/hour   = L / 8 * 3600 * (1 - overhead)
    stores/hour  = bytes/hour / state size          (100 Mbit, 2 GB: 22.5;
                                                     the seed rounds it to 23,
                                                     22 of them complete)

The seed assumes **no overhead** (TCP/IP, SMB, TLS, other traffic); so does
:func:`plan` unless given one (20-30 % is a usual real-world allowance).

Each SMP is assumed to have its own link of that speed, clients are assumed
not to be slower than their share of it, and disk and CPU keep up (smpfs
encrypts at several hundred MB/s per core, more than a 1 Gbit link). With
``concurrent`` computers writing at once on one SMP, each gets 1/concurrent
of the link and they finish together, so a window holds only whole *rounds*
of ``concurrent`` stores. Without it, the stores are taken as one stream
(``floor(window bytes / size)``).

Every store of the window is counted on disk at once at the window's end
(it lives until ``retention`` days after its restore is released), so disk
and storage folders are sized for all of an SMP's stores: a folder takes at
most ``max_clients`` stores awaiting their restore (ConfigMgr's "maximum
clients"; restored stores do not count, so this is the worst case, every
store of the window waiting at once) and keeps ``min_free`` free.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from ..errors import UsageError
from ..units import format_size, parse_size

_LINK_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_link(text: str) -> float:
    """A link speed in bits per second: ``100Mbit``, ``100Mbit/s``, ``100Mbps``,
    ``1Gbit``, ``10Gbps``; in bytes with ``B/s``: ``12.5MB/s``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(bit/s|bits/s|bit|bits|bps|b/s|B/s|Bps)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise UsageError("invalid link speed",
                         "write e.g. 100Mbit, 1Gbit (bits per second) or 12.5MB/s (bytes)")
    value = float(m.group(1)) * _LINK_UNITS[m.group(2).lower()]
    unit = m.group(3)
    if unit in ("B/s", "Bps"):
        return value * 8
    return value


def format_link(bits: float) -> str:
    for unit, f in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bits >= f:
            return f"{bits / f:g} {unit}"
    return f"{bits:g} bit/s"


@dataclass
class Plan:
    clients: int
    state_size: int
    link_bits: float
    window_hours: float
    concurrent: int | None
    retention_days: float
    overhead: float
    max_clients: int
    min_free: int
    link_bytes_per_second: float = 0.0
    bytes_per_hour: float = 0.0
    stores_per_hour: float = 0.0
    stores_per_hour_rounded: int = 0
    complete_stores_per_hour: int = 0
    seconds_per_store: float = 0.0
    stores_per_window_per_smp: int = 0
    smps: int = 0
    stores_per_smp: int = 0
    folders_per_smp: int = 0
    disk_per_smp: int = 0
    disk_total: int = 0
    arithmetic: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def plan(clients: int, state_size: int, link_bits: float, window_hours: float,
         concurrent: int | None = None, retention_days: float = 1.0, overhead: float = 0.0,
         max_clients: int = 100, min_free: int = parse_size("500MB")) -> Plan:
    """The SMPs, storage folders and disk that ``clients`` stores of ``state_size``
    bytes need to be captured within ``window_hours`` over links of ``link_bits``."""
    if clients < 1:
        raise UsageError("--clients must be at least 1")
    if state_size <= 0:
        raise UsageError("--state-size must be more than 0")
    if link_bits <= 0 or window_hours <= 0:
        raise UsageError("--link and --window must be more than 0")
    if concurrent is not None and concurrent < 1:
        raise UsageError("--concurrent must be at least 1")
    if not 0 <= overhead < 1:
        raise UsageError("--overhead must be from 0% to 99%")
    if not 1 <= max_clients <= 99999:
        raise UsageError("--max-clients must be 1..99999, as ConfigMgr's")
    if retention_days < 0:
        raise UsageError("--retention must be 0 or more days")
    p = Plan(clients, state_size, link_bits, window_hours, concurrent, retention_days, overhead,
             max_clients, min_free)
    a = p.arithmetic
    p.link_bytes_per_second = link_bits / 8 * (1 - overhead)
    p.bytes_per_hour = p.link_bytes_per_second * 3600
    p.stores_per_hour = p.bytes_per_hour / state_size
    p.stores_per_hour_rounded = math.floor(p.stores_per_hour + 0.5)
    p.complete_stores_per_hour = math.floor(p.stores_per_hour + 1e-9)
    eff = f" x {1 - overhead:g} (overhead {overhead * 100:g}%)" if overhead else ""
    a.append(f"link: {format_link(link_bits)} / 8 bits per byte{eff} = "
             f"{format_size(p.link_bytes_per_second)}/s")
    a.append(f"per hour: {format_size(p.link_bytes_per_second)}/s x 60 = {format_size(p.bytes_per_hour / 60)}/min "
             f"x 60 = {format_size(p.bytes_per_hour)}/hour")
    a.append(f"stores per hour on one link: {format_size(p.bytes_per_hour)} / {format_size(state_size)} = "
             f"{p.stores_per_hour:.2f} (~{p.stores_per_hour_rounded}; {p.complete_stores_per_hour} complete)")
    window_seconds = window_hours * 3600
    if concurrent:
        p.seconds_per_store = state_size * concurrent / p.link_bytes_per_second
        rounds = math.floor(window_seconds / p.seconds_per_store + 1e-9)
        p.stores_per_window_per_smp = rounds * concurrent
        a.append(f"{concurrent} at once share the link: each store takes {format_size(state_size)} x "
                 f"{concurrent} / {format_size(p.link_bytes_per_second)}/s = {_hours(p.seconds_per_store)}")
        a.append(f"in {window_hours:g} h: {rounds} whole round(s) of {concurrent} = "
                 f"{p.stores_per_window_per_smp} stores per SMP")
    else:
        p.seconds_per_store = state_size / p.link_bytes_per_second
        p.stores_per_window_per_smp = math.floor(p.bytes_per_hour * window_hours / state_size + 1e-9)
        a.append(f"in {window_hours:g} h: {format_size(p.bytes_per_hour * window_hours)} / "
                 f"{format_size(state_size)} = {p.stores_per_window_per_smp} whole stores per SMP")
    if p.stores_per_window_per_smp == 0:
        raise UsageError(
            f"not one store fits in the window: one takes {_hours(p.seconds_per_store)} "
            f"on this link, the window is {window_hours:g} h",
            "a longer --window, a faster --link, or fewer --concurrent")
    p.smps = math.ceil(clients / p.stores_per_window_per_smp)
    p.stores_per_smp = math.ceil(clients / p.smps)
    a.append(f"SMPs: {clients} clients / {p.stores_per_window_per_smp} per SMP, rounded up = {p.smps} "
             f"(at most {p.stores_per_smp} stores each)")
    p.folders_per_smp = math.ceil(p.stores_per_smp / max_clients)
    a.append(f"storage folders per SMP: {p.stores_per_smp} stores / {max_clients} max clients, rounded up = "
             f"{p.folders_per_smp}")
    p.disk_per_smp = p.stores_per_smp * state_size + p.folders_per_smp * min_free
    p.disk_total = p.disk_per_smp * p.smps
    a.append(f"disk per SMP: {p.stores_per_smp} x {format_size(state_size)} + {p.folders_per_smp} x "
             f"{format_size(min_free)} min free = {format_size(p.disk_per_smp)} "
             f"(site: {format_size(p.disk_total)})")
    p.assumptions = [
        "decimal units: 1 MB = 10^6 bytes, 1 Mbit = 10^6 bits, 8 bits = 1 byte "
        "(the seed's '1 Megabit transfers 8 Megabytes' is a typo for 8 megabits = 1 megabyte)",
        f"protocol overhead {overhead * 100:g}%" + (" (as the seed: none)" if not overhead else ""),
        "each SMP has its own link of this speed; clients, disks and CPUs keep up with it",
        "every store of the window is on disk at once at its end",
        f"stores are deleted {retention_days:g} day(s) after their restore is released: "
        "the disk is needed until then",
    ]
    return p


def _hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
