"""One GPU's lane in a command of several evaluations (gpu_queue.py).

The evaluation whose GPU steps run holds the lane, from its launch to the end of its last GPU
step (plan.GPU_STEPS); the next evaluation on that GPU makes its checks and decisions meanwhile
(its starter, the inspection, the preflight) and starts the moment the GPU is free, while the
one before it finishes its recall on the CPU. A GPU never runs two evaluations' GPU steps, and
serves them in the queue's order: a hold is a ticket, issued when its evaluation leaves the queue.
The GPU is given back when the GPU steps are over, never merely because the laptop stopped
following them: then the lane closes (LaneHold.keep) and its evaluations go to the other GPUs.
"""
from __future__ import annotations

import threading

from .errors import RemoteStepFailed


class GpuLane:
    def __init__(self, gpu: int) -> None:
        self.gpu = gpu
        self.closed_by: str | None = None  # why no evaluation may start on this GPU any more
        self._turns = threading.Condition()
        self._issued = 0              # tickets handed out
        self._serving = 0             # the ticket whose turn it is
        self._passed: set[int] = set()  # tickets given back, the one served included

    def hold(self) -> "LaneHold":
        """The next ticket: call it as the evaluation leaves the queue, so tickets follow its order."""
        with self._turns:
            self._issued += 1
            return LaneHold(self, self._issued - 1)

    @property
    def is_closed(self) -> bool:
        return self.closed_by is not None

    def _wait_for(self, ticket: int) -> None:
        with self._turns:
            self._turns.wait_for(lambda: self._serving == ticket or self.closed_by is not None)
            if self.closed_by is not None:
                raise RemoteStepFailed(f"not started on GPU {self.gpu}: {self.closed_by}",
                                       "evaluate it again once that run has ended (python -m evalkit status)")

    def _close(self, reason: str) -> None:
        with self._turns:
            self.closed_by = reason
            self._turns.notify_all()

    def _pass(self, ticket: int) -> None:
        with self._turns:
            self._passed.add(ticket)
            while self._serving in self._passed:  # an evaluation that never needed the GPU is skipped
                self._passed.discard(self._serving)
                self._serving += 1
            self._turns.notify_all()


class LaneHold:
    """One evaluation's ticket: taken at most once, given back exactly once (again: nothing)."""

    def __init__(self, lane: GpuLane, ticket: int) -> None:
        self.lane, self.ticket = lane, ticket
        self.state = "waiting"  # then "held", then "given back"; or straight to "given back"

    def take(self) -> None:
        """Wait until every evaluation before this one on the GPU has ended its GPU steps (or
        given up its turn)."""
        if self.state == "waiting":
            self.lane._wait_for(self.ticket)
            self.state = "held"

    def keep(self, reason: str) -> None:
        """The GPU steps may go on without anyone following them (a lost connection, a failure on
        this side): the GPU is never given back, and no evaluation starts on it in this command."""
        if self.state != "given back":
            self.state = "given back"
            self.lane._close(reason)

    def give_back(self) -> None:
        """The GPU steps are over, or never come (failed checks, reused predictions)."""
        if self.state != "given back":
            self.state = "given back"
            self.lane._pass(self.ticket)
