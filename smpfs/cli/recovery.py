"""Keys, repair and the end of data: ``key show``, ``recover``, ``fsck``,
``retention run`` and ``retire``."""
from __future__ import annotations

import os

import click

from ..errors import IntegrityError, MountError
from ..lifecycle import audit
from ..lifecycle.smp import Smp
from ..units import format_size
from .base import Progress, emit_json, json_option, main, require_admin, run, state_dir, want_json, when


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


@key.command("rotate")
@json_option
def key_rotate(as_json):
    """Replace the master key: every live store's key rewrapped, the old key destroyed.

    Run it after deleting stores whose wrapped keys may survive on disk (freed
    blocks, backups of smp.db): with the old master key gone they open nothing.
    Recovery keys do not change. Crash-safe: a kill leaves the old or the new key.

    \b
    Example:
      smpfs key rotate
    """
    r = run("key_rotate")
    if want_json(as_json):
        return emit_json(r)
    click.echo(f"master key rotated: {r['stores_rewrapped']} store key(s) and "
               f"{r['computer_secrets_rewrapped']} computer secret(s) rewrapped; the old key is destroyed")


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
    from ..lifecycle import recovery
    with Progress() as bar:
        stats = recovery.recover(state_dir(), os.geteuid(), key_text, store_path, outdir,
                                 progress=lambda s: bar.show(
                                     f"recovered {s['files']} file(s), {format_size(s['bytes'])}"))
    if want_json(as_json):
        emit_json(stats)
    else:
        for e in stats["errors"]:
            click.echo(f"smpfs: {e}", err=True)
        click.echo(f"recovered {stats['files']} file(s), {stats['dirs']} dir(s), {stats['links']} hard link(s), "
                   f"{format_size(stats['bytes'])} into {outdir}")
    if stats["errors"]:
        raise IntegrityError(f"{len(stats['errors'])} item(s) not fully recovered (listed above)",
                             "the store is damaged: recover those files from another copy of it")


@main.command()
@click.option("--no-repair", is_flag=True, help="Only report; change nothing (stores are opened read-only).")
@click.option("--scrub", is_flag=True, help="Also read and authenticate every block and name of every store.")
@json_option
@click.pass_obj
def fsck(obj, no_repair, scrub, as_json):
    """Check every state store for what a crash can leave behind, and repair it.

    Runs by itself when a mount follows one that did not end cleanly.
    Refused while the SMP is mounted. With --scrub it also reads every
    block and name and names each damaged file (exit 20).

    \b
    Example:
      smpfs fsck
      smpfs fsck --no-repair --scrub
    """
    require_admin("fsck")
    from pathlib import Path

    from ..lifecycle import fsck as fsck_mod
    from ..mount.mounting import daemon_info
    info = daemon_info(Path(obj.state))
    if info is not None:
        where = info.get("mountpoint") or "MOUNTPOINT"
        raise MountError(f"the SMP is mounted at {where}; fsck runs on an unmounted SMP",
                         f"unmount it first: smpfs umount {where}")
    smp = Smp.open_read_only(obj.state) if no_repair else Smp.open(obj.state)
    try:
        with Progress() as bar:
            report = fsck_mod.check_smp(
                smp, repair=not no_repair, scrub=scrub,
                progress=lambda i, n, sid: bar.show(f"{'checking and scrubbing' if scrub else 'checking'}"
                                                    f" store {i + 1}/{n} {sid[:12]}…"),
                scrub_progress=lambda sid, d, t: bar.show(
                    f"scrubbing store {sid[:12]}…: {format_size(d)} of {format_size(t)}"))
        if not no_repair:              # --no-repair changes nothing, its audit entry included
            smp.set_dirty(False)
            audit.record(smp, 0, "fsck", outcome="ok" if not report["unrepairable"] else "error",
                         repair=True, scrub=bool(scrub), stores=report["stores"],
                         findings=len(report["findings"]), unrepairable=report["unrepairable"])
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
               "new captures are refused until `smpfs unretire`")


@main.command()
@json_option
def unretire(as_json):
    """Undo a retirement on purpose: the SMP takes new captures again.

    (`config --restore-only off` is refused while the SMP is retired.)

    \b
    Example:
      smpfs unretire
    """
    r = run("unretire")
    if want_json(as_json):
        return emit_json(r)
    click.echo("The SMP is no longer retired: it takes new captures again")


@main.group()
def role():
    """The SMP role as a whole."""


@role.command("remove")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def role_remove(obj, yes, as_json):
    """Remove the SMP role: shred every store, unmount, remove every storage
    folder's smpfs files and the state directory, and say what was removed.

    What smpfs did not make is left where it is (and listed). Back up the
    audit log first if you need it: `smpfs log --json > smp-audit.json`.

    \b
    Example:
      smpfs role remove --yes
    """
    require_admin("role remove")
    from pathlib import Path

    from ..lifecycle import role as role_mod
    from ..mount import mounting as daemon
    Smp.open(obj.state).close()                     # an SMP is there (else exit 3) before asking
    if not yes:
        click.confirm(f"Delete every state store, storage folder content and {obj.state} for good?", abort=True)
    info = daemon.daemon_info(Path(obj.state))
    unmounted, shredded = None, []
    if info:
        shredded = run("retire")["deleted"]         # the daemon stops serving every store first
        daemon.umount(obj.state, info["mountpoint"])
        unmounted = info["mountpoint"]
    smp = Smp.open(obj.state)
    try:
        r = role_mod.remove(smp, uid=0)
    finally:
        try:
            smp.close()
        except Exception:                            # noqa: BLE001 - remove() closed it
            pass
    r["unmounted"] = unmounted
    r["stores_deleted"] = shredded + r["stores_deleted"]
    if want_json(as_json):
        return emit_json(r)
    if unmounted:
        click.echo(f"unmounted {unmounted}")
    for d in r["stores_deleted"]:
        click.echo(f"shredded store {d['store_id']} ({d.get('source')} -> {d.get('dest')}), "
                   f"{format_size(d.get('bytes_freed', 0))}")
    for f in r["folders"]:
        what = f"removed {len(f['removed'])} smpfs item(s) from {f['path']}"
        what += "; folder removed" if f["folder_removed"] else (
            f"; left {len(f['left'])} item(s) smpfs did not make: {', '.join(f['left'][:5])}" if f["left"] else "")
        click.echo(what)
    click.echo(f"removed the state directory {r['state_dir']} ({len(r['state_files'])} file(s))")
    click.echo("The SMP role is removed.")
