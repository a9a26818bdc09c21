"""click only: the commands that follow, inspect and stop runs started earlier (see jobs.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from . import runs, view
from .cli import _service, guarded, main, show_report
from .config import build_settings
from .errors import EvalkitError
from .runs import RunRecord


def run_options(command: Callable) -> Callable:
    """Where the local run records are: RESULTS_DIR/runs/ (from --results-dir or --config)."""
    command = click.option("--debug", is_flag=True, help="show Python tracebacks on errors")(command)
    command = click.option("--results-dir", help="local results folder holding runs/  [default: results]")(command)
    return click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
                        help="YAML config (for its results_dir)")(command)


def _record(config: Path | None, results_dir: str | None, run_id: str) -> RunRecord:
    settings = build_settings(config, {"results_dir": results_dir})
    return runs.load(Path(settings.results_dir), run_id)


@main.command()
@click.argument("run_id")
@click.option("--verbose", is_flag=True, help="also print each remote command as it starts")
@run_options
@guarded
def attach(run_id: str, verbose: bool, config: Path | None, results_dir: str | None, debug: bool) -> None:
    """Follow run RUN_ID to its end, pull its results and show them, as an attached run would.

    Output already printed by the server is shown from the start; Ctrl-C cancels the run.
    """
    record = _record(config, results_dir, run_id)
    out, _ = view.make_consoles()
    with view.LiveReporter(out, verbose) as reporter:
        report = _service().attach(record, reporter)
    show_report(out, report)


@main.command()
@click.argument("run_id")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="seconds between SIGTERM and SIGKILL")
@run_options
@guarded
def cancel(run_id: str, grace: float, config: Path | None, results_dir: str | None, debug: bool) -> None:
    """Stop run RUN_ID on the server: SIGTERM to its processes, then SIGKILL; check none remain."""
    record = _record(config, results_dir, run_id)
    out, _ = view.make_consoles()
    result = _service().cancel(record, grace)
    view.show_note(out, _service().describe_cancel(run_id, result))


@main.command()
@click.argument("run_id", required=False)
@click.option("--last", default=10, show_default=True, help="how many recent runs to list")
@run_options
@guarded
def status(run_id: str | None, last: int, config: Path | None, results_dir: str | None, debug: bool) -> None:
    """Where runs stand on the server: the recent ones, or RUN_ID step by step."""
    settings = build_settings(config, {"results_dir": results_dir})
    out, _ = view.make_consoles()
    records = [runs.load(Path(settings.results_dir), run_id)] if run_id else \
        runs.newest(Path(settings.results_dir), last)
    if not records:
        view.show_note(out, f"no runs recorded in {runs.records_dir(Path(settings.results_dir))}")
        return
    view.show_runs(out, [(record, _safe_state(record)) for record in records])


def _safe_state(record: RunRecord) -> dict:
    try:
        return _service().state(record)
    except EvalkitError as error:  # one unreachable server must not hide the other runs
        return {"error": error.message}


@main.command()
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the run ends")
@run_options
@guarded
def logs(run_id: str, follow: bool, config: Path | None, results_dir: str | None, debug: bool) -> None:
    """Print run RUN_ID's remote output, step by step (plain text, for a pager or grep)."""
    record = _record(config, results_dir, run_id)
    for chunk in _service().logs(record, follow):
        click.echo(chunk, nl=False)
