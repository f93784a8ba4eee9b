"""The SMP on the network: SMB (Samba's smbd) for the state stores, HTTPS for
Request/Release, and the client for remote computers.

Layering: this package sits *above* ``smpfs.mount`` and below the CLI. The
mount daemon knows nothing of it; ``smpfs mount`` composes them: it builds
the configured services (:func:`services_for`) and hands them to the daemon,
which starts them with the mount, tells them about every lifecycle command
and stops them before it unmounts. So the network code uses only the
daemon's small service interface (``call``, ``mountpoint``, ``state_dir``)
and the lifecycle layer's functions, and the mount never imports it.
"""
from __future__ import annotations

from pathlib import Path

from ..lifecycle import netconfig
from ..lifecycle.smp import Smp


def services_for(state_dir) -> list:
    """The network services the SMP at ``state_dir`` is configured to run."""
    from .https import HttpsService
    from .smb import SmbService
    smp = Smp.open(Path(state_dir))
    try:
        smb = netconfig.smb_endpoint(smp)
        http = netconfig.http_endpoint(smp)
        services: list = []
        if smb is not None:
            services.append(SmbService(smp.state_dir, smb[0], smb[1]))
        if http is not None:
            cert, key = netconfig.ensure_certificate(smp)
            services.append(HttpsService(http[0], http[1], cert, key, smb_port=smb[1] if smb else None))
        return services
    finally:
        smp.close()
