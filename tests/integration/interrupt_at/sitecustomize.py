"""Test-only: a real SIGINT, as Ctrl-C in a terminal, or a full disk, at a chosen point of
evalkit's code, so that a test acts exactly there rather than at some moment. Python imports this
module at start-up when its folder is on PYTHONPATH (server_runs.interrupted_at, filled_at);
evalkit itself carries nothing.

EVALKIT_TEST_SIGINT_AT=MODULE:QUALNAME[:after] wraps that function: the first call, in whichever
thread, sends the process SIGINT just before it runs (or just after it returned, with `after`).
In the main thread KeyboardInterrupt is raised right there; another thread goes on after a
moment, as a slow link would, while the main thread handles the Ctrl-C.

EVALKIT_TEST_FILL_AT=MODULE:QUALNAME with EVALKIT_TEST_FILL=FOLDER:BYTES: before its first call,
a file in FOLDER (the test bed's server is this machine) takes all of its disk but BYTES.
"""
import importlib
import os
import signal
import threading
import time

_fired = threading.Lock()
_filled = threading.Lock()


def _ctrl_c() -> None:
    if not _fired.acquire(blocking=False):
        return  # once
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5 if threading.current_thread() is threading.main_thread() else 1)


def _fill() -> None:
    if not _filled.acquire(blocking=False):
        return
    folder, leave = os.environ["EVALKIT_TEST_FILL"].rsplit(":", 1)
    with open(os.path.join(folder, "filler"), "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:  # the disk is full
            pass
        filler.truncate(max(0, filler.tell() - int(leave)))


def _install(point: str, act) -> None:
    module_name, qualname, *when = point.split(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    def at_the_point(*args, **kwargs):
        if when != ["after"]:
            act()
        result = original(*args, **kwargs)
        if when == ["after"]:
            act()
        return result

    setattr(owner, name, at_the_point)


if os.environ.get("EVALKIT_TEST_SIGINT_AT"):
    _install(os.environ["EVALKIT_TEST_SIGINT_AT"], _ctrl_c)
if os.environ.get("EVALKIT_TEST_FILL_AT"):
    _install(os.environ["EVALKIT_TEST_FILL_AT"], _fill)
