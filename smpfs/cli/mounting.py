"""Serving the SMP: ``mount``, ``umount`` and the running daemon's ``log-level``."""
from __future__ import annotations

import os

import click

from .base import emit_json, json_option, main, require_admin, state_dir, want_json


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground (for systemd, debugging).")
@click.option("--debug", is_flag=True, help="Log every lifecycle step and error in detail.")
@json_option
@click.pass_obj
def mount(obj, mountpoint, foreground, debug, as_json):
    """Mount the SMP at MOUNTPOINT; returns once the mount answers.

    \b
    Example:
      smpfs --state /var/lib/smpfs mount /srv/smp
      ls '/srv/smp/SMPSTORED_3A9F01C2$/'
    """
    require_admin("mount")
    from ..mount import mounting as daemon
    services = ()
    if foreground:             # the daemon itself: it serves what `smpfs config` set up
        from ..network import services_for
        services = services_for(obj.state)
    notes = daemon.mount(obj.state, mountpoint, foreground=foreground, debug=debug, services=services) or []
    if want_json(as_json):
        return emit_json({"mountpoint": os.path.abspath(mountpoint), "state_dir": obj.state,
                          "mounted": not foreground, "notes": notes})
    for note in notes:
        click.echo(f"smpfs mount: {note}", err=True)


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@json_option
@click.pass_obj
def umount(obj, mountpoint, as_json):
    """Flush everything, unmount MOUNTPOINT and wait for the daemon to exit.

    \b
    Example:
      smpfs umount /srv/smp
    """
    require_admin("umount")
    from ..mount import mounting as daemon
    cleared = daemon.umount(obj.state, mountpoint) == "cleared"
    if cleared and not want_json(as_json):
        click.echo(f"smpfs: cleared the dead mount at {mountpoint} (its daemon had died)", err=True)
    if want_json(as_json):
        return emit_json({"mountpoint": os.path.abspath(mountpoint), "state_dir": obj.state, "mounted": False,
                          "cleared_dead_mount": cleared})


@main.command("log-level")
@click.argument("level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@json_option
def log_level(level, as_json):
    """Change the running daemon's log level, no remount needed (root).

    \b
    Example:
      smpfs log-level debug
    """
    from ..errors import NotMountedError
    from ..mount import control
    try:
        r = control.call(state_dir(), "log_level", {"level": level})   # the daemon refuses (and audits) non-root
    except NotMountedError:
        require_admin("log-level")
        raise
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"log level: {r['level']}")
