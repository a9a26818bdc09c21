"""click only: parse options into typed values (options.py), call one domain function, hand
the data to the view; errors become exit codes at the edge (guard.py). No domain logic here.

`main` is `python -m evalkit`; the two entry scripts run `evaluate_command` and
`quick_command` as whole programs.
"""
from __future__ import annotations

import atexit
import gc

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
    every object of every imported module (~50 ms once paramiko is loaded) only to free memory
    the OS takes back anyway: frozen, they are left alone."""
    atexit.register(gc.freeze)
    command(prog_name=prog_name)


def evaluate_main() -> None:
    _run_as_program(evaluate_command, "distillation_model_evaluation.py")


def quick_main() -> None:
    _run_as_program(quick_command, "quick_evaluation.py")


def group_main(prog_name: str = "evalkit") -> None:
    _run_as_program(main, prog_name)
