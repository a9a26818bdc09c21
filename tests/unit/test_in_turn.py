"""With one GPU the queue's next evaluation makes its checks while the one before it still runs,
yet the terminal shows one evaluation at a time, in the queue's order, each one whole."""
from __future__ import annotations

import threading

from evalkit.in_turn import Turns


class Screen:
    """Stands for the live display: what each evaluation's reporter showed, in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def reporter(self, name: str):
        screen = self

        class Shown:
            def __init__(self) -> None:
                screen.lines.append(f"{name}: header")

            def note(self, text: str) -> None:
                screen.lines.append(f"{name}: {text}")

            def step_started(self, step, index, count) -> None:
                screen.lines.append(f"{name}: step {step}")

            def done(self) -> None:
                screen.lines.append(f"{name}: done")

        return Shown


def test_the_next_evaluation_is_shown_only_once_the_one_before_is_done():
    screen, turns = Screen(), Turns()
    first = turns.reporter(0, screen.reporter("epoch_1"))
    first.step_started("extract", 1, 9)
    second = turns.reporter(1, screen.reporter("epoch_2"))
    second.note("reusing the features")  # its checks, while epoch_1 still runs
    second.step_started("knn", 3, 9)
    first.note("finishing its recall")
    assert screen.lines == ["epoch_1: header", "epoch_1: step extract", "epoch_1: finishing its recall"]
    first.done()
    second.done()
    assert screen.lines[3:] == ["epoch_1: done", "epoch_2: header", "epoch_2: reusing the features",
                                "epoch_2: step knn", "epoch_2: done"]


def test_an_evaluation_done_before_its_turn_is_shown_whole_and_passes_the_turn_on():
    """Its checks failed while the one before it ran: its failure, then the one after it."""
    screen, turns = Screen(), Turns()
    first = turns.reporter(0, screen.reporter("epoch_1"))
    failed = turns.reporter(1, screen.reporter("epoch_2"))
    failed.in_turn(lambda shown: shown.note("failed: checkpoint unreadable"))
    failed.done()
    third = turns.reporter(2, screen.reporter("epoch_3"))
    third.note("extracting")
    first.done()
    assert screen.lines == ["epoch_1: header", "epoch_1: done", "epoch_2: header",
                            "epoch_2: failed: checkpoint unreadable", "epoch_2: done", "epoch_3: header",
                            "epoch_3: extracting"]


def test_turns_follow_the_queue_positions_whatever_order_the_reporters_are_made_in():
    screen, turns = Screen(), Turns()
    later = turns.reporter(1, screen.reporter("epoch_2"))
    later.note("ready first")
    first = turns.reporter(0, screen.reporter("epoch_1"))
    assert screen.lines == ["epoch_1: header"]
    first.done()
    assert screen.lines[-2:] == ["epoch_2: header", "epoch_2: ready first"]


def test_after_ctrl_c_the_shown_display_stops_and_nothing_more_is_shown():
    screen, turns = Screen(), Turns()
    first = turns.reporter(0, screen.reporter("epoch_1"))
    second = turns.reporter(1, screen.reporter("epoch_2"))
    second.note("checks passed")
    turns.close()
    assert screen.lines == ["epoch_1: header", "epoch_1: done"]
    first.note("cancelled")
    first.done()
    second.done()
    assert screen.lines == ["epoch_1: header", "epoch_1: done"]


def test_reports_from_several_threads_keep_each_evaluation_whole():
    screen, turns = Screen(), Turns()
    reporters = [turns.reporter(position, screen.reporter(f"e{position}")) for position in range(4)]

    def report(position: int) -> None:
        for line in range(50):
            reporters[position].note(str(line))
        reporters[position].done()

    threads = [threading.Thread(target=report, args=(position,)) for position in (3, 1, 2, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    expected = [line for position in range(4) for line in
                [f"e{position}: header", *(f"e{position}: {n}" for n in range(50)), f"e{position}: done"]]
    assert screen.lines == expected
