"""One GPU's lane: the next evaluation makes its checks while the one before it runs, but a GPU
never runs two evaluations' GPU steps, and serves them in the queue's order."""
from __future__ import annotations

import threading
import time

import pytest

from evalkit.config import Settings
from evalkit.gpu_lane import GpuLane
from evalkit.gpu_queue import workers_of


def _in_thread(action) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def test_the_next_ticket_waits_until_the_one_before_gives_the_gpu_back():
    lane = GpuLane(0)
    first, second = lane.hold(), lane.hold()
    first.take()
    waiting = _in_thread(second.take)
    waiting.join(0.2)
    assert waiting.is_alive() and second.state == "waiting"
    first.give_back()
    waiting.join(2)
    assert not waiting.is_alive() and second.state == "held"


def test_tickets_are_served_in_the_queues_order_whoever_is_ready_first():
    lane = GpuLane(0)
    holds = [lane.hold() for _ in range(3)]
    order: list[int] = []

    def run(ticket: int) -> None:
        holds[ticket].take()
        order.append(ticket)
        time.sleep(0.05)
        holds[ticket].give_back()

    threads = [_in_thread(lambda t=t: run(t)) for t in (2, 1)]  # the later ones are ready first
    time.sleep(0.1)
    assert order == []
    threads.append(_in_thread(lambda: run(0)))
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2]


def test_a_ticket_given_up_without_the_gpu_is_skipped():
    """Failed checks, or predictions reused (recall alone): the next one need not wait for it."""
    lane = GpuLane(0)
    failed, recall_only, extracting = lane.hold(), lane.hold(), lane.hold()
    recall_only.give_back()  # before its turn
    failed.give_back()       # then the one it waited behind
    taken = _in_thread(extracting.take)
    taken.join(2)
    assert extracting.state == "held"


def test_giving_back_twice_passes_one_turn_only():
    lane = GpuLane(0)
    first, second, third = lane.hold(), lane.hold(), lane.hold()
    first.take()
    first.give_back()
    first.give_back()  # the follower at the last GPU step, then the evaluation's end
    second.take()
    blocked = _in_thread(third.take)
    blocked.join(0.2)
    assert blocked.is_alive()
    second.give_back()
    blocked.join(2)
    assert third.state == "held"


@pytest.mark.parametrize("executor, gpus, cells, expected", [
    ("ssh", [0], 6, [0, 0]),              # one runs, the next makes its checks
    ("ssh", [0, 1], 6, [0, 1, 0, 1]),
    ("ssh", [0, 1], 3, [0, 1, 0]),        # never more workers than cells
    ("ssh", [3], 1, [3]),
    ("slurm", [0, 1, 2], 3, [0, 1, 2]),   # the scheduler places its jobs: one worker each, no lane
    # a sweep of 120 cells: not 120 threads checking at once on a shared login node
    ("slurm", list(range(120)), 120, list(range(8))),
])
def test_workers_per_gpu(executor, gpus, cells, expected):
    workers = workers_of(Settings(executor=executor), gpus, cells)
    assert [gpu for _, gpu in workers] == expected
    lanes = [lane for lane, _ in workers]
    if executor == "slurm":
        assert lanes == [None] * len(expected)
    else:  # the workers of one GPU share its lane
        assert {gpu: {id(lane) for lane, g in workers if g == gpu} for gpu in expected} == \
            {gpu: {id(next(lane for lane, g in workers if g == gpu))} for gpu in expected}


def test_under_a_scheduler_the_cells_of_one_checkpoint_are_spread_out_in_the_queue():
    from evalkit.evaluation import Evaluation
    from evalkit.gpu_queue import queue_order
    cells = [Evaluation(dataset, "valid", f"/d/{checkpoint}.pt") for checkpoint in "ab" for dataset in ("A", "B", "C")]
    # a checkpoint hashed by one cell's checks at a time: its next cell finds the hash cached
    assert queue_order(Settings(executor="slurm"), cells) == [0, 3, 1, 4, 2, 5]
    assert queue_order(Settings(executor="ssh"), cells) == [0, 1, 2, 3, 4, 5]


def test_a_gpu_whose_run_was_abandoned_is_never_given_to_the_next_evaluation():
    # the connection was lost past reconnect_timeout while the first run's GPU steps ran: they
    # may go on, so the next evaluation must not start beside them on the same GPU
    from evalkit.errors import RemoteStepFailed
    lane = GpuLane(0)
    first, second = lane.hold(), lane.hold()
    first.take()
    outcome: list = []
    waiting = _in_thread(lambda: outcome.append(_taken_or_refused(second)))
    first.keep("run r1 may still be using it: evalkit stopped following it")
    waiting.join(2)
    assert outcome == ["not started on GPU 0: run r1 may still be using it: evalkit stopped following it"]
    assert lane.is_closed and second.state == "waiting"
    with pytest.raises(RemoteStepFailed):
        lane.hold().take()
    first.give_back()  # the pipeline's last word changes nothing
    assert lane.is_closed


def _taken_or_refused(hold) -> str:
    from evalkit.errors import RemoteStepFailed
    try:
        hold.take()
    except RemoteStepFailed as refused:
        return refused.message
    return hold.state


class AnsweringServer:
    """An executor whose state() is what the server answers about the run, or cannot answer."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def state(self, run):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("answer, next_cell", [
    ("completed", "held"),                  # the run ended: its GPU is free
    ("failed", "held"),
    ("still running", "refused"),           # its GPU steps go on without anyone following them
    ("cannot be asked", "refused"),         # the connection was lost past reconnect_timeout
])
def test_following_that_stops_early_gives_the_gpu_back_only_once_the_run_is_seen_to_have_ended(answer, next_cell):
    from evalkit.errors import ConnectionLost
    from evalkit.evaluation import Evaluation
    from evalkit.executors.base import JobState
    from evalkit.pipeline import _leave_gpu
    from evalkit.plan import build_plan
    from evalkit.run_record import new_record
    settings, evaluation = Settings(), Evaluation("Flickr30k-CN", "valid", "/d/experiments/a/checkpoints/epoch_1.pt")
    record = new_record(settings, evaluation, build_plan(settings, evaluation), "r1", "/srv/.evalkit/runs/r1")
    server = AnsweringServer({"completed": JobState("completed", False), "failed": JobState("failed", False, "extract"),
                              "still running": JobState(None, True),
                              "cannot be asked": ConnectionLost("the connection to the server was lost")}[answer])
    lane = GpuLane(0)
    first, second = lane.hold(), lane.hold()
    first.take()
    _leave_gpu(server, record, first)
    outcome = _taken_or_refused(second)
    if next_cell == "held":
        assert outcome == "held"
    else:
        assert outcome.startswith("not started on GPU 0: run r1 may still be using it: evalkit stopped following it")
        assert "python -m evalkit attach r1" in outcome
