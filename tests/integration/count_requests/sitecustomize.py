"""Test-only: what evalkit asked of the server, counted by each Connection's RequestCounter
(evalkit/ssh/connection.py), summed over the process's connections at the launch
(pipeline._started, right after the launch answered) and at the process's exit, written as JSON to
EVALKIT_TEST_COUNTS. Python imports this module at start-up when its folder is on PYTHONPATH
(test_round_trips.py); evalkit itself carries nothing."""
import atexit
import json
import os

from evalkit import pipeline
from evalkit.ssh import connection

_connections = []
_counts = {}


def _total():
    total = {"sftp_requests": 0, "channels": 0}
    for opened in _connections:
        for key, value in opened.requests.snapshot().items():
            total[key] += value
    return total


_init = connection.Connection.__init__


def _kept(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    _connections.append(self)


connection.Connection.__init__ = _kept
_started = pipeline._started


def _at_launch(*args, **kwargs):
    _counts["at_launch"] = _total()
    return _started(*args, **kwargs)


pipeline._started = _at_launch


@atexit.register
def _write():
    _counts["at_exit"] = _total()
    with open(os.environ["EVALKIT_TEST_COUNTS"], "w", encoding="utf-8") as out:
        json.dump(_counts, out)
