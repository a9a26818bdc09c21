"""A run's starter begun early (while the laptop looks at the dataset) is the one the run takes:
once, for the same command on the same opening of the same connection; else a new one begins."""
from __future__ import annotations

from evalkit.config import Settings
from evalkit.starter import START_ARGS, Starter, start_command


class _Command:
    def __init__(self, text: str) -> None:
        self.text, self.abandoned = text, False

    def abandon(self) -> None:
        self.abandoned = True


class _Connection:
    """What Starter asks of a Connection: its opening's number, and commands started on it."""

    def __init__(self) -> None:
        self.generation, self.started = 1, []

    def start_command(self, command: str) -> _Command:
        self.started.append(_Command(command))
        return self.started[-1]


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
