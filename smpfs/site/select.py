"""Choosing an SMP of the site, as ConfigMgr's client does (docs/site.md).

1. **Boundary groups.** The computer is in every group of the site file one
   of whose ``ranges`` holds the client's own address toward that group's
   SMPs (the source address the kernel picks to reach them: no packet is
   sent to find it), or one of whose ``names`` matches the computer's name
   (fnmatch, any case). Its SMPs are those groups' ``smps``, in file order,
   each once. In no group: :class:`~smpfs.errors.OutsideBoundaryGroups` (17),
   and no SMP is asked; like ConfigMgr, no fallback to other groups.
2. **Request capture** asks those SMPs in order; each decides by itself
   (restore-only, max clients, min free space, as it does locally). The
   first that grants a store wins; a refusal for room or restore-only, an
   SMP that does not answer, or one that does not know this computer sends
   the client on to the next. Anything else (e.g. a capture of this computer
   already waiting for its restore) stops the search: it is about the
   computer, and another SMP must not start a second store for it.
3. **Request restore** and the **releases** look for the SMP that holds the
   computer's store: the group's SMPs first, then the rest of the site.
4. **Retries**: when a whole round found nothing and some SMP was full or
   did not answer, another round after ``retry_delay``, ``retries`` times.

Every step is reported through ``on_event`` (the CLI prints it on stderr and
puts it in ``--json``).
"""
from __future__ import annotations

import fnmatch
import ipaddress
import socket
import time
from dataclasses import dataclass

from .. import errors
from ..network.client import SmpClient, Unreachable
from .sitefile import Site

#: refusals after which the client asks the next SMP, per step
_MOVE_ON = {
    "request capture": (errors.NoStorageRoom, errors.RestoreOnlyMode, errors.NotMountedError,
                        errors.UnknownComputer, errors.PermissionDenied),
    "request restore": (errors.NotFound, errors.NotMountedError, errors.UnknownComputer, errors.PermissionDenied),
    "release capture": (errors.NothingToRelease, errors.NotFound, errors.NotMountedError,
                        errors.UnknownComputer, errors.PermissionDenied),
    "release restore": (errors.NothingToRelease, errors.NotFound, errors.NotMountedError,
                        errors.UnknownComputer, errors.PermissionDenied),
}
#: a round that met one of these is worth another round (room may free up, an SMP come back)
_RETRY = (errors.NoStorageRoom, errors.NotMountedError)
#: which refusal the client reports when every SMP refused (first in the list that occurred)
_PRIORITY = {
    "request capture": (errors.NoStorageRoom, errors.RestoreOnlyMode, errors.NotMountedError,
                        errors.UnknownComputer, errors.PermissionDenied),
    "request restore": (errors.NotMountedError, errors.NotFound, errors.UnknownComputer, errors.PermissionDenied),
}
_REASON = {
    errors.NoStorageRoom: "no room", errors.RestoreOnlyMode: "restore-only",
    errors.NotMountedError: "unreachable", errors.UnknownComputer: "does not know this computer",
    errors.PermissionDenied: "refused this computer's credentials", errors.NotFound: "holds no store for it",
    errors.NothingToRelease: "has nothing to release for it",
}


def source_address(host: str, port: int) -> str | None:
    """The local address this host would use to reach ``host:port`` (a UDP
    'connect' only asks the routing table; nothing is sent), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, kind, proto, _name, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.connect(addr)
                return s.getsockname()[0]
        except OSError:
            continue
    return None


@dataclass
class Membership:
    groups: list[str]
    smps: list[str]
    why: dict[str, str]
    addresses: dict[str, str | None]


def boundary(site: Site, computer: str, address_of=source_address) -> Membership:
    """The boundary groups ``computer`` is in, and their SMPs in order."""
    addresses = {s.name: address_of(s.host, s.port) for s in site.smps.values()}
    groups, smps, why = [], [], {}
    for g in site.groups.values():
        reasons = []
        name_hit = next((p for p in g.names if fnmatch.fnmatchcase(computer.lower(), p.lower())), None)
        if name_hit:
            reasons.append(f"name matches {name_hit!r}")
        for s in g.smps:
            a = addresses.get(s)
            if g.matches_address(a):
                net = next(str(r) for r in g.ranges if _in(a, r))
                reasons.append(f"address {a} (toward {s}) is in {net}")
                break
        if reasons:
            groups.append(g.name)
            why[g.name] = "; ".join(reasons)
            smps += [s for s in g.smps if s not in smps]
    return Membership(groups, smps, why, addresses)


def _in(address, net) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.version == net.version and ip in net


class SiteClient:
    """One computer's Request/Release against a site of SMPs."""

    def __init__(self, site: Site, computer: str, secret: str, retries: int | None = None,
                 retry_delay: float | None = None, timeout: float | None = None, cacert: str | None = None,
                 on_event=None, sleep=time.sleep, address_of=source_address, client_factory=SmpClient):
        self.site, self.computer, self.secret = site, computer, secret
        self.retries = site.retries if retries is None else int(retries)
        self.retry_delay = site.retry_delay if retry_delay is None else float(retry_delay)
        self.timeout = timeout
        self.cacert = cacert
        self.on_event = on_event or (lambda e: None)
        self.sleep = sleep
        self.address_of = address_of
        self.client_factory = client_factory
        self.events: list[dict] = []

    def _event(self, **e) -> None:
        self.events.append(e)
        self.on_event(e)

    def _client(self, name: str) -> SmpClient:
        s = self.site.smps[name]
        timeout = s.timeout or self.timeout or self.site.timeout
        return self.client_factory(s.url, self.computer, self.secret, cacert=s.cacert or self.cacert,
                                   sha256=s.sha256, timeout=timeout)

    def order(self, action: str, kind: str) -> tuple[Membership, list[str]]:
        m = boundary(self.site, self.computer, self.address_of)
        self._event(event="boundary", computer=self.computer, groups=m.groups, why=m.why, smps=m.smps,
                    addresses=m.addresses)
        if action == "request" and not m.groups:
            raise errors.OutsideBoundaryGroups(
                f"computer {self.computer} is in no boundary group of {self.site.path} "
                f"(its addresses toward the SMPs: {', '.join(sorted({a or '?' for a in m.addresses.values()}))})",
                "add its address range or a pattern of its name to a [group.NAME] of the site file")
        if action == "request" and kind == "capture":
            return m, m.smps
        return m, m.smps + [s for s in self.site.smps if s not in m.smps]

    def step(self, action: str, kind: str) -> dict:
        """Request or release ``kind`` on the right SMP; the result names the SMP."""
        what = f"{action} {kind}"
        m, order = self.order(action, kind)
        move_on = _MOVE_ON[what]
        last: dict[str, errors.SmpError] = {}
        rounds = 0
        for rnd in range(self.retries + 1):
            last = {}
            rounds = rnd + 1
            for i, name in enumerate(order):
                nxt = order[i + 1] if i + 1 < len(order) else None
                try:
                    result = self._client(name).step(action, kind)
                except move_on as e:
                    last[name] = e
                    self._event(event="refused", smp=name, url=self.site.smps[name].url, round=rnd + 1,
                                step=what, outcome=type(e).__name__, exit_code=e.exit_code,
                                reason=_reason(e), message=e.message,
                                next=f"asking {nxt}" if nxt else "no SMP left in this round")
                    continue
                except errors.SmpError as e:
                    self._event(event="refused", smp=name, url=self.site.smps[name].url, round=rnd + 1,
                                step=what, outcome=type(e).__name__, exit_code=e.exit_code,
                                reason=_reason(e), message=e.message, next="stopping: this answer is final")
                    raise
                self._event(event="granted" if action == "request" else "released", smp=name,
                            url=self.site.smps[name].url, round=rnd + 1, step=what)
                return {**result, "smp": name, "smp_url": self.site.smps[name].url, "groups": m.groups}
            if rnd < self.retries and any(isinstance(e, _RETRY) for e in last.values()):
                self._event(event="retry", round=rnd + 2, delay=self.retry_delay,
                            message=f"no SMP could {what} in round {rnd + 1}; round {rnd + 2} of "
                                    f"{self.retries + 1} in {self.retry_delay:g} s")
                self.sleep(self.retry_delay)
                continue
            break
        raise self._final(what, m, last, rounds)

    def _final(self, what: str, m: Membership, last: dict, rounds: int) -> errors.SmpError:
        summary = "; ".join(f"{n}: {_reason(e)}" for n, e in last.items()) or "no SMP to ask"
        where = f"boundary group {', '.join(m.groups)}" if what == "request capture" else "the site"
        priority = _PRIORITY.get(what, (errors.NotMountedError, errors.NothingToRelease, errors.NotFound,
                                        errors.UnknownComputer, errors.PermissionDenied))
        for cls in priority:
            hit = [e for e in last.values() if isinstance(e, cls)]
            if hit:
                e = type(hit[0]) if not isinstance(hit[0], Unreachable) else errors.NotMountedError
                err = e(f"no SMP of {where} could {what} for {self.computer} "
                        f"(after {rounds} round{'s' if rounds != 1 else ''}): {summary}", hit[0].hint)
                return err
        return errors.SmpError(f"no SMP of {where} could {what} for {self.computer}: {summary}")


def _reason(e: errors.SmpError) -> str:
    for cls, text in _REASON.items():
        if isinstance(e, cls):
            return f"{text} ({e.exit_code})"
    return f"{e.message} ({e.exit_code})"


def check_smp(site: Site, name: str, computer: str | None = None, secret: str | None = None,
              timeout: float | None = None, cacert: str | None = None, client_factory=SmpClient) -> dict:
    """What ``smpfs site check`` shows of one SMP: reachable (TLS handshake with
    the certificate the site file trusts), and with a computer's credentials
    its state from ``GET /v1/info`` (restore-only, folders with clients and
    free space). Never raises for the SMP's answer: it is in the dict."""
    s = site.smps[name]
    out = {"name": name, "url": s.url, "groups": site.groups_of(name), "reachable": False,
           "sha256": None, "state": None, "error": None}
    c = client_factory(s.url, computer or "-", secret or "-", cacert=s.cacert or cacert, sha256=s.sha256,
                       timeout=s.timeout or timeout or site.timeout)
    try:
        out["sha256"] = c.certificate()
        out["reachable"] = True
        if computer and secret:
            out["state"] = c.info()
    except errors.SmpError as e:
        out["error"] = {"type": type(e).__name__, "exit_code": e.exit_code, "message": e.message}
    return out
