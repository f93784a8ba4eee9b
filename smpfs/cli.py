"""The ``smpfs`` command line.

Lifecycle and admin commands go to the mounted SMP's daemon over its control
socket (the kernel tells it who calls). When nothing is mounted, root runs the
same code (:func:`smpfs.lifecycle.api.dispatch`) right here; other users are told to ask
an admin. Errors print ``smpfs: <message>`` (and a hint) on stderr and exit
with the error's own code (see smpfs/errors.py, docs/admin.md).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass

import click

from .errors import NotMountedError, SmpError
from .lifecycle import api
from .lifecycle.smp import DEFAULT_STATE_DIR, Smp, resolve_state_dir
from .units import format_duration, format_size

# -- plumbing --------------------------------------------------------------------

@dataclass
class Ctx:
    state: str
    json: bool = False


class SmpGroup(click.Group):
    """A click group that turns SmpError into ``smpfs: message`` + exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SmpError as e:
            click.echo(f"smpfs: {e.message}", err=True)
            if e.hint:
                click.echo(f"  hint: {e.hint}", err=True)
            sys.exit(e.exit_code)


def _control_call(state_dir, command: str, args: dict) -> dict:
    """Ask the running daemon; NotMountedError if there is none."""
    try:
        from .mount import control
    except ModuleNotFoundError as e:         # not written yet: behave as "not mounted"
        if e.name != f"{__package__}.control":
            raise
        raise NotMountedError("no daemon is running")
    return control.call(state_dir, command, args)


def run(command: str, **args) -> dict:
    """Run an api command: through the daemon if mounted, else locally for root."""
    obj: Ctx = click.get_current_context().find_object(Ctx)
    args = {k: v for k, v in args.items() if v is not None}
    try:
        return _control_call(obj.state, command, args)
    except NotMountedError:
        if os.geteuid() != 0:
            raise NotMountedError("the SMP is not mounted; ask an admin",
                                  "only root can use an SMP that is not mounted (smpfs mount)")
    smp = Smp.open(obj.state)
    try:
        return api.dispatch(smp, 0, command, args)
    finally:
        smp.close()


def want_json(local: bool = False) -> bool:
    obj = click.get_current_context().find_object(Ctx)
    return local or (obj is not None and obj.json)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def when(ts) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[list], header: list[str]) -> None:
    rows = [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(header, widths, strict=False)).rstrip())
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


class Progress:
    """One self-overwriting status line on a terminal (stderr); silent when piped."""

    def __init__(self, every: float = 0.2):
        self.tty = sys.stderr.isatty()
        self.every = every
        self.last = 0.0
        self.shown = False

    def show(self, text: str) -> None:
        if not self.tty or time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        click.echo(f"\r\033[K{text}", err=True, nl=False)
        self.shown = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.shown:
            click.echo("\r\033[K", err=True, nl=False)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


# -- the group ----------------------------------------------------------------------

@click.group(cls=SmpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state", "state", envvar="SMPFS_STATE", default=DEFAULT_STATE_DIR, show_default=True,
              metavar="DIR", help="SMP state directory (also $SMPFS_STATE).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON wherever a command has output.")
@click.version_option(package_name="smpfs")
@click.pass_context
def main(ctx, state, as_json):
    """smpfs: a Configuration Manager State Migration Point you can mount.

    \b
    Example, a side-by-side migration of PC-OLD's user state to PC-NEW:
      smpfs init && smpfs mount /srv/smp
      smpfs computer add PC-OLD --uid 2001; smpfs computer add PC-NEW --uid 2002
      smpfs associate PC-OLD PC-NEW
      (as uid 2001) smpfs request capture; ...scanstate...; smpfs release capture
      (as uid 2002) smpfs request restore; ...loadstate...; smpfs release restore
    """
    ctx.obj = Ctx(state=str(resolve_state_dir(state)), json=as_json)


@main.command()
@click.option("--server", help="Server name used in UNC paths (default: this host's name).")
@click.option("--folder", type=click.Path(file_okay=False), help="First storage folder (default: STATE/store).")
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
    smp = Smp.init(obj.state, server=server, folder=os.path.abspath(folder) if folder else None,
                   max_clients=max_clients, min_free=min_free)
    try:
        f = smp.query_one("SELECT * FROM folders ORDER BY id LIMIT 1")
        info = {"state_dir": str(smp.state_dir), "server": smp.setting("server"),
                "folder": f["path"], "share": smp.share_name(f),
                "master_key": str(smp.state_dir / "master.key")}
    finally:
        smp.close()
    if want_json(as_json):
        return emit_json(info)
    click.echo(f"Created SMP {info['server']} in {info['state_dir']}")
    click.echo(f"  storage folder {info['folder']} (share {info['share']})")
    click.echo(f"  master key {info['master_key']}: back it up; without it no store can be read")


# -- computers and associations ------------------------------------------------------

@main.group()
def computer():
    """Computers: a name mapped to the uid its migration tool runs as."""


@computer.command("add")
@click.argument("name")
@click.option("--uid", required=True, help="Unix uid (or user name) the computer's tools run as.")
@json_option
def computer_add(name, uid, as_json):
    """Add a computer.

    \b
    Example:
      smpfs computer add PC-0042 --uid 2042
    """
    r = run("computer_add", name=name, uid=uid)
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


@computer.command("remove")
@click.argument("name")
def computer_remove(name):
    """Remove a computer (refused while it is in an association).

    \b
    Example:
      smpfs computer remove PC-0042
    """
    r = run("computer_remove", name=name)
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
            (a.get("store_id") or "")[:12] or None, when(a.get("created_at")),
            when(a.get("delete_at")) if a.get("delete_at") else None]
           for a in r["associations"]],
          ["source", "dest", "type", "status", "store", "created", "delete at"])


@association.command("remove")
@click.argument("source")
@click.argument("dest")
@click.option("--force", is_flag=True, help="Also while a migration is unfinished; its data is deleted.")
def association_remove(source, dest, force):
    """Remove an association; its stores are deleted (crypto-shredded).

    Refused while its store is capturing or not yet restored, unless --force.

    \b
    Example:
      smpfs association remove PC-OLD PC-NEW --force
    """
    r = run("association_remove", source=source, dest=dest, force=force or None)
    click.echo(f"Removed association {r['source']} -> {r['dest']}"
               + (f"; deleted {len(r['deleted'])} store(s)" if r["deleted"] else ""))


# -- Request / Release State Store ---------------------------------------------------

def _print_store_path(r: dict, unc: bool, as_json: bool) -> None:
    if want_json(as_json):
        return emit_json(r)
    if unc:
        click.echo(r["unc"])
    elif r.get("path"):
        click.echo(r["path"])
    else:
        click.echo("smpfs: note: the SMP is not mounted; printing the UNC path", err=True)
        click.echo(r["unc"])


@main.group()
def request():
    """Request State Store (capture or restore); prints the store's path."""


@request.command("capture")
@click.argument("computer", required=False)
@click.option("--retries", type=click.IntRange(0, 600), default=0, show_default=True,
              help="Retry this many times when no storage folder has room.")
@click.option("--retry-delay", type=click.FloatRange(0, 86400), default=0, show_default=True,
              help="Seconds between retries.")
@click.option("--unc", is_flag=True, help=r"Print the UNC path (\\SERVER\SMPSTORED_...$\ID).")
@json_option
def request_capture(computer, retries, retry_delay, unc, as_json):
    """Create the state store for a capture and print its path (OSDStateStorePath).

    Non-root callers act for the computer mapped to their uid (COMPUTER is
    optional); root names the computer. A repeated request while the capture
    is unreleased returns the same store.

    \b
    Example (in a task sequence, as the computer's uid):
      OSDStateStorePath=$(smpfs request capture --retries 3 --retry-delay 60)
    """
    r = run("request_capture", computer=computer, retries=retries or None, retry_delay=retry_delay or None)
    _print_store_path(r, unc, as_json)


@request.command("restore")
@click.argument("computer", required=False)
@click.option("--unc", is_flag=True, help="Print the UNC path.")
@json_option
def request_restore(computer, unc, as_json):
    """Find the store whose destination is this computer and print its path.

    \b
    Example:
      OSDStateStorePath=$(smpfs request restore)
    """
    r = run("request_restore", computer=computer)
    _print_store_path(r, unc, as_json)


@main.group()
def release():
    """Release State Store (after capture or after restore)."""


@release.command("capture")
@click.argument("computer", required=False)
@json_option
def release_capture(computer, as_json):
    """Capture done: the store becomes read-only, for the destination only.

    \b
    Example:
      smpfs release capture
    """
    r = run("release_capture", computer=computer)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Released capture of {r['computer']}: store {r['store_id'][:12]}… is ready for restore")


@release.command("restore")
@click.argument("computer", required=False)
@json_option
def release_restore(computer, as_json):
    """Restore done: starts the retention timer (or deletes now, per policy).

    \b
    Example:
      smpfs release restore
    """
    r = run("release_restore", computer=computer)
    if want_json(as_json):
        return emit_json(r)
    if r.get("deleted"):
        click.echo(f"Released restore of {r['computer']}: store deleted (policy: delete immediately)")
    else:
        click.echo(f"Released restore of {r['computer']}: store kept until {when(r['delete_at'])}")


# -- settings, folders, keys ------------------------------------------------------------

@main.command()
@click.option("--restore-only", type=click.Choice(["on", "off"]), help="Refuse new captures (restores continue).")
@click.option("--server", help="Server name shown in UNC paths.")
@click.option("--delete-after", metavar="DURATION", help="Keep restored stores this long: 30m, 12h, 7d.")
@click.option("--delete-immediately", is_flag=True, help="Delete stores as soon as their restore is released.")
@click.option("--reapply-retention", is_flag=True,
              help="Move the deadlines of restored stores to the current policy (audited).")
@json_option
def config(restore_only, server, delete_after, delete_immediately, reapply_retention, as_json):
    """Show or change the SMP settings.

    A policy change applies to restores released afterwards; deadlines
    already set stay unless --reapply-retention.

    \b
    Examples:
      smpfs config
      smpfs config --restore-only on
      smpfs config --delete-after 7d --reapply-retention
    """
    if delete_after and delete_immediately:
        raise click.UsageError("give --delete-after or --delete-immediately, not both")
    r = run("config", restore_only=restore_only, server=server, delete_after=delete_after,
            delete_immediately=delete_immediately or None, reapply_retention=reapply_retention or None)
    if want_json(as_json):
        return emit_json(r)
    _print_settings(r)
    for m in r.get("reapplied", []):
        click.echo(f"  store {m['store_id'][:12]}…: delete at {when(m['old_delete_at'])} -> {when(m['delete_at'])}")


def _print_settings(s: dict) -> None:
    keep = s["delete_after_s"]
    click.echo(f"server:        {s['server']}")
    click.echo(f"restore-only:  {'on' if s['restore_only'] else 'off'}")
    deletion = "immediately" if keep == 0 else format_duration(keep)
    click.echo(f"deletion:      {deletion} after restore")


@main.group()
def folder():
    """Storage folders: where state stores live."""


@folder.command("add")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--max-clients", type=int, default=100, show_default=True, help="Maximum clients (1-99999).")
@click.option("--min-free", default="500MB", show_default=True, help="Minimum free space: 500MB, 2GB or 10%.")
@json_option
def folder_add(path, max_clients, min_free, as_json):
    """Add a storage folder.

    \b
    Example:
      smpfs folder add /srv/smpstore2 --max-clients 50 --min-free 10%
    """
    r = run("folder_add", path=os.path.abspath(path), max_clients=max_clients, min_free=min_free)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"Added storage folder {r['path']} (share {r['share_name']})")


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
    _print_folders(r["folders"])


def _print_folders(folders: list[dict]) -> None:
    table([[f["path"], f["share_name"], f"{f['clients']}/{f['max_clients']}",
            format_size(f["used_bytes"]) if f.get("used_bytes") is not None else None,
            format_size(f["free_bytes"]) if f.get("free_bytes") is not None else None,
            f["min_free"], "yes" if f["has_room"] else "no: " + ", ".join(f["full_reasons"])]
           for f in folders],
          ["path", "share", "clients", "used", "free", "min free", "room"])


@folder.command("remove")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Also while it holds stores: they are deleted for good.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (with --force).")
def folder_remove(path, force, yes):
    """Remove a storage folder (refused while it holds stores, unless --force).

    \b
    Example:
      smpfs folder remove /srv/smpstore2 --force --yes
    """
    if force and not yes:
        click.confirm(f"Delete every state store in {path} for good?", abort=True)
    r = run("folder_remove", path=os.path.abspath(path), force=force or None)
    click.echo(f"Removed storage folder {r['folder']}"
               + (f"; deleted {len(r['deleted'])} store(s)" if r["deleted"] else ""))


@main.group()
def key():
    """Recovery keys (root only; every view is audited)."""


@key.command("show")
@click.argument("source")
@json_option
def key_show(source, as_json):
    """Show the recovery key of SOURCE's state store.

    \b
    Example:
      smpfs key show PC-OLD
      smpfs recover --key 0A1B2C3D-... /srv/smpstore/<id> /tmp/out
    """
    r = run("key_show", source=source)
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"computer:     {r['computer']} -> {r['dest']} ({r['status']})")
    click.echo(f"store:        {r['store_path']}")
    click.echo(f"recovery key: {r['recovery_key']}")
    click.echo(f"open it with: smpfs recover --key KEY {r['store_path']} OUTDIR")


# -- status, log, retention -------------------------------------------------------------

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
    click.echo(f"mounted at:    {r['mountpoint'] or 'not mounted'}")
    _print_settings(r["settings"])
    click.echo(f"next deletion: {when(r['next_deadline'])}")
    click.echo(f"space freed by deletions: {format_size(r['deleted_bytes_total'])}")
    click.echo("\nStorage folders:")
    _print_folders(r["folders"])
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
@click.option("--since", "since_id", type=int, default=0, help="Only entries after this id.")
@click.option("-n", "limit", type=int, help="Only the last N entries.")
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
    r = run("log", since_id=since_id, limit=limit)
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


@main.group()
def retention():
    """The retention timer: deletion of restored stores."""


@retention.command("run")
@click.option("--at", "at", metavar="TIME", help="Sweep as if it were TIME: +8d, +12h or ISO 2025-06-01T12:00.")
@json_option
def retention_run(at, as_json):
    """Delete every store whose deadline has passed (now, or --at TIME).

    \b
    Example:
      smpfs retention run --at +8d
    """
    r = run("retention_run", at=at)
    if want_json(as_json):
        return emit_json(r)
    for d in r["deleted"]:
        click.echo(f"deleted {d['store_id'][:12]}… ({d.get('source')} -> {d.get('dest')}, "
                   f"{d['reason']}), freed {format_size(d['bytes_freed'])}")
    click.echo(f"{len(r['deleted'])} store(s) deleted; next deadline: {when(r['next_deadline'])}")


@main.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def retire(yes, as_json):
    """Retire the SMP: delete every state store for good and refuse new captures.

    \b
    Example:
      smpfs retire --yes
    """
    if not yes:
        click.confirm("Delete every state store of this SMP for good?", abort=True)
    r = run("retire")
    if want_json(as_json):
        return emit_json(r)
    freed = sum(d.get("bytes_freed", 0) for d in r["deleted"])
    click.echo(f"Retired: {len(r['deleted'])} store(s) deleted, {format_size(freed)} freed; "
               "restore-only mode is on")


# --- filesystem commands (mount, umount, fsck, recover, store create) are added by the lead below ---

def _fs_error_exit(e: SmpError):
    click.echo(f"smpfs: {e.message}", err=True)
    if e.hint:
        click.echo(f"  hint: {e.hint}", err=True)
    sys.exit(e.exit_code)


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
    from .mount import daemon
    daemon.mount(obj.state, mountpoint, foreground=foreground, debug=debug)


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.pass_obj
def umount(obj, mountpoint):
    """Flush everything, unmount MOUNTPOINT and wait for the daemon to exit.

    \b
    Example:
      smpfs umount /srv/smp
    """
    from .mount import daemon
    daemon.umount(obj.state, mountpoint)


@main.command()
@click.option("--no-repair", is_flag=True, help="Only report; change nothing.")
@json_option
@click.pass_obj
def fsck(obj, no_repair, as_json):
    """Check every state store for what a crash can leave behind, and repair it.

    Runs by itself when a mount follows one that did not end cleanly.
    Refused while the SMP is mounted.

    \b
    Example:
      smpfs fsck
    """
    from pathlib import Path

    from .errors import IntegrityError, MountError
    from .mount.daemon import _daemon_info
    from .store import fsck as fsck_mod
    if _daemon_info(Path(obj.state)):
        raise MountError("the SMP is mounted; unmount it before running fsck")
    smp = Smp.open(obj.state)
    try:
        with Progress() as bar:
            report = fsck_mod.check_smp(smp, repair=not no_repair,
                                        progress=lambda i, n, sid: bar.show(f"checking store {i + 1}/{n} {sid[:12]}…"))
        if not no_repair:
            with smp.tx():
                smp.conn.execute("INSERT OR REPLACE INTO meta VALUES ('dirty', '0')")
    finally:
        smp.close()
    if want_json(as_json):
        emit_json(report)
    else:
        for line in report["findings"]:
            click.echo(line)
        click.echo(f"{report['stores']} store(s) checked, {len(report['findings'])} finding(s), "
                   f"{report['unrepairable']} unrepairable")
    if report["unrepairable"]:
        raise IntegrityError(f"{report['unrepairable']} problem(s) could not be repaired")


@main.command()
@click.option("--key", "key_text", required=True, help="The recovery key (smpfs key show SOURCE).")
@click.argument("store_path", type=click.Path(exists=True, file_okay=False))
@click.argument("outdir", type=click.Path(file_okay=False))
@json_option
def recover(key_text, store_path, outdir, as_json):
    """Decrypt one state store from its storage folder into OUTDIR, with only its key.

    For the day the SMP is gone: needs no state dir, no master key, no mount.

    \b
    Example:
      smpfs recover --key 1A2B3C4D-... /srv/smpstore/<64 hex id> /tmp/restored
    """
    from .lifecycle import audit
    from .lifecycle.smp import resolve_state_dir
    from .store import recover as recover_mod
    store_id = os.path.basename(os.path.normpath(store_path))

    def audited(write):
        # audited when the SMP that owned the store is still here (refused attempts too)
        try:
            smp = Smp.open(resolve_state_dir(click.get_current_context().find_object(Ctx).state))
        except Exception:
            return
        try:
            write(smp)
        except Exception:
            pass
        finally:
            smp.close()

    try:
        with Progress() as bar:
            stats = recover_mod.recover(key_text, store_path, outdir, progress=lambda s: bar.show(
                f"recovered {s['files']} file(s), {format_size(s['bytes'])}"))
    except SmpError as e:
        audited(lambda smp, e=e: audit.record_failure(smp, os.geteuid(), "recover", e, store_id=store_id))
        raise
    audited(lambda smp: audit.record(smp, os.geteuid(), "recover", store_id=store_id,
                                     files=stats["files"], errors=len(stats["errors"])))
    if want_json(as_json):
        return emit_json(stats)
    for e in stats["errors"]:
        click.echo(f"smpfs: {e}", err=True)
    click.echo(f"recovered {stats['files']} file(s), {stats['dirs']} dir(s), {stats['links']} hard link(s), "
               f"{format_size(stats['bytes'])} into {outdir}")


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
    _print_store_path(run("request_capture", computer=name), unc, as_json)


@main.command("log-level")
@click.argument("level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def log_level(level):
    """Change the running daemon's log level, no remount needed (root).

    \b
    Example:
      smpfs log-level debug
    """
    from .mount import control
    r = control.call(click.get_current_context().find_object(Ctx).state, "log_level", {"level": level})
    click.echo(f"log level: {r['level']}")
