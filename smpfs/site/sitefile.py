"""The site file: a site's SMPs and boundary groups, one TOML file that is the
same on every SMP and client (docs/site.md)::

    [site]                              # optional: the client's defaults
    retries = 2                         # rounds over the group's SMPs after the first
    retry_delay = 10                    # seconds between rounds
    timeout = 15                        # seconds for one SMP to answer

    [smp.SMP1]
    url = "https://10.0.0.5:8443"
    sha256 = "AB:CD:..."                # the certificate `smpfs status` shows; or
    # cacert = "/etc/smpfs/site-ca.pem" # a CA (or the certificate) to trust
    # timeout = 15                      # this SMP's own

    [group.HQ]
    ranges = ["10.0.0.0/24"]            # client addresses (CIDR); and/or
    names = ["HQ-*"]                    # computer-name patterns (fnmatch, any case)
    smps = ["SMP1", "SMP2"]             # in order of preference

Parsing is tomllib's; every other mistake is reported with the key and the
line it is on (:class:`SiteFileError`, a usage error). Nothing here talks to
the network: :mod:`smpfs.site.select` does.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_FINGERPRINT = re.compile(r"([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{64}")

SITE_KEYS = {"retries": int, "retry_delay": (int, float), "timeout": (int, float)}
SMP_KEYS = {"url", "sha256", "cacert", "timeout"}
GROUP_KEYS = {"ranges", "names", "smps"}


class SiteFileError(UsageError):
    """A site file that cannot be used; the message names the file, line and key."""


@dataclass
class SmpEntry:
    name: str
    url: str
    host: str
    port: int
    sha256: str | None = None
    cacert: str | None = None
    timeout: float | None = None


@dataclass
class Group:
    name: str
    smps: list[str]
    ranges: list = field(default_factory=list)     # ipaddress networks
    names: list[str] = field(default_factory=list)

    def matches_name(self, computer: str) -> bool:
        return any(fnmatch.fnmatchcase(computer.lower(), p.lower()) for p in self.names)

    def matches_address(self, address: str | None) -> bool:
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.ranges)


@dataclass
class Site:
    path: str
    smps: dict[str, SmpEntry]
    groups: dict[str, Group]
    retries: int = 0
    retry_delay: float = 10.0
    timeout: float = 30.0
    warnings: list[str] = field(default_factory=list)

    def groups_of(self, smp: str) -> list[str]:
        return [g.name for g in self.groups.values() if smp in g.smps]


def load(path) -> Site:
    """Read and validate the site file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SiteFileError(f"cannot read the site file {p}: {e.strerror}")
    except UnicodeDecodeError as e:
        raise SiteFileError(f"{p}: not UTF-8 text: {e}")
    return parse(text, str(p))


def parse(text: str, path: str = "<site>") -> Site:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SiteFileError(f"{path}: not valid TOML: {e}", "see docs/site.md for the format")
    loc = _Locator(text, path)
    for key in data:
        if key not in ("site", "smp", "group"):
            raise loc.error(key, None, f"unknown table or key {key!r}",
                            "a site file has [site], [smp.NAME] and [group.NAME] tables")
    site = Site(path=path, smps={}, groups={})
    _parse_site(data.get("site", {}), site, loc)
    smps = _table(data, "smp", loc)
    if not smps:
        raise loc.error("smp", None, "no SMP: add at least one [smp.NAME] table with its url")
    for name, body in smps.items():
        site.smps[name] = _parse_smp(name, body, loc)
    groups = _table(data, "group", loc)
    if not groups:
        raise loc.error("group", None, "no boundary group: add at least one [group.NAME] table",
                        "a computer outside every boundary group is refused (as in ConfigMgr)")
    for name, body in groups.items():
        site.groups[name] = _parse_group(name, body, site, loc)
    lower: dict[str, str] = {}
    for name in site.smps:
        if name.lower() in lower:
            raise loc.error(f"smp.{name}", None, f"SMP names differ only by case: {lower[name.lower()]!r}, {name!r}")
        lower[name.lower()] = name
    for name in site.smps:
        if not site.groups_of(name):
            site.warnings.append(f"SMP {name} is in no boundary group: no client will be sent to it "
                                 "(restores still look for stores there)")
    return site


def _parse_site(body, site: Site, loc: _Locator) -> None:
    if not isinstance(body, dict):
        raise loc.error("site", None, "[site] must be a table")
    for key, value in body.items():
        if key not in SITE_KEYS:
            raise loc.error("site", key, f"unknown key {key!r}", f"[site] takes {', '.join(sorted(SITE_KEYS))}")
        if isinstance(value, bool) or not isinstance(value, SITE_KEYS[key]) or value < 0:
            raise loc.error("site", key, f"{key} must be a number, 0 or more, not {value!r}")
    site.retries = int(body.get("retries", site.retries))
    site.retry_delay = float(body.get("retry_delay", site.retry_delay))
    site.timeout = float(body.get("timeout", site.timeout))
    if site.timeout <= 0:
        raise loc.error("site", "timeout", "timeout must be more than 0 seconds")


def _table(data: dict, kind: str, loc: _Locator) -> dict:
    body = data.get(kind, {})
    if not isinstance(body, dict):
        raise loc.error(kind, None, f"{kind} must be tables: [{kind}.NAME]")
    for name, value in body.items():
        if not _NAME.fullmatch(name):
            raise loc.error(f"{kind}.{name}", None, f"bad {kind} name {name!r}",
                            "letters, digits, '.', '_' and '-', at most 63, starting with a letter or digit")
        if not isinstance(value, dict):
            raise loc.error(f"{kind}.{name}", None, f"{kind}.{name} must be a table: [{kind}.{name}]")
    return body


def _parse_smp(name: str, body: dict, loc: _Locator) -> SmpEntry:
    table = f"smp.{name}"
    for key in body:
        if key not in SMP_KEYS:
            raise loc.error(table, key, f"unknown key {key!r}", f"an SMP takes {', '.join(sorted(SMP_KEYS))}")
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise loc.error(table, "url" if "url" in body else None, "every SMP needs url = \"https://HOST:PORT\"")
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port or 443
    except ValueError:
        port = -1
    if u.scheme != "https" or not u.hostname or port < 1 or u.path not in ("", "/") or u.query:
        raise loc.error(table, "url", f"url must be https://HOST[:PORT], not {url!r}",
                        "the HTTPS endpoint `smpfs status` shows on that SMP")
    e = SmpEntry(name=name, url=url.rstrip("/"), host=u.hostname, port=port)
    if "sha256" in body:
        fp = body["sha256"]
        if not isinstance(fp, str) or not _FINGERPRINT.fullmatch(fp.strip()):
            raise loc.error(table, "sha256", "sha256 must be the certificate's SHA-256 fingerprint "
                            "(64 hex digits, with or without colons)", "as `smpfs status` shows it")
        e.sha256 = fp.strip()
    if "cacert" in body:
        if not isinstance(body["cacert"], str) or not body["cacert"]:
            raise loc.error(table, "cacert", "cacert must be a file name")
        e.cacert = body["cacert"]
    if "timeout" in body:
        t = body["timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            raise loc.error(table, "timeout", f"timeout must be seconds, more than 0, not {t!r}")
        e.timeout = float(t)
    return e


def _parse_group(name: str, body: dict, site: Site, loc: _Locator) -> Group:
    table = f"group.{name}"
    for key in body:
        if key not in GROUP_KEYS:
            raise loc.error(table, key, f"unknown key {key!r}", f"a group takes {', '.join(sorted(GROUP_KEYS))}")
    smps = _strings(body, "smps", table, loc)
    if not smps:
        raise loc.error(table, "smps" if "smps" in body else None,
                        "a boundary group needs smps = [\"SMP1\", ...], in order of preference")
    for s in smps:
        if s not in site.smps:
            raise loc.error(table, "smps", f"unknown SMP {s!r}", f"the SMPs are: {', '.join(site.smps)}")
    if len(set(smps)) != len(smps):
        raise loc.error(table, "smps", "an SMP is listed twice")
    names = _strings(body, "names", table, loc)
    ranges = []
    for r in _strings(body, "ranges", table, loc):
        try:
            ranges.append(ipaddress.ip_network(r, strict=True))
        except ValueError as e:
            raise loc.error(table, "ranges", f"bad address range {r!r}: {e}",
                            "a CIDR range with its network address, e.g. 10.0.0.0/24")
    if not names and not ranges:
        raise loc.error(table, None, "a boundary group needs ranges = [...] and/or names = [...]",
                        "otherwise no computer is ever in it")
    return Group(name=name, smps=smps, ranges=ranges, names=names)


def _strings(body: dict, key: str, table: str, loc: _Locator) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise loc.error(table, key, f"{key} must be a list of strings, e.g. {key} = [\"...\"]")
    return [v.strip() for v in value]


class _Locator:
    """Finds the line of ``[table]`` / ``key = ...`` in the text, for messages."""

    def __init__(self, text: str, path: str):
        self.lines = text.splitlines()
        self.path = path

    def line_of(self, table: str, key: str | None) -> int | None:
        header = re.compile(r"\s*\[\s*" + r"\s*\.\s*".join(re.escape(p) for p in table.split(".")) + r"\s*\]")
        start = None
        for i, line in enumerate(self.lines):
            if header.match(line):
                start = i
                break
        if start is None:
            # a bare key at the top (e.g. a typo'd table name), or a dotted table
            first = table.split(".")[0]
            for i, line in enumerate(self.lines):
                if re.match(r"\s*\[?\s*" + re.escape(first) + r"\b", line):
                    return i + 1
            return None
        if key is None:
            return start + 1
        for i in range(start + 1, len(self.lines)):
            line = self.lines[i]
            if re.match(r"\s*\[", line):
                break
            if re.match(r"\s*" + re.escape(key) + r"\s*=", line):
                return i + 1
        return start + 1

    def error(self, table: str, key: str | None, message: str, hint: str | None = None) -> SiteFileError:
        line = self.line_of(table, key)
        where = f"{self.path}" + (f", line {line}" if line else "")
        what = f"{table}.{key}" if key else table
        return SiteFileError(f"{where}: {what}: {message}", hint)
