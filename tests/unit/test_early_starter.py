"""A run's starter begun early (while the laptop looks at the dataset) is the one the run takes:
once, for the same command on the same opening of the same connection; else a new one begins."""
from __future__ import annotations

import dataclasses
import json

from evalkit.config import Settings
from evalkit.server import PROBE, PROVENANCE, scripts_for
from evalkit.starter import START_ARGS, Starter, start_command


class _Command:
    """A starter's command on a server where the dataset folder /d holds label_cn.txt and test/."""

    def __init__(self, text: str) -> None:
        self.text, self.abandoned, self.sent = text, False, []

    def ask(self, line: bytes, marker: bytes, timeout: float) -> dict:
        self.sent.extend(json.loads(part) for part in line.decode().splitlines())
        if len(self.sent) == 1 or "files" in self.sent[-1]:
            return {"missing": []}
        return {"there": [path for path in self.sent[-1]["look"] if path in ("/d/label_cn.txt", "/d/test")]}

    def abandon(self) -> None:
        self.abandoned = True


class _Connection:
    """What Starter asks of a Connection: its opening's number, commands started on it, and what
    to call when it closes (as Connection.when_closed: once, at the next close)."""

    def __init__(self) -> None:
        self.generation, self.started, self.closing = 1, [], []

    def start_command(self, command: str) -> _Command:
        self.started.append(_Command(command))
        return self.started[-1]

    def when_closed(self, callback) -> None:
        self.closing.append(callback)

    def close(self) -> None:
        callbacks, self.closing = self.closing, []
        for callback in callbacks:
            callback()


SETTINGS = Settings(datapath="/data")


def test_the_first_run_takes_the_starter_begun_early_and_the_next_begins_its_own():
    connection = _Connection()
    Starter.begin_early(connection, SETTINGS)
    first = Starter.begin(connection, SETTINGS, [])
    second = Starter.begin(connection, SETTINGS, [])
    assert [c.text for c in connection.started] == [start_command(SETTINGS)] * 2
    assert first.command is connection.started[0] and second.command is connection.started[1]


def test_another_action_or_another_connection_never_takes_it():
    connection, other = _Connection(), _Connection()
    Starter.begin_early(connection, SETTINGS)
    status = Starter.begin(connection, SETTINGS, [], ("states", "--run-dirs"))
    elsewhere = Starter.begin(other, SETTINGS, [])
    assert status.command is not connection.started[0] and elsewhere.command is other.started[0]
    assert Starter.begin(connection, SETTINGS, [], START_ARGS).command is connection.started[0]


def test_after_a_reconnect_the_early_one_is_given_up_for_a_new_one():
    connection = _Connection()
    Starter.begin_early(connection, SETTINGS)
    connection.generation = 2  # the link dropped and came back: the early command's channel is gone
    taken = Starter.begin(connection, SETTINGS, [])
    assert connection.started[0].abandoned and taken.command is connection.started[1]


def test_begun_twice_early_it_is_one_command():
    connection = _Connection()
    Starter.begin_early(connection, SETTINGS)
    Starter.begin_early(connection, SETTINGS)
    Starter.begin(connection, SETTINGS, [])
    assert len(connection.started) == 1


def test_the_look_asks_the_early_starter_with_every_script_a_run_may_need_then_the_run_takes_it():
    connection = _Connection()
    Starter.begin_early(connection, SETTINGS)
    assert Starter.look_early(connection, SETTINGS, ["/d/label_cn.txt", "/d/valid", "/d/test"]) == \
        {"/d/label_cn.txt", "/d/test"}
    [command] = connection.started
    digests, look = command.sent  # one message: the scripts' digests, then the look
    assert set(digests["files"]) >= set(scripts_for(SETTINGS, extra=(PROBE, PROVENANCE))) and look["look"]
    run = Starter.begin(connection, SETTINGS, scripts_for(SETTINGS, extra=(PROBE, PROVENANCE)))
    assert run.command is command and len(connection.started) == 1


def test_a_run_needing_scripts_the_look_did_not_check_begins_its_own():
    connection = _Connection()
    Starter.begin_early(connection, SETTINGS)
    Starter.look_early(connection, SETTINGS, ["/d/label_cn.txt"])
    fast = dataclasses.replace(SETTINGS, knn="fast")  # a cell of other settings: fast_knn.py too
    run = Starter.begin(connection, fast, scripts_for(fast))
    assert connection.started[0].abandoned and run.command is connection.started[1]


def test_without_an_early_starter_the_look_is_left_to_its_caller():
    assert Starter.look_early(_Connection(), SETTINGS, ["/d/label_cn.txt"]) is None


def _begun_early(connection: _Connection) -> _Command:
    Starter.begin_early(connection, SETTINGS)
    Starter.look_early(connection, SETTINGS, ["/d/test"])  # waits until its command has started
    return connection.started[0]


def test_a_command_that_fails_before_its_evaluation_ends_the_early_starter_with_the_connection():
    connection = _Connection()
    early = _begun_early(connection)
    connection.close()  # the command failed after the look: no evaluation took the starter
    assert early.abandoned  # EOF: the bootstrap, its login shell and python end on the server
    assert Starter.begin(connection, SETTINGS, []).command is connection.started[1]  # forgotten


def test_a_starter_a_run_took_is_the_runs_when_the_connection_closes():
    connection = _Connection()
    early = _begun_early(connection)
    taken = Starter.begin(connection, SETTINGS, scripts_for(SETTINGS, extra=(PROBE, PROVENANCE)))
    connection.close()
    assert taken.command is early and not early.abandoned


def test_a_connection_calls_what_waits_for_its_close_once_at_that_close():
    from evalkit.ssh import Connection, Target
    connection, called = Connection(Target("a", "a.example", 22, "u")), []
    connection.when_closed(lambda: called.append("closed"))
    connection.close()
    connection.close()
    assert called == ["closed"]
