"""What an SMP holds and did: ``status`` and the audit ``log``."""
from __future__ import annotations

import json
import time

import click

from ..units import format_size
from .base import emit_json, json_option, main, print_folders, print_settings, run, table, want_json, when
from .network import print_network


@main.command()
@json_option
def status(as_json):
    """Settings, storage folders, and every association with its state and times.

    \b
    Example:
      smpfs status --json
    """
    r = run("status")
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"SMP state dir: {r['state_dir']}")
    mounted = r["mountpoint"] or "not mounted"
    if r.get("dead_mount"):
        mounted += (f" (its daemon died; a dead mount is left at {r['dead_mount']}: "
                    f"`smpfs umount {r['dead_mount']}` clears it, `smpfs mount` remounts)")
    click.echo(f"mounted at:    {mounted}")
    print_settings(r["settings"])
    print_network(r)
    click.echo(f"next deletion: {when(r['next_deadline'])}")
    click.echo(f"space freed by deletions: {format_size(r['deleted_bytes_total'])}")
    click.echo("\nStorage folders:")
    print_folders(r["folders"])
    click.echo("\nAssociations:")
    table([[a["source"], a["dest"], a["migration_type"], a["status"],
            (a.get("store_id") or "")[:12] or None, when(a.get("created_at")),
            when(a.get("capture_released_at")), when(a.get("restore_released_at")),
            when(a.get("delete_at")) if a["status"] != "deleted" else when(a.get("deleted_at")),
            format_size(a["bytes_freed"]) if a.get("bytes_freed") is not None else None]
           for a in r["associations"]],
          ["source", "dest", "type", "status", "store", "created", "captured", "restored",
           "delete(d) at", "freed"])


def _print_entry(e: dict, as_json: bool) -> None:
    if as_json:
        return click.echo(json.dumps(e, sort_keys=True, default=str))
    detail = " ".join(f"{k}={v}" for k, v in sorted((e.get("detail") or {}).items()))
    store = f" store={e['store_id'][:12]}" if e.get("store_id") else ""
    click.echo(f"{when(e['ts'])}  #{e['id']} uid={e['uid']} {e['computer'] or '-'} "
               f"{e['action']} {e['outcome']}{store} {detail}".rstrip())


@main.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries.")
@click.option("--since", "since_id", type=click.IntRange(min=0), default=0, help="Only entries after this id.")
@click.option("-n", "limit", type=click.IntRange(min=0),
              help="Only the last N entries (0: none; with -f, only new ones).")
@json_option
def log(follow, since_id, limit, as_json):
    """The audit log: every request, release, denial, deletion, key view, recovery.

    With --json, one JSON object per line.

    \b
    Example:
      smpfs log -n 20
      smpfs log --follow --json | jq 'select(.outcome != "ok")'
    """
    as_json = want_json(as_json)
    last = since_id
    r = run("log", since_id=since_id, limit=limit if limit != 0 else 1)
    if limit == 0:                    # nothing of the past; with --follow, what comes next
        last = max([last] + [e["id"] for e in r["entries"]])
        r = {"entries": []}
    while True:
        for e in r["entries"]:
            _print_entry(e, as_json)
            last = max(last, e["id"])
        if not follow:
            return
        try:
            time.sleep(1)
        except KeyboardInterrupt:
            return
        r = run("log", since_id=last)
