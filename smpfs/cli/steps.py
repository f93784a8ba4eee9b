"""The migration steps a task sequence takes: Request and Release State Store,
for capture and for restore."""
from __future__ import annotations

import click

from ..errors import SmpError
from ..lifecycle import request
from .base import emit_json, json_option, main, print_store_path, release_message, run, run_retrying, want_json


def _retrying(command: str, retry_on: tuple, retries: int, delay: float, as_json: bool, **args) -> dict:
    """The step with its retries: each retry a line on stderr, or with --json
    (one object only) listed as ``attempts`` beside the error if it fails."""
    attempts: list[dict] = []

    def say(attempt: int, e) -> None:
        if as_json:
            attempts.append({"attempt": attempt, "class": type(e).__name__, "exit": e.exit_code,
                             "message": e.message})
        else:
            click.echo(f"smpfs: {e.message}; retry {attempt}/{retries} in {delay:g}s", err=True)
    try:
        return run_retrying(command, retries, delay, retry_on, on_retry=say, **args)
    except SmpError as e:
        if as_json and attempts:
            e.json_extra = {"attempts": attempts}
        raise


@main.group("request")
def request_group():
    """Request State Store (capture or restore); prints the store's path."""


@request_group.command("capture")
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
    r = _retrying("request_capture", request.RETRY_CAPTURE, retries, retry_delay, want_json(as_json),
                  computer=computer)
    print_store_path(r, unc, as_json)


@request_group.command("restore")
@click.argument("computer", required=False)
@click.option("--retries", type=click.IntRange(0, 600), default=0, show_default=True,
              help="Retry this many times while no store is ready (not captured or released yet).")
@click.option("--retry-delay", type=click.FloatRange(0, 86400), default=0, show_default=True,
              help="Seconds between retries.")
@click.option("--unc", is_flag=True, help="Print the UNC path.")
@json_option
def request_restore(computer, retries, retry_delay, unc, as_json):
    """Find the store whose destination is this computer and print its path.

    With --retries, waits for a capture that is not released yet (or an SMP
    being restarted), as ConfigMgr's Request State Store step does.

    \b
    Example:
      OSDStateStorePath=$(smpfs request restore --retries 10 --retry-delay 60)
    """
    r = _retrying("request_restore", request.RETRY_RESTORE, retries, retry_delay, want_json(as_json),
                  computer=computer)
    print_store_path(r, unc, as_json)


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
    click.echo(release_message("capture", r))


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
    click.echo(release_message("restore", r))
