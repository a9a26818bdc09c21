"""The CLI's edge: every EvalkitError becomes one message and its exit code (errors.py);
tracebacks only with --debug (a bug's is also kept in a file: crashes.py); Ctrl-C exits 130."""
from __future__ import annotations

import functools
import sys
import traceback
from typing import Any, Callable

import click

from .. import view
from ..crashes import keep_traceback, where_it_is
from ..errors import INTERRUPTED_EXIT_CODE, UNEXPECTED_EXIT_CODE, EvalkitError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def guarded(command: Callable) -> Callable:
    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        _, errors = view.make_consoles()
        debug = kwargs.get("debug", False)
        try:
            command(**kwargs)
        except EvalkitError as error:
            if debug:
                traceback.print_exc()
            view.show_error(errors, error)
            sys.exit(error.exit_code)
        except click.ClickException:
            raise  # usage errors: click prints them with the option's name and exits 2
        except KeyboardInterrupt:
            view.show_interrupted(errors)
            sys.exit(INTERRUPTED_EXIT_CODE)
        except Exception as error:  # a bug: say so plainly, keep the traceback for --debug
            if debug:
                raise
            errors.print(f"unexpected error: {type(error).__name__}: {error}\n"
                         f"{where_it_is(keep_traceback())}; please report it", markup=False, soft_wrap=True)
            sys.exit(UNEXPECTED_EXIT_CODE)
    return wrapper


def debug_option(command: Callable) -> Callable:
    return click.option("--debug", is_flag=True, help="show Python tracebacks on errors")(command)
