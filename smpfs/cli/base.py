"""The CLI's plumbing: the ``smpfs`` click group, its context, how a command
reaches the daemon (or runs locally for root), errors, and output helpers.

Command modules (setup, computers, steps, mounting, reports, recovery) register
their commands on :data:`main`; ``smpfs/cli/__init__.py`` imports them all.
"""
from __future__ import annotations

import contextvars
import datetime as dt
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass

import click

from .. import __version__
from ..errors import NotMountedError, PermissionDenied, SmpError, UsageError, smp_error_in
from ..lifecycle import api
from ..lifecycle.smp import DEFAULT_STATE_DIR, Smp, resolve_state_dir
from ..units import format_duration, format_size

# -- plumbing --------------------------------------------------------------------

@dataclass
class Ctx:
    state: str
    json: bool = False


#: Fields the lifecycle layer returns for the daemon's own use; never shown.
INTERNAL_FIELDS = ("changed_stores", "ok", "ts")


def _wants_json_errors(args) -> bool:
    args = list(args)
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def report_error(e: SmpError, as_json: bool) -> None:
    """One error, the documented way: ``smpfs: message`` + ``hint:`` on stderr,
    or with --json one object ``{"error": {class, exit, message, hint}}`` (a
    command may add top-level keys beside ``error``: ``smpfs client``'s ``attempts``)."""
    if as_json:
        extra = getattr(e, "json_extra", None) or {}
        click.echo(json.dumps({**extra, "error": {"class": type(e).__name__, "exit": e.exit_code,
                                                  "message": e.message, "hint": e.hint}}, sort_keys=True), err=True)
        return
    click.echo(f"smpfs: {e.message}", err=True)
    click.echo(f"  hint: {e.hint}", err=True)


#: The command path click resolved for the run in progress (``smpfs folder add``),
#: set by every context click makes; what hints name instead of raw argv words.
_resolved_path: contextvars.ContextVar[str | None] = contextvars.ContextVar("smpfs_command_path", default=None)


class SmpContext(click.Context):
    """A click context that remembers the deepest command resolved so far."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _resolved_path.set(self.command_path)


def _help_hint(ctx: click.Context | None) -> str:
    path = ctx.command_path if ctx is not None else (_resolved_path.get() or "smpfs")
    if ctx is not None and isinstance(ctx.command, click.Group):
        return f"see `{path} --help` for its commands"
    return f"see `{path} --help` for the arguments and an example"


def _describe(kind: click.ParamType) -> str:
    """What a parameter type accepts, in words (never the value given)."""
    if isinstance(kind, click.Choice):
        return "one of: " + ", ".join(str(c) for c in kind.choices)
    if isinstance(kind, click.IntRange | click.FloatRange):
        what = "an integer" if isinstance(kind, click.IntRange) else "a number"
        if kind.min is not None and kind.max is not None and not kind.min_open and not kind.max_open:
            return f"{what} from {kind.min} to {kind.max}"
        lo = None if kind.min is None else f"{'above' if kind.min_open else 'at least'} {kind.min}"
        hi = None if kind.max is None else f"{'below' if kind.max_open else 'at most'} {kind.max}"
        return " ".join([what, " and ".join(x for x in (lo, hi) if x)]).strip()
    return {"integer": "an integer", "float": "a number", "boolean": "true or false"}.get(
        kind.name, f"a valid {kind.name}")


def usage_message(e: click.exceptions.UsageError) -> str:
    """click's message without the value that was refused: an option value may be
    a secret (``recover --key``), and a terminal, a log or a screenshot keeps it."""
    if isinstance(e, click.BadParameter) and not isinstance(e, click.MissingParameter) \
            and e.param is not None and not isinstance(e.param.type, click.Path | click.File):
        return f"Invalid value for {e.param.get_error_hint(e.ctx)}: expected {_describe(e.param.type)}."
    return e.format_message()


def to_smp_error(e: BaseException) -> SmpError | None:
    """What reaches a user for any exception: click's usage errors, aborts, an
    OSError nobody translated, or a bug (named, but never as a traceback)."""
    if smp_error_in(e) is not None:
        return smp_error_in(e)
    if isinstance(e, click.exceptions.UsageError):
        return UsageError(usage_message(e), _help_hint(e.ctx))
    if isinstance(e, click.ClickException):
        err = SmpError(e.format_message())
        err.exit_code = e.exit_code if e.exit_code in (1, 2) else 1
        return err
    if isinstance(e, click.Abort | KeyboardInterrupt):
        return SmpError("aborted: nothing was changed", "add --yes to skip the confirmation")
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        return SmpError(f"{e.strerror or e}{where}",
                        "check the paths given and that this user may reach them")
    return None


def name_the_command(err: SmpError) -> SmpError:
    """A default hint's `smpfs COMMAND` becomes the command that ran."""
    path = _resolved_path.get()
    if path and path != "smpfs" and "`smpfs COMMAND" in (err.hint or ""):
        err.hint = err.hint.replace("`smpfs COMMAND", f"`{path}")
    return err


class SmpGroup(click.Group):
    """The ``smpfs`` group: every failure becomes ``smpfs: message`` + ``hint:``
    (or one JSON object with --json) and its documented exit code; no traceback
    reaches a user (``SMPFS_DEBUG=1`` shows it). ``smpfs`` (or a group) with
    nothing after it prints its help on stdout and exits 0."""

    context_class = SmpContext
    group_class = type                 # sub-groups are SmpGroups, their commands SmpCommands

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if args is None:
            args = sys.argv[1:]
        args = list(args)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        as_json = _wants_json_errors(args)
        token = _resolved_path.set(None)
        try:
            rv = super().main(args, prog_name or "smpfs", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help(), color=e.ctx.color)
            sys.exit(0)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except SystemExit:
            raise
        except BaseException as e:                       # noqa: BLE001 - every failure is reported
            err = to_smp_error(e)
            if err is None:
                if os.environ.get("SMPFS_DEBUG"):
                    raise
                err = SmpError(f"internal error: {type(e).__name__}: {e}",
                               "this is a bug: please report it with the command line (SMPFS_DEBUG=1 "
                               "shows the traceback)")
            report_error(name_the_command(err), as_json)
            sys.exit(err.exit_code)
        finally:
            _resolved_path.reset(token)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        # `smpfs --json` or `smpfs folder` (options, no command): the help, as for no
        # arguments at all, rather than click's "Missing command." usage error
        with warnings.catch_warnings():          # click 9 folds protected_args into args
            warnings.simplefilter("ignore", DeprecationWarning)
            pending = list(getattr(ctx, "protected_args", [])) + list(ctx.args)
        if not pending and not self.invoke_without_command and not ctx.resilient_parsing:
            raise click.exceptions.NoArgsIsHelpError(ctx)
        return super().invoke(ctx)


class SmpCommand(click.Command):
    context_class = SmpContext


SmpGroup.command_class = SmpCommand


def state_dir() -> str:
    """The state directory the ``smpfs`` group resolved (``--state``, $SMPFS_STATE)."""
    return click.get_current_context().find_object(Ctx).state


def _control_call(state: str, command: str, args: dict) -> dict:
    """Ask the running daemon; NotMountedError if there is none."""
    from ..mount import control
    return control.call(state, command, args)


def is_admin() -> bool:
    """Root administers the SMP directly; everyone else goes through the daemon."""
    return os.geteuid() == 0


def require_admin(command: str) -> None:
    """Refuse an admin command to anyone but root (exit 7) before it touches anything."""
    if not is_admin():
        raise PermissionDenied(f"`smpfs {command}` is for the SMP admin (root)",
                               "ask an admin, or run it with sudo")


def public(result: dict) -> dict:
    """A result without the fields the daemon keeps for itself."""
    return {k: v for k, v in result.items() if k not in INTERNAL_FIELDS}


def run(command: str, **args) -> dict:
    """Run an api command: through the daemon if mounted, else locally for root."""
    obj: Ctx = click.get_current_context().find_object(Ctx)
    args = {k: v for k, v in args.items() if v is not None}
    try:
        return public(_control_call(obj.state, command, args))
    except NotMountedError:
        if not is_admin():
            if command in api.ADMIN:
                raise PermissionDenied(f"`smpfs {command.replace('_', ' ')}` is for the SMP admin (root)",
                                       "ask an admin, or run it with sudo")
            raise NotMountedError("the SMP is not mounted; ask an admin",
                                  "only root can use an SMP that is not mounted (smpfs mount)")
    smp = Smp.open(obj.state)
    try:
        return public(api.dispatch(smp, 0, command, args))
    finally:
        smp.close()


def run_retrying(command: str, retries: int, retry_delay: float, retry_on: tuple, on_retry=None,
                 **args) -> dict:
    """ConfigMgr's retry count and delay for a Request State Store step: run
    ``command``; while it fails with one of ``retry_on``, wait ``retry_delay``
    seconds and try again, at most ``retries`` more times (``on_retry(n, error)``
    is told of each).

    The one place any command retries (``request capture``, ``request restore``),
    through :func:`smpfs.lifecycle.request.with_retries`. The wait happens here,
    in the caller's process: the daemon answers every attempt at once and never
    holds a worker thread or a connection for a caller that waits (a daemon
    that slept for callers could be starved by them).
    """
    from ..lifecycle.request import with_retries
    return with_retries(lambda: run(command, **args), retries, retry_delay, retry_on, on_retry=on_retry,
                        sleep=lambda seconds: time.sleep(seconds))


# -- output ------------------------------------------------------------------------

def want_json(local: bool = False) -> bool:
    obj = click.get_current_context().find_object(Ctx)
    return local or (obj is not None and obj.json)


def emit_json(data) -> None:
    if isinstance(data, dict):
        data = public(data)
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def when(ts) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def deletion(s: dict) -> str | None:
    """When a store goes, as the retention timer will do it: its deadline once
    the restore is released, "waits for release" while a restore runs (a re-run
    restore included: the old deadline does not count), the time it went."""
    status = s.get("status")
    if s.get("deleted_at"):
        return f"deleted {when(s['deleted_at'])}"
    if status in ("deleted", "deleting"):
        return status
    if status == "restoring":
        return "waits for release"
    if status == "restored" and s.get("delete_at"):
        return when(s["delete_at"])
    return None


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


def print_settings(s: dict) -> None:
    """The SMP settings (``smpfs config``, ``smpfs status``)."""
    keep = s["delete_after_s"]
    click.echo(f"server:        {s['server']}")
    click.echo(f"restore-only:  {'on' if s['restore_only'] else 'off'}")
    deletion = "immediately" if keep == 0 else format_duration(keep)
    click.echo(f"deletion:      {deletion} after restore")


def print_folders(folders: list[dict]) -> None:
    """The storage folder table (``smpfs folder list``, ``smpfs status``)."""
    table([[f["path"], f["share_name"], f"{f['clients']}/{f['max_clients']}",
            format_size(f["used_bytes"]) if f.get("used_bytes") is not None else None,
            format_size(f["free_bytes"]) if f.get("free_bytes") is not None else None,
            f["min_free"], "yes" if f["has_room"] else "no: " + ", ".join(f["full_reasons"])]
           for f in folders],
          ["path", "share", "clients", "used", "free", "min free", "room"])


def print_store_path(r: dict, unc: bool, as_json: bool) -> None:
    """A requested store's path (``smpfs request``, ``smpfs store create``)."""
    if want_json(as_json):
        return emit_json(r)
    if unc:
        click.echo(r["unc"])
    elif r.get("path"):
        click.echo(r["path"])
    else:
        click.echo("smpfs: note: the SMP is not mounted; printing the UNC path", err=True)
        click.echo(r["unc"])


def release_message(kind: str, r: dict) -> str:
    """What a release prints, the same for ``smpfs release`` and ``smpfs client release``."""
    if kind == "capture":
        return f"Released capture of {r['computer']}: store {r['store_id'][:12]}… is ready for restore"
    if r.get("deleted"):
        return f"Released restore of {r['computer']}: store deleted (policy: delete immediately)"
    return f"Released restore of {r['computer']}: store kept until {when(r['delete_at'])}"


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


# -- the group ----------------------------------------------------------------------

@click.group("smpfs", cls=SmpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state", "state", envvar="SMPFS_STATE", default=DEFAULT_STATE_DIR, show_default=True,
              metavar="DIR", help="SMP state directory (also $SMPFS_STATE).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON wherever a command has output.")
@click.version_option(__version__, prog_name="smpfs")
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
