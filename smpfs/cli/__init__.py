"""The ``smpfs`` command line.

Lifecycle and admin commands go to the mounted SMP's daemon over its control
socket (the kernel tells it who calls). When nothing is mounted, root runs the
same code (:func:`smpfs.lifecycle.api.dispatch`) right here; other users are told to ask
an admin. Errors print ``smpfs: <message>`` (and a hint) on stderr and exit
with the error's own code (see smpfs/errors.py, docs/admin.md).

``base`` holds the click group (:func:`main`, the entry point) and the plumbing;
each other module registers one domain's commands on it:

* ``setup``: init, config, folder;
* ``computers``: computer, associate, association, store create;
* ``steps``: request and release, capture and restore;
* ``mounting``: mount, umount, log-level;
* ``reports``: status, log;
* ``recovery``: key show, recover, fsck, retention run, retire;
* ``site``: plan, site check (a site of several SMPs);
* ``network``: computer secret, and the network lines of config and status;
* ``client``: the remote computer's ``client request|release``.
"""
from __future__ import annotations

from . import (  # noqa: F401  (they register commands)
    client,
    computers,
    mounting,
    network,
    recovery,
    reports,
    setup,
    site,
    steps,
)
from .base import main

__all__ = ["main"]
