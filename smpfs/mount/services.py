"""The network services the daemon runs (the CLI composes them, see daemon.py):
stopping them, starting again those a failed unmount stopped, and what
``status`` says of each. A service has ``run(host, task_status)``,
``stop()``, ``changed(cmd, result)``, ``health()`` -> {"serving", "problem", ...}
and ``status_key`` (where status shows it: "smb", "http")."""
from __future__ import annotations

import logging

log = logging.getLogger("smpfs.mount.daemon")


async def stop_all(services) -> None:
    for service in services:
        try:
            await service.stop()
        except Exception:
            log.exception("stopping %s failed", type(service).__name__)


async def start_stopped(services, nursery, host) -> list[str]:
    """Start each service that does not serve; its SmpError reaches the caller."""
    started = []
    for service in services:
        if service.health().get("serving"):
            continue
        await nursery.start(service.run, host)
        started.append(type(service).__name__)
    return started


def add_health(services, result: dict) -> None:
    """Whether each service serves now, into ``result[service.status_key]``."""
    for service in services:
        key = getattr(service, "status_key", None)
        if key and isinstance(result.get(key), dict):
            try:
                result[key].update(service.health())
            except Exception:
                log.exception("%s could not tell its state", type(service).__name__)
