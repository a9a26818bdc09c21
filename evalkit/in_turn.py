"""Reporters shown one after another while their evaluations overlap.

With one GPU, a queue's next evaluation makes its checks while the one before it still runs
(gpu_lane.py), but the terminal shows one evaluation at a time, in the queue's order: what an
evaluation reports before its turn is kept, and replayed the moment the one before it is done.
"""
from __future__ import annotations

import threading
from typing import Callable

from .outcome import Reporter


class Turns:
    def __init__(self) -> None:
        self._lock = threading.RLock()  # a replay may end a turn, which starts the next
        self._reporters: dict[int, InTurn] = {}
        self._current = 0
        self._closed = False

    def reporter(self, position: int, make: Callable[[], Reporter]) -> "InTurn":
        """The reporter of the evaluation at POSITION in the queue (0 first); MAKE builds what it
        shows through, when its turn comes."""
        with self._lock:
            made = InTurn(self, position, make)
            self._reporters[position] = made
            if position == self._current:
                made.begin()
            return made

    def run(self, reporter: "InTurn", action: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            if reporter.position == self._current:
                action()
            else:
                reporter.kept.append(action)

    def end_turn(self, position: int) -> None:
        """POSITION's evaluation is done: the next one's kept reports are shown, and so on."""
        with self._lock:
            if self._closed or position != self._current:
                return
            self._current += 1
            following = self._reporters.get(self._current)
            if following is not None:
                following.begin()

    def close(self) -> None:
        """Ctrl-C: the one shown stops its display; nothing else is shown."""
        with self._lock:
            current = self._reporters.get(self._current)
            self._closed = True
            if current is not None and current.target is not None:
                current.target.done()


class InTurn:
    """A Reporter whose calls wait for its turn (see Turns)."""

    def __init__(self, turns: Turns, position: int, make: Callable[[], Reporter]) -> None:
        self.turns, self.position, self.make = turns, position, make
        self.target: Reporter | None = None
        self.kept: list[Callable[[], None]] = []

    def begin(self) -> None:
        self.target = self.make()
        kept, self.kept = self.kept, []
        for action in kept:
            action()

    def in_turn(self, action: Callable[[Reporter], None]) -> None:
        self.turns.run(self, lambda: action(self.target))

    def step_started(self, step, index: int, count: int) -> None:
        self.in_turn(lambda target: target.step_started(step, index, count))

    def step_event(self, step, event) -> None:
        self.in_turn(lambda target: target.step_event(step, event))

    def step_finished(self, step, result) -> None:
        self.in_turn(lambda target: target.step_finished(step, result))

    def note(self, text: str) -> None:
        self.in_turn(lambda target: target.note(text))

    def log_opened(self, path) -> None:
        self.in_turn(lambda target: target.log_opened(path))

    def done(self) -> None:
        def finish(target: Reporter) -> None:
            target.done()
            self.turns.end_turn(self.position)
        self.in_turn(finish)
