"""click only: the commands that follow, inspect and stop runs started earlier."""
from __future__ import annotations

from pathlib import Path

import click

from .. import view
from ..config import build_settings
from ..store import LocalStore
from .guard import CONTEXT, guarded
from .options import records_options


def _store(config: Path | None, results_dir: str | None) -> LocalStore:
    return LocalStore.of(build_settings(config, {"results_dir": results_dir}))


@click.command(context_settings=CONTEXT)
@click.argument("run_id")
@click.option("-v", "--verbose", is_flag=True, help="also stream the upstream scripts' output and each remote command (by default they go to the log only)")
@records_options
@guarded
def attach(run_id: str, verbose: bool, config: Path | None, results_dir: str | None, debug: bool) -> None:
    """Follow run RUN_ID to its end, pull its results and show them, as an attached run would.

    Output already printed by the server is shown from the start; Ctrl-C cancels the run.

    \b
    Example:
      python -m evalkit attach 20261205-071502-3fa1c2
    """
    record = _store(config, results_dir).load_record(run_id)
    out, _ = view.make_consoles()
    from .. import pipeline
    with view.LiveReporter(out, verbose) as reporter:
        report = pipeline.attach(record, reporter)
    view.show_report(out, report)


@click.command(context_settings=CONTEXT)
@click.argument("run_id")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="seconds between SIGTERM and SIGKILL")
@records_options
@guarded
def cancel(run_id: str, grace: float, config: Path | None, results_dir: str | None, debug: bool) -> None:
    """Stop run RUN_ID on the server: SIGTERM to its processes, then SIGKILL; check none remain.

    \b
    Example:
      python -m evalkit cancel 20261205-071502-3fa1c2 --grace 30
    """
    record = _store(config, results_dir).load_record(run_id)
    out, _ = view.make_consoles()
    from .. import pipeline
    view.show_note(out, pipeline.cancel(record, grace).describe(run_id))


@click.command(context_settings=CONTEXT)
@click.argument("run_id", required=False)
@click.option("--last", default=10, show_default=True, help="how many recent runs to list")
@records_options
@guarded
def status(run_id: str | None, last: int, config: Path | None, results_dir: str | None, debug: bool) -> None:
    """Where runs stand on the server: the recent ones, or RUN_ID step by step.

    \b
    Example:
      python -m evalkit status
    """
    store = _store(config, results_dir)
    out, _ = view.make_consoles()
    records = [store.load_record(run_id)] if run_id else store.newest_records(last)
    if not records:
        view.show_note(out, f"no runs recorded in {store.runs_dir}")
        return
    from ..run_states import states  # the SSH side loads only when a command runs
    found = states(records)
    view.show_runs(out, [(record, found[record.run_id]) for record in records])


@click.command(context_settings=CONTEXT)
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the run ends")
@records_options
@guarded
def logs(run_id: str, follow: bool, config: Path | None, results_dir: str | None, debug: bool) -> None:
    """Print run RUN_ID's remote output, step by step (plain text, for a pager or grep).

    \b
    Example:
      python -m evalkit logs -f 20261205-071502-3fa1c2
    """
    record = _store(config, results_dir).load_record(run_id)
    _, err = view.make_consoles()  # stdout is the log's text alone: a reconnect is said on stderr
    from .. import pipeline
    for chunk in pipeline.logs(record, follow, note=lambda text: view.show_note(err, text)):
        click.echo(chunk, nl=False)
