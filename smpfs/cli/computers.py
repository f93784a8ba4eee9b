"""Computers and associations: ``computer``, ``associate``, ``association``,
and the ``store create`` shortcut."""
from __future__ import annotations

import click

from .base import deletion, emit_json, json_option, main, print_store_path, run, table, want_json, when


@main.group()
def computer():
    """Computers: a name mapped to the uid its migration tool runs as."""


@computer.command("add")
@click.argument("name")
@click.option("--uid", required=True, help="Unix uid (or user name) the computer's tools run as.")
@click.option("--secret-file", type=click.Path(dir_okay=False),
              help="Use the secret in this file (the one the computer has on another SMP of its site) "
                   "instead of making a new one.")
@json_option
def computer_add(name, uid, secret_file, as_json):
    """Add a computer (with a new secret, or the one it already has).

    \b
    Examples:
      smpfs computer add PC-0042 --uid 2042
      smpfs computer add PC-0042 --uid 2042 --secret-file pc-0042.secret   (its secret from SMP1)
    """
    secret_value = None
    if secret_file:
        from ..network.client import read_secret
        secret_value = read_secret(secret_file)
    r = run("computer_add", name=name, uid=uid, secret_value=secret_value)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Added computer {r['name']} (uid {r['uid']})")


@computer.command("list")
@json_option
def computer_list(as_json):
    """List computers.

    \b
    Example:
      smpfs computer list --json
    """
    r = run("computer_list")
    if want_json(as_json):
        return emit_json(r["computers"])
    table([[c["name"], c["uid"], when(c["created_at"])] for c in r["computers"]], ["name", "uid", "added"])


@computer.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@json_option
def computer_import(file, as_json):
    """Add computers (and associations) from a CSV file, all or nothing.

    One computer per line: NAME,UID[,DESTINATION] (a first line
    name,uid,destination is skipped, and so are blank lines and # comments).
    A DESTINATION makes the line's computer its source. Any bad line refuses
    the whole file, naming the line; nothing is added then.

    \b
    Example:
      printf 'PC-OLD,2001,PC-NEW\nPC-NEW,2002\n' > fleet.csv
      smpfs computer import fleet.csv
    """
    text = file.read()
    r = run("computer_import", text=text)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Imported {len(r['computers'])} computer(s) and {len(r['associations'])} association(s)")
    for a in r["associations"]:
        click.echo(f"  {a['source']} -> {a['dest']} ({a['migration_type']})")


@computer.command("remove")
@click.argument("name")
@json_option
def computer_remove(name, as_json):
    """Remove a computer (refused while it is in an association).

    \b
    Example:
      smpfs computer remove PC-0042
    """
    r = run("computer_remove", name=name)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Removed computer {r['name']}")


@main.command()
@click.argument("source")
@click.argument("dest")
@json_option
def associate(source, dest, as_json):
    """Create a side-by-side association: SOURCE's user state goes to DEST.

    A computer that captures with no association gets an in-place one
    (source = destination) automatically.

    \b
    Example:
      smpfs associate PC-OLD PC-NEW
    """
    r = run("associate", source=source, dest=dest)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Associated {r['source']} -> {r['dest']} ({r['migration_type']})")


@main.group()
def association():
    """Computer associations and their migration state."""


@association.command("list")
@click.option("--all", "all_", is_flag=True, help="Include removed associations.")
@json_option
def association_list(all_, as_json):
    """List associations with their store's status and times.

    \b
    Example:
      smpfs association list
    """
    r = run("association_list", all=all_ or None)
    if want_json(as_json):
        return emit_json(r["associations"])
    table([[a["source"], a["dest"], a["migration_type"], a["status"],
            (a.get("store_id") or "")[:12] or None, when(a["association_created_at"]),
            when(a["requested_at"]) if a.get("requested_at") else None, deletion(a)]
           for a in r["associations"]],
          ["source", "dest", "type", "status", "store", "associated", "requested", "deletion"])


@association.command("remove")
@click.argument("source")
@click.argument("dest")
@click.option("--force", is_flag=True, help="Also while a migration is unfinished; its data is deleted.")
@json_option
def association_remove(source, dest, force, as_json):
    """Remove an association; its stores are deleted (crypto-shredded).

    Refused while its store is capturing or not yet restored, unless --force.

    \b
    Example:
      smpfs association remove PC-OLD PC-NEW --force
    """
    r = run("association_remove", source=source, dest=dest, force=force or None)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Removed association {r['source']} -> {r['dest']}"
               + (f"; deleted {len(r['deleted'])} store(s)" if r["deleted"] else ""))


@main.group()
def store():
    """Admin shortcuts on state stores."""


@store.command("create")
@click.option("--uid", type=int, required=True, help="The uid that will write the store (its computer).")
@click.option("--computer", help="Computer name (default UID<uid>); added if unknown.")
@click.option("--unc", is_flag=True, help="Print the UNC path.")
@json_option
def store_create(uid, computer, unc, as_json):
    """Create a state store in capture state for UID and print its path.

    A shortcut for `computer add` + `request capture` (in-place).

    \b
    Example:
      smpfs store create --uid 2001
    """
    name = computer or f"UID{uid}"
    known = {c["name"].upper(): c for c in run("computer_list").get("computers", [])}
    if name.upper() not in known:
        run("computer_add", name=name, uid=uid)
    print_store_path(run("request_capture", computer=name), unc, as_json)
