"""Parsing of the human units the CLI accepts: sizes and durations."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

_SIZE_UNITS = {
    "": 1, "B": 1,
    "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2,
    "G": 1000**3, "GB": 1000**3, "T": 1000**4, "TB": 1000**4,
    "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
}


@dataclass(frozen=True)
class FreeSpec:
    """A minimum-free-space rule: an absolute byte count or a percentage."""

    bytes: int = 0
    percent: float | None = None

    def threshold(self, total_bytes: int) -> int:
        if self.percent is not None:
            return int(total_bytes * self.percent / 100)
        return self.bytes

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return format_size(self.bytes)


def parse_size(text: str) -> int:
    """``500MB`` -> 500_000_000, ``2GiB`` -> 2*2**30. MB/GB are decimal,
    as ConfigMgr's console shows them; KiB/MiB/GiB are binary."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _SIZE_UNITS:
        raise UsageError("invalid size",
                         "write a number with a unit, e.g. 500MB, 2GB, 1GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def parse_free(text: str) -> FreeSpec:
    """A minimum free space: a size (``500MB``) or a share of the drive (``10%``)."""
    t = str(text).strip()
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            pct = -1
        if not 0 <= pct < 100:
            raise UsageError("invalid percentage", "use 0%..99% of the drive, e.g. 10%")
        return FreeSpec(percent=pct)
    try:
        return FreeSpec(bytes=parse_size(t))
    except UsageError as e:
        raise UsageError("invalid minimum free space",
                         "write a size with a unit (500MB, 2GB, 1GiB) or a share of the drive (10%)") from e


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    raise AssertionError


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``30m``, ``12h``, ``7d``, ``1d12h`` -> seconds."""
    t = str(text).strip().lower()
    parts = re.findall(r"(\d+)\s*([smhdw])", t)
    if not t or not parts or re.sub(r"(\d+)\s*([smhdw])", "", t).strip():
        raise UsageError("invalid duration", "write e.g. 30m, 12h, 7d")
    total = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    if total > 36500 * 86400:        # later dates overflow sqlite integers and datetime
        raise UsageError("duration too long", "at most 36500d (100 years)")
    return total


def format_duration(seconds: int) -> str:
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)
