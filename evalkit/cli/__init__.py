"""click only: parse options into typed values (options.py), call one domain function, hand
the data to the view; errors become exit codes at the edge (guard.py). No domain logic here.

`main` is `python -m evalkit`; the two entry scripts run `evaluate_command` and
`quick_command` as whole programs.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading

import click

from .evaluate import demo, doctor, evaluate_command, quick_command
from .guard import CONTEXT
from .references import references
from .results import report, results
from .runs import attach, cancel, logs, status
from .version import version_option


@click.group(context_settings=CONTEXT)
@version_option
@click.option("-v", "--verbose", is_flag=True, expose_value=False,
              help="with --version: also the versions of Python, paramiko, click and rich")
def main() -> None:
    """evalkit: evaluate Chinese-CLIP checkpoints on a GPU server over SSH.

    \b
    Example:
      python -m evalkit results --best --format markdown
    """


for name, command in {"evaluate": evaluate_command, "quick": quick_command, "results": results, "demo": demo,
                      "doctor": doctor, "attach": attach, "cancel": cancel, "status": status, "logs": logs,
                      "references": references, "report": report}.items():
    main.add_command(command, name=name)


def _run_as_program(command: click.Command, prog_name: str) -> None:
    """COMMAND as the whole process. At exit the interpreter would run the garbage collector over
    every object of every imported module (~50 ms once paramiko is loaded), then tear the modules
    down one by one (~20 ms more), only to free memory the OS takes back anyway: once the command
    has ended (SystemExit, as click ends it), the exit handlers run, the other threads are waited
    for and the streams flushed, as at a normal exit, and the process ends there. Anything else
    (a traceback with --debug) ends the usual way."""
    try:
        command(prog_name=prog_name)
        status: object = 0
    except SystemExit as ended:
        status = ended.code
    _exit_now(status)


def _exit_now(status: object) -> None:
    """End the process as SystemExit(STATUS) would, without the interpreter's teardown."""
    code = 0 if status is None else status if isinstance(status, int) else 1
    if not isinstance(status, (int, type(None))):
        print(status, file=sys.stderr)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): what it could take, it took
            code = code or 1
    os._exit(code)


def evaluate_main() -> None:
    _run_as_program(evaluate_command, "distillation_model_evaluation.py")


def quick_main() -> None:
    _run_as_program(quick_command, "quick_evaluation.py")


def group_main(prog_name: str = "evalkit") -> None:
    _run_as_program(main, prog_name)
