"""``smpfs client``: Request/Release State Store from another machine, over
the SMP's HTTPS API (docs/network.md). Needs no root, no FUSE, no state dir."""
from __future__ import annotations

import click

from .base import emit_json, main, release_message, want_json


@main.group()
def client():
    """Ask a remote SMP for a state store, as a computer (over HTTPS)."""


def _client_options(fn):
    for opt in reversed([
        click.argument("kind", type=click.Choice(["capture", "restore"])),
        click.option("--smp", "url", metavar="URL", help="The SMP: https://HOST:PORT (or --site)."),
        click.option("--site", "site_file", type=click.Path(dir_okay=False), metavar="FILE",
                     help="A site file: pick the SMP of this computer's boundary group (docs/site.md)."),
        click.option("--computer", required=True, help="This computer's name on the SMP."),
        click.option("--secret-file", required=True, type=click.Path(dir_okay=False),
                     help="File holding the computer's secret (smpfs computer secret NAME)."),
        click.option("--cacert", type=click.Path(dir_okay=False), help="Trust this CA (or self-signed) certificate."),
        click.option("--sha256", metavar="FINGERPRINT", help="Trust exactly the certificate with this fingerprint."),
        click.option("--retries", type=click.IntRange(0, 10000),
                     help="Ask again this many times while the SMP is full or unreachable "
                          "(default 0; with --site: the site file's, each time a round over the SMPs)."),
        click.option("--retry-delay", type=click.FloatRange(0, 86400),
                     metavar="SECONDS", help="Seconds between attempts (default 30; with --site: the site file's)."),
        click.option("--timeout", type=click.FloatRange(0.1, 3600),
                     metavar="SECONDS", help="Give up on one attempt after this long (default 60; with --site: "
                                             "the site file's)."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON (with smb_url)."),
    ]):
        fn = opt(fn)
    return fn


def _run(action, kind, url, site_file, computer, secret_file, cacert, sha256, retries, retry_delay, timeout,
         as_json):
    """One step. Text: progress lines on stderr, the answer on stdout. --json:
    nothing but one object, the answer with ``attempts`` on stdout, or on a
    failure ``{"error": {...}, "attempts": [...]}`` on stderr (stdout empty)."""
    from ..errors import SmpError, UsageError
    from ..network.client import SmpClient, read_secret, run_step
    as_json = want_json(as_json)
    if bool(url) == bool(site_file):
        raise UsageError("give --smp URL or --site FILE (one of them)")
    events: list = []
    try:
        if site_file:
            r = _run_site(action, kind, site_file, computer, read_secret(secret_file), cacert, sha256,
                          retries, retry_delay, timeout, as_json, events)
        else:
            c = SmpClient(url, computer, read_secret(secret_file), cacert=cacert, sha256=sha256,
                          timeout=60 if timeout is None else timeout)

            def on_event(e):
                events.append(e)
                if e["outcome"] != "ok" and not as_json:
                    click.echo(f"smpfs: {e['smp']}: attempt {e['attempt']}: {e.get('message', e['outcome'])}",
                               err=True)
            r = run_step(c, action, kind, retries=0 if retries is None else retries,
                         retry_delay=30 if retry_delay is None else retry_delay, on_event=on_event)
    except SmpError as e:
        if as_json:
            e.json_extra = {"attempts": events}
        raise
    if as_json:
        return emit_json({**r, "attempts": events})
    return r


def _run_site(action, kind, site_file, computer, secret, cacert, sha256, retries, retry_delay, timeout, as_json,
              events):
    from ..errors import UsageError
    from ..site import sitefile
    from ..site.select import SiteClient
    if sha256:
        raise UsageError("--sha256 goes with --smp; with --site each SMP's fingerprint is in the site file")
    site = sitefile.load(site_file)

    def on_event(e):
        events.append(e)
        if not as_json:
            _say(e)
    sc = SiteClient(site, computer, secret, retries=retries, retry_delay=retry_delay, timeout=timeout,
                    cacert=cacert, on_event=on_event)
    return sc.step(action, kind)


def _say(e: dict) -> None:
    """One line on stderr for each step of the choice of an SMP."""
    ev = e["event"]
    if ev == "boundary":
        if e["groups"]:
            why = "; ".join(f"{g} ({e['why'][g]})" for g in e["groups"])
            click.echo(f"smpfs: {e['computer']} is in boundary group {why}; its SMPs: {', '.join(e['smps'])}",
                       err=True)
        else:
            click.echo(f"smpfs: {e['computer']} is in no boundary group", err=True)
    elif ev == "refused":
        click.echo(f"smpfs: {e['smp']} ({e['url']}), round {e['round']}: {e['step']}: {e['reason']}: "
                   f"{e['message']} -> {e['next']}", err=True)
    elif ev == "retry":
        click.echo(f"smpfs: {e['message']}", err=True)
    else:
        click.echo(f"smpfs: {e['smp']} ({e['url']}), round {e['round']}: {e['step']}: {ev}", err=True)


@client.command("request")
@_client_options
def client_request(kind, url, site_file, computer, secret_file, cacert, sha256, retries, retry_delay, timeout,
                   as_json):
    """Request a state store; print its UNC path (with --json also smb_url).

    \b
    Example:
      smpfs client request capture --smp https://smp1:8443 --computer PC-0042 \\
          --secret-file /etc/smpfs/pc-0042.secret --cacert smp1.pem
      smpfs client request capture --site /etc/smpfs/site.toml --computer PC-0042 \\
          --secret-file /etc/smpfs/pc-0042.secret       (the SMP of its boundary group)
    """
    r = _run("request", kind, url, site_file, computer, secret_file, cacert, sha256, retries, retry_delay, timeout,
             as_json)
    if r is not None:
        click.echo(r["unc"])


@client.command("release")
@_client_options
def client_release(kind, url, site_file, computer, secret_file, cacert, sha256, retries, retry_delay, timeout,
                   as_json):
    """Release the state store (capture: done writing; restore: done reading).

    \b
    Example:
      smpfs client release capture --smp https://smp1:8443 --computer PC-0042 \\
          --secret-file /etc/smpfs/pc-0042.secret --sha256 AB:CD:...
    """
    r = _run("release", kind, url, site_file, computer, secret_file, cacert, sha256, retries, retry_delay, timeout,
             as_json)
    if r is not None:
        click.echo(release_message(kind, {"computer": computer, **r}))


__all__ = ["client"]
