"""A site of several SMPs: ``smpfs plan`` (capacity arithmetic) and ``smpfs site
check`` (the site file, and every SMP's state). See docs/site.md."""
from __future__ import annotations

import click

from ..units import format_size, parse_size
from .base import emit_json, json_option, main, table, want_json


@main.command("plan")
@click.option("--clients", required=True, type=click.IntRange(1), help="Computers to capture in the window.")
@click.option("--state-size", required=True, metavar="SIZE", help="One computer's state store, e.g. 2GB.")
@click.option("--link", required=True, metavar="SPEED", help="Each SMP's link: 100Mbit, 1Gbit, 12.5MB/s.")
@click.option("--window", required=True, type=click.FloatRange(0, min_open=True), metavar="HOURS",
              help="Hours in which every capture must finish.")
@click.option("--concurrent", type=click.IntRange(1), metavar="N",
              help="Computers writing to one SMP at once (they share its link).")
@click.option("--retention", type=click.FloatRange(0), default=1, show_default=True, metavar="DAYS",
              help="Days a store is kept after its restore is released.")
@click.option("--overhead", default="0%", show_default=True, metavar="PERCENT",
              help="Share of the link lost to protocols and other traffic (the seed assumes none).")
@click.option("--max-clients", type=click.IntRange(1, 99999), default=100, show_default=True,
              help="Maximum clients of one storage folder.")
@click.option("--min-free", default="500MB", show_default=True, metavar="SIZE",
              help="Minimum free space of one storage folder.")
@json_option
def plan_cmd(clients, state_size, link, window, concurrent, retention, overhead, max_clients, min_free, as_json):
    """How many SMPs, storage folders and how much disk a migration needs.

    Pure arithmetic (no root, no SMP): one link of SPEED moves SPEED/8 bytes a
    second; the stores that fit in the window decide the SMPs, and every store
    of the window is counted on disk at once.

    \b
    Examples:
      smpfs plan --clients 23 --state-size 2GB --link 100Mbit --window 1
      smpfs plan --clients 500 --state-size 8GB --link 1Gbit --window 10 --concurrent 20 --json
    """
    from ..errors import UsageError
    from ..site.plan import format_link, parse_link, plan
    o = overhead.strip().rstrip("%")
    try:
        frac = float(o) / 100
    except ValueError:
        raise UsageError("invalid --overhead", "a percentage, e.g. 20%")
    p = plan(clients, parse_size(state_size), parse_link(link), window, concurrent=concurrent,
             retention_days=retention, overhead=frac, max_clients=max_clients, min_free=parse_size(min_free))
    if want_json(as_json):
        return emit_json(p.as_dict())
    click.echo(f"{clients} clients x {format_size(p.state_size)} in {window:g} h over {format_link(p.link_bits)} "
               f"per SMP:")
    click.echo(f"  SMPs:                  {p.smps}")
    click.echo(f"  storage folders/SMP:   {p.folders_per_smp} (max clients {max_clients})")
    click.echo(f"  disk per SMP:          {format_size(p.disk_per_smp)} (site: {format_size(p.disk_total)})")
    click.echo(f"  stores/hour, one link: {p.stores_per_hour:.2f} (~{p.stores_per_hour_rounded})")
    click.echo("arithmetic:")
    for line in p.arithmetic:
        click.echo(f"  {line}")
    click.echo("assumes:")
    for line in p.assumptions:
        click.echo(f"  {line}")


@main.group("site")
def site_group():
    """A site of several SMPs, described by one site file (docs/site.md)."""


@site_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--offline", is_flag=True, help="Only validate the file; ask no SMP.")
@click.option("--computer", help="Ask each SMP for its state as this computer (registered on every SMP).")
@click.option("--secret-file", type=click.Path(dir_okay=False), help="That computer's secret.")
@click.option("--cacert", type=click.Path(dir_okay=False), help="Trust this CA for SMPs with no sha256/cacert.")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), metavar="SECONDS",
              help="Per SMP (default: the site file's).")
@json_option
def site_check(file, offline, computer, secret_file, cacert, timeout, as_json):
    """Validate a site file and ask every SMP for its state.

    Without --computer, each SMP is only checked to answer with the
    certificate the site file trusts; with a computer's credentials (one
    registered on every SMP, e.g. with `computer add --secret-file`), its
    restore-only mode and storage folders are shown too. Exits 6 if an SMP
    does not answer, 7 if one refuses the certificate or the credentials.

    \b
    Examples:
      smpfs site check /etc/smpfs/site.toml --offline
      smpfs site check /etc/smpfs/site.toml --computer SITE-PROBE --secret-file probe.secret
    """
    from ..errors import NotMountedError, PermissionDenied, UsageError
    from ..site import sitefile
    if bool(computer) != bool(secret_file):
        raise UsageError("give --computer and --secret-file together")
    site = sitefile.load(file)
    out = {"file": file, "valid": True, "warnings": site.warnings,
           "groups": {g.name: {"smps": g.smps, "ranges": [str(r) for r in g.ranges], "names": g.names}
                      for g in site.groups.values()},
           "smps": [{"name": s.name, "url": s.url, "groups": site.groups_of(s.name)} for s in site.smps.values()]}
    if not offline:
        from ..network.client import read_secret
        from ..site.select import check_smp
        secret = read_secret(secret_file) if secret_file else None
        out["smps"] = [check_smp(site, name, computer, secret, timeout=timeout, cacert=cacert)
                       for name in site.smps]
    if want_json(as_json):
        emit_json(out)
    else:
        click.echo(f"{file}: valid: {len(site.smps)} SMP(s), {len(site.groups)} boundary group(s)")
        for w in site.warnings:
            click.echo(f"warning: {w}", err=True)
        table([[g.name, ", ".join(g.smps), ", ".join(str(r) for r in g.ranges) or "-", ", ".join(g.names) or "-"]
               for g in site.groups.values()], ["group", "smps", "ranges", "names"])
        if not offline:
            click.echo("")
            table([_smp_row(s) for s in out["smps"]], ["smp", "url", "reachable", "restore-only", "folders"])
    if offline:
        return
    errs = [s["error"] for s in out["smps"] if s["error"]]
    if any(e["exit_code"] == 6 for e in errs):
        raise NotMountedError(f"{sum(e['exit_code'] == 6 for e in errs)} SMP(s) did not answer",
                              "is each mounted with --http on, and its url right?")
    if errs:
        raise PermissionDenied(f"{len(errs)} SMP(s) refused: " + "; ".join(e["message"] for e in errs))


def _smp_row(s: dict) -> list:
    st = s.get("state")
    if not s["reachable"]:
        return [s["name"], s["url"], "no: " + s["error"]["message"], "?", "?"]
    if st is None:
        if s["error"]:
            return [s["name"], s["url"], "yes", "?", "(" + s["error"]["message"] + ")"]
        return [s["name"], s["url"], "yes", "?", "(give --computer to see them)"]
    folders = ", ".join(f"{f['share']} {f['clients']}/{f['max_clients']} clients, "
                        f"{'?' if f.get('free_bytes') is None else format_size(f['free_bytes'])} free"
                        f"{'' if f['has_room'] else ', FULL'}" for f in st["folders"])
    return [s["name"], s["url"], "yes", "yes" if st["restore_only"] else "no", folders or "(none)"]


__all__ = ["plan_cmd", "site_group"]
