"""Serving the SMP: ``mount``, ``umount`` and the running daemon's ``log-level``."""
from __future__ import annotations

import click

from .base import main, state_dir


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground (for systemd, debugging).")
@click.option("--debug", is_flag=True, help="Log every lifecycle step and error in detail.")
@click.pass_obj
def mount(obj, mountpoint, foreground, debug):
    """Mount the SMP at MOUNTPOINT; returns once the mount answers.

    \b
    Example:
      smpfs --state /var/lib/smpfs mount /srv/smp
      ls '/srv/smp/SMPSTORED_3A9F01C2$/'
    """
    from ..mount import daemon
    services = ()
    if foreground:             # the daemon itself: it serves what `smpfs config` set up
        from ..network import services_for
        services = services_for(obj.state)
    daemon.mount(obj.state, mountpoint, foreground=foreground, debug=debug, services=services)


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.pass_obj
def umount(obj, mountpoint):
    """Flush everything, unmount MOUNTPOINT and wait for the daemon to exit.

    \b
    Example:
      smpfs umount /srv/smp
    """
    from ..mount import daemon
    if daemon.umount(obj.state, mountpoint) == "cleared":
        click.echo(f"smpfs: cleared the dead mount at {mountpoint} (its daemon had died)", err=True)


@main.command("log-level")
@click.argument("level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def log_level(level):
    """Change the running daemon's log level, no remount needed (root).

    \b
    Example:
      smpfs log-level debug
    """
    from ..mount import control
    r = control.call(state_dir(), "log_level", {"level": level})
    click.echo(f"log level: {r['level']}")
