"""``mount.fuse.smpfs``: lets mount(8) and /etc/fstab mount an SMP.

    mount -t fuse.smpfs /var/lib/smpfs /srv/smp -o debug
    # /etc/fstab
    /var/lib/smpfs  /srv/smp  fuse.smpfs  defaults,_netdev  0  0

mount(8) runs ``mount.fuse.smpfs SOURCE MOUNTPOINT -o OPTIONS``; SOURCE is the
state directory. Generic options (rw, defaults, auto, noauto, _netdev, nofail,
user, users, exec, suid, dev ...) are accepted and ignored; ``debug`` turns on
debug logging. Install the helper with ``tools/install-system.sh``.
"""
from __future__ import annotations

import sys

from ..errors import SmpError, UsageError

IGNORED = {"rw", "defaults", "auto", "noauto", "_netdev", "nofail", "user", "users", "nouser",
           "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime",
           "async", "sync", "allow_other"}


def parse(argv: list[str]) -> tuple[str, str, dict]:
    args, opts = [], {}
    it = iter(argv)
    for a in it:
        if a == "-o":
            for o in next(it, "").split(","):
                if o and o not in IGNORED and not o.startswith("x-"):
                    k, _, v = o.partition("=")
                    opts[k] = v or True
        elif a in ("-n", "-f", "-v", "-s", "-i"):       # mount(8)'s own flags
            continue
        else:
            args.append(a)
    if len(args) != 2:
        raise UsageError("usage: mount.fuse.smpfs STATE_DIR MOUNTPOINT [-o options]")
    unknown = set(opts) - {"debug"}
    if unknown:
        raise UsageError(f"unknown smpfs mount option(s): {', '.join(sorted(unknown))}",
                         "smpfs accepts: debug (plus the generic mount options)")
    return args[0], args[1], opts


def main(argv: list[str] | None = None) -> None:
    from . import mounting as daemon
    try:
        state, mountpoint, opts = parse(sys.argv[1:] if argv is None else argv)
        daemon.mount(state, mountpoint, debug=bool(opts.get("debug")))
    except SmpError as e:
        print(f"mount.fuse.smpfs: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
