"""``smpfs client``: Request/Release State Store from another machine, over
the SMP's HTTPS API (docs/network.md). Needs no root, no FUSE, no state dir."""
from __future__ import annotations

import click

from .base import emit_json, main, want_json


@main.group()
def client():
    """Ask a remote SMP for a state store, as a computer (over HTTPS)."""


def _client_options(fn):
    for opt in reversed([
        click.argument("kind", type=click.Choice(["capture", "restore"])),
        click.option("--smp", "url", required=True, metavar="URL", help="The SMP: https://HOST:PORT"),
        click.option("--computer", required=True, help="This computer's name on the SMP."),
        click.option("--secret-file", required=True, type=click.Path(dir_okay=False),
                     help="File holding the computer's secret (smpfs computer secret NAME)."),
        click.option("--cacert", type=click.Path(dir_okay=False), help="Trust this CA (or self-signed) certificate."),
        click.option("--sha256", metavar="FINGERPRINT", help="Trust exactly the certificate with this fingerprint."),
        click.option("--retries", type=click.IntRange(0, 10000), default=0, show_default=True,
                     help="Ask again this many times while the SMP is full or unreachable."),
        click.option("--retry-delay", type=click.FloatRange(0, 86400), default=30, show_default=True,
                     metavar="SECONDS", help="Seconds between attempts."),
        click.option("--timeout", type=click.FloatRange(1, 3600), default=60, show_default=True,
                     metavar="SECONDS", help="Give up on one attempt after this long."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON (with smb_url)."),
    ]):
        fn = opt(fn)
    return fn


def _run(action, kind, url, computer, secret_file, cacert, sha256, retries, retry_delay, timeout, as_json):
    from ..network.client import SmpClient, read_secret, run_step
    c = SmpClient(url, computer, read_secret(secret_file), cacert=cacert, sha256=sha256, timeout=timeout)
    events = []

    def on_event(e):
        events.append(e)
        if e["outcome"] != "ok":
            click.echo(f"smpfs: {e['smp']}: attempt {e['attempt']}: {e.get('message', e['outcome'])}", err=True)
    r = run_step(c, action, kind, retries=retries, retry_delay=retry_delay, on_event=on_event)
    if want_json(as_json):
        return emit_json({**r, "attempts": events})
    return r


@client.command("request")
@_client_options
def client_request(kind, url, computer, secret_file, cacert, sha256, retries, retry_delay, timeout, as_json):
    """Request a state store; print its UNC path (with --json also smb_url).

    \b
    Example:
      smpfs client request capture --smp https://smp1:8443 --computer PC-0042 \\
          --secret-file /etc/smpfs/pc-0042.secret --cacert smp1.pem
    """
    r = _run("request", kind, url, computer, secret_file, cacert, sha256, retries, retry_delay, timeout, as_json)
    if r is not None:
        click.echo(r["unc"])


@client.command("release")
@_client_options
def client_release(kind, url, computer, secret_file, cacert, sha256, retries, retry_delay, timeout, as_json):
    """Release the state store (capture: done writing; restore: done reading).

    \b
    Example:
      smpfs client release capture --smp https://smp1:8443 --computer PC-0042 \\
          --secret-file /etc/smpfs/pc-0042.secret --sha256 AB:CD:...
    """
    r = _run("release", kind, url, computer, secret_file, cacert, sha256, retries, retry_delay, timeout, as_json)
    if r is not None:
        click.echo(f"Released the {kind} of {r.get('computer', computer)}: {r.get('status', 'done')}")


__all__ = ["client"]
