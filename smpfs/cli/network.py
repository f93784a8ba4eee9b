"""The SMP on the network: ``computer secret`` and how ``config``/``status``
show the SMB and HTTPS settings (see docs/network.md)."""
from __future__ import annotations

import click

from .base import emit_json, json_option, run, want_json
from .computers import computer


@computer.command("secret")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Make a new secret first; the old one stops working at once.")
@json_option
def computer_secret(name, rotate, as_json):
    """Print the computer's secret, one line (root; audited).

    The computer authenticates with it over HTTPS (smpfs client) and SMB
    (user name = computer name). Keep it like a password.

    \b
    Examples:
      smpfs computer secret PC-0042 > pc-0042.secret
      smpfs computer secret PC-0042 --rotate
    """
    r = run("computer_secret", name=name, rotate=rotate or None)
    if want_json(as_json):
        return emit_json(r)
    click.echo(r["secret_value"])


def print_network(r: dict) -> None:
    """The SMB and HTTPS lines of ``smpfs config`` and ``smpfs status``."""
    smb, http = r.get("smb") or {}, r.get("http") or {}
    click.echo(f"smb:           {'port ' + str(smb['port']) if smb.get('port') else 'off'}"
               + (f" on {smb['address']}" if smb.get("port") and smb.get("address") not in (None, "0.0.0.0") else "")
               + (_down(smb) if smb.get("port") else ""))
    click.echo(f"https:         {http.get('url') or 'off'}" + (_down(http) if http.get("url") else ""))
    if http.get("url"):
        click.echo(f"  certificate: {http.get('certificate')}")
        click.echo(f"  sha256:      {http.get('sha256') or '(not made yet)'}")


def _down(service: dict) -> str:
    """What the mounted daemon says of a configured service that does not serve
    now (``status`` only: ``config`` and an unmounted SMP say nothing of it)."""
    if service.get("serving") is False:
        return f"  NOT SERVED: {service.get('problem') or 'down'}"
    return ""


def network_options(fn):
    """``smpfs config``'s network options."""
    for opt in reversed([
        click.option("--smb-port", metavar="[ADDR:]PORT|off", help="Serve the shares over SMB on this port."),
        click.option("--http", metavar="ADDR:PORT|off", help="Serve Request/Release over HTTPS here."),
        click.option("--tls-cert", type=click.Path(dir_okay=False),
                     help="HTTPS certificate (PEM; default: self-signed)."),
        click.option("--tls-key", type=click.Path(dir_okay=False), help="Key of --tls-cert (PEM, unencrypted)."),
    ]):
        fn = opt(fn)
    return fn
