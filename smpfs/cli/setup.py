"""Setting an SMP up: ``init``, ``config`` and the storage ``folder`` commands."""
from __future__ import annotations

import os

import click

from ..lifecycle import rows
from ..lifecycle.smp import Smp
from .base import emit_json, json_option, main, print_folders, print_settings, require_admin, run, want_json, when
from .network import network_options, print_network


@main.command()
@click.option("--server", help="Server name used in UNC paths (default: this host's name).")
@click.option("--folder", help="First storage folder, an absolute path (default: STATE/store).")
@click.option("--max-clients", type=int, default=100, show_default=True,
              help="Maximum clients of that folder (1-99999).")
@click.option("--min-free", default="500MB", show_default=True, help="Minimum free space: 500MB, 2GB or 10%.")
@json_option
@click.pass_obj
def init(obj, server, folder, max_clients, min_free, as_json):
    """Create a new SMP: database, master key, first storage folder.

    \b
    Example:
      smpfs --state /var/lib/smpfs init --server SMP01 --folder /srv/smpstore --min-free 10%
    """
    require_admin("init")
    smp = Smp.init(obj.state, server=server, folder=folder,
                   max_clients=max_clients, min_free=min_free)
    try:
        f = rows.first_folder(smp)
        info = {"state_dir": str(smp.state_dir), "server": smp.setting("server"),
                "folder": f.path, "share": f.share_name,
                "master_key": str(smp.state_dir / "master.key")}
    finally:
        smp.close()
    if want_json(as_json):
        return emit_json(info)
    click.echo(f"Created SMP {info['server']} in {info['state_dir']}")
    click.echo(f"  storage folder {info['folder']} (share {info['share']})")
    click.echo(f"  master key {info['master_key']}: back it up; without it no store can be read")


@main.command()
@click.option("--restore-only", type=click.Choice(["on", "off"]), help="Refuse new captures (restores continue).")
@click.option("--server", help="Server name shown in UNC paths.")
@click.option("--delete-after", metavar="DURATION", help="Keep restored stores this long: 30m, 12h, 7d.")
@click.option("--delete-immediately", is_flag=True, help="Delete stores as soon as their restore is released.")
@click.option("--reapply-retention", is_flag=True,
              help="Move the deadlines of restored stores to the current policy (audited).")
@network_options
@json_option
def config(restore_only, server, delete_after, delete_immediately, reapply_retention, as_json,
           smb_port=None, http=None, tls_cert=None, tls_key=None):
    """Show or change the SMP settings.

    A policy change applies to restores released afterwards; deadlines
    already set stay unless --reapply-retention.

    \b
    Examples:
      smpfs config
      smpfs config --restore-only on
      smpfs config --delete-after 7d --reapply-retention
      smpfs config --smb-port 445 --http 0.0.0.0:8443    (served from the next mount)
    """
    if delete_after and delete_immediately:
        raise click.UsageError("give --delete-after or --delete-immediately, not both")
    r = run("config", restore_only=restore_only, server=server, delete_after=delete_after,
            delete_immediately=delete_immediately or None, reapply_retention=reapply_retention or None,
            smb_port=smb_port, http=http, tls_cert=tls_cert, tls_key=tls_key)
    if want_json(as_json):
        return emit_json(r)
    print_settings(r)
    print_network(r)
    for m in r.get("reapplied", []):
        click.echo(f"  store {m['store_id'][:12]}…: delete at {when(m['old_delete_at'])} -> {when(m['delete_at'])}")


@main.group()
def folder():
    """Storage folders: where state stores live."""


@folder.command("add")
@click.argument("path")
@click.option("--max-clients", type=int, default=100, show_default=True, help="Maximum clients (1-99999).")
@click.option("--min-free", default="500MB", show_default=True, help="Minimum free space: 500MB, 2GB or 10%.")
@json_option
def folder_add(path, max_clients, min_free, as_json):
    """Add a storage folder: an absolute path, created (0711, root) if missing.

    Refused (exit 2): a relative path, /, a place on an smpfs mount, the state
    directory or anything in or around it but STATE/store, a folder inside or
    around another one, another SMP's folder, a folder others can write or swap.

    \b
    Example:
      smpfs folder add /srv/smpstore2 --max-clients 50 --min-free 10%
    """
    # passed as given: nothing is looked at here (the path may be on a mount that must
    # not be stat()ed), nor resolved against this directory (see lifecycle/placement.py)
    r = run("folder_add", path=path, max_clients=max_clients, min_free=min_free)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Added storage folder {r['path']} (share {r['share_name']})")


@folder.command("set")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--max-clients", type=int, help="New maximum clients (1-99999).")
@click.option("--min-free", help="New minimum free space: 500MB, 2GB or 10%.")
@json_option
def folder_set(path, max_clients, min_free, as_json):
    """Change a storage folder's limits in place, also while it holds stores.

    A limit below what the folder holds now only stops new captures going there.

    \b
    Example:
      smpfs folder set /srv/smpstore --max-clients 800 --min-free 5%
    """
    r = run("folder_set", path=os.path.abspath(path), max_clients=max_clients, min_free=min_free)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Storage folder {r['path']}: max clients {r['max_clients']}, min free {r['min_free']}")


@folder.command("list")
@json_option
def folder_list(as_json):
    """List storage folders with clients, space used and free.

    \b
    Example:
      smpfs folder list
    """
    r = run("folder_list")
    if want_json(as_json):
        return emit_json(r["folders"])
    print_folders(r["folders"])


@folder.command("remove")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Also while it holds stores: they are deleted for good.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (with --force).")
@json_option
def folder_remove(path, force, yes, as_json):
    """Remove a storage folder (refused while it holds stores, unless --force).

    \b
    Example:
      smpfs folder remove /srv/smpstore2 --force --yes
    """
    if force and not yes:
        click.confirm(f"Delete every state store in {path} for good?", abort=True)
    r = run("folder_remove", path=os.path.abspath(path), force=force or None)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Removed storage folder {r['folder']}"
               + (f"; deleted {len(r['deleted'])} store(s)" if r["deleted"] else ""))
