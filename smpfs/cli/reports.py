"""What an SMP holds and did: ``status`` and the audit ``log``."""
from __future__ import annotations

import datetime as dt
import json
import time

import click

from ..units import format_size
from .base import deletion, emit_json, json_option, main, print_folders, print_settings, run, table, want_json, when
from .network import print_network


@main.command()
@click.option("--all", "all_", is_flag=True, help="Include removed associations.")
@json_option
def status(all_, as_json):
    """Settings, storage folders, and every association with all its stores.

    Shows whether the SMP is retired, each store's UNC path, size on disk and
    every time of its life, and the space stores take per folder.

    \b
    Example:
      smpfs status
      smpfs status --json | jq '.associations[] | select(.status == "captured")'
    """
    r = run("status", all=all_ or None)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"SMP state dir: {r['state_dir']}")
    mounted = r["mountpoint"] or "not mounted"
    if r.get("dead_mount"):
        mounted += (f" (its daemon died; a dead mount is left at {r['dead_mount']}: "
                    f"`smpfs umount {r['dead_mount']}` clears it, `smpfs mount` remounts)")
    click.echo(f"mounted at:    {mounted}")
    if r.get("retired"):
        click.echo(f"RETIRED:       since {when(r['retired_at'])} (new captures refused; "
                   "`smpfs unretire` to undo)")
    print_settings(r["settings"])
    print_network(r)
    click.echo(f"next deletion: {when(r['next_deadline'])}")
    click.echo(f"stores on disk: {format_size(r['stores_bytes_total'])}; "
               f"freed by deletions: {format_size(r['deleted_bytes_total'])}")
    click.echo("\nStorage folders:")
    print_folders(r["folders"])
    click.echo("\nAssociations:")
    if not r["associations"]:
        click.echo("  (none)")
    for a in r["associations"]:
        removed = f", removed {when(a['removed_at'])}" if a.get("removed_at") else ""
        click.echo(f"  {a['source']} -> {a['dest']} ({a['migration_type']}, associated "
                   f"{when(a['association_created_at'])}"
                   f"{removed}): {a['status']}, {len(a['all_stores'])} store(s), {format_size(a['size_bytes'])}")
        for s in a["all_stores"]:
            size = format_size(s["size_bytes"]) if s["size_bytes"] is not None else \
                f"freed {format_size(s['bytes_freed'] or 0)}"
            click.echo(f"    store {s['store_id']}  {s['status']}  {size}")
            click.echo(f"      unc       {s['unc']}")
            times = [("requested", s["created_at"]), ("captured", s["capture_released_at"]),
                     ("restore requested", s["restore_requested_at"]), ("restored", s["restore_released_at"])]
            line = "; ".join(f"{k} {when(v)}" for k, v in times if v is not None)
            goes = deletion(s)
            if goes is not None:
                line += "; " + (goes if goes.startswith("deleted") else f"delete at: {goes}"
                                if goes == "waits for release" else f"delete at {goes}")
            click.echo("      " + line)


@main.command()
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (a header, one row per association).")
@json_option
def report(as_csv, as_json):
    """One row per association, removed ones too: state, every time, sizes.

    For a fleet spreadsheet: --csv (times in ISO 8601, local time, sizes in
    bytes) or --json (epoch seconds).

    \b
    Example:
      smpfs report --csv > smp-$(date +%F).csv
    """
    r = run("report")
    rows = r["associations"]
    if want_json(as_json):
        return emit_json(rows)
    from ..lifecycle.report import REPORT_FIELDS
    if as_csv:
        import csv
        import io
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(REPORT_FIELDS)
        for row in rows:
            w.writerow(["" if row[k] is None else (iso(row[k]) if k.endswith("_at") else row[k])
                        for k in REPORT_FIELDS])
        click.echo(buf.getvalue(), nl=False)
        return
    table([[a["source"], a["dest"], a["migration_type"], a["status"], (a["store_id"] or "")[:12] or None,
            when(a["created_at"]), when(a["capture_released_at"]), when(a["restore_released_at"]),
            deletion(a),
            format_size(a["size_bytes"]) if a["size_bytes"] else None,
            format_size(a["bytes_freed"]) if a["bytes_freed"] else None] for a in rows],
          ["source", "dest", "type", "status", "store", "requested", "captured", "restored",
           "deletion", "size", "freed"])


def iso(ts) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


#: detail fields that hold a time (epoch seconds): shown as local ISO times in text
TIME_FIELDS = ("at", "deadline", "next_deadline", "ts")


def _show(key: str, value) -> str:
    if (key.endswith("_at") or key in TIME_FIELDS) and isinstance(value, int | float) \
            and not isinstance(value, bool) and value > 0:
        try:
            return iso(value)
        except (OverflowError, OSError, ValueError):
            pass
    return safe(value)


def _print_entry(e: dict, as_json: bool) -> None:
    if as_json:
        return click.echo(json.dumps(e, sort_keys=True, default=str))
    detail = " ".join(f"{safe(k)}={_show(k, v)}" for k, v in sorted((e.get("detail") or {}).items()))
    store = f" store={safe(e['store_id'][:12])}" if e.get("store_id") else ""
    click.echo(f"{when(e['ts'])}  #{e['id']} uid={e['uid']} {safe(e['computer'] or '-')} "
               f"{safe(e['action'])} {safe(e['outcome'])}{store} {detail}".rstrip())


def safe(value) -> str:
    """Text for one line of a terminal: control and format characters (newlines,
    escape sequences, bidi overrides) and backslashes shown escaped, so that what
    a caller got into the log cannot forge a line or drive the terminal."""
    import unicodedata
    out = []
    for c in str(value):
        if c == "\\":
            out.append("\\\\")
        elif unicodedata.category(c)[0] == "C":
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


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
