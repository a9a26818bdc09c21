"""Test-only: a real SIGINT, as Ctrl-C in a terminal, at a chosen point of evalkit's code, so that
a test interrupts exactly there rather than at some moment. Python imports this module at start-up
when its folder is on PYTHONPATH (server_runs.interrupted_at); evalkit itself carries nothing.

EVALKIT_TEST_SIGINT_AT=MODULE:QUALNAME[:after] wraps that function: the first call, in whichever
thread, sends the process SIGINT just before it runs (or just after it returned, with `after`).
In the main thread KeyboardInterrupt is raised right there; another thread goes on after a
moment, as a slow link would, while the main thread handles the Ctrl-C.
"""
import importlib
import os
import signal
import threading
import time

_fired = threading.Lock()


def _ctrl_c() -> None:
    if not _fired.acquire(blocking=False):
        return  # once
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5 if threading.current_thread() is threading.main_thread() else 1)


def _install(point: str) -> None:
    module_name, qualname, *when = point.split(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    def at_the_point(*args, **kwargs):
        if when != ["after"]:
            _ctrl_c()
        result = original(*args, **kwargs)
        if when == ["after"]:
            _ctrl_c()
        return result

    setattr(owner, name, at_the_point)


if os.environ.get("EVALKIT_TEST_SIGINT_AT"):
    _install(os.environ["EVALKIT_TEST_SIGINT_AT"])
