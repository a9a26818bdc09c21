"""`logs` of a run: every step's output in one ask to the server (the executor's step_logs:
remote/job.py logs), or, with --follow, as the run's event stream brings it (event_stream.py, the
same channel a followed run reads): a far server costs a round trip, not a dozen SFTP requests per
step or a poll every moment. Both say it in the same words (StepText): a run that has ended gets
the same text either way."""
from __future__ import annotations

import codecs
from typing import Iterator

from .event_stream import EventStream
from .events import STREAMS, Event, Output, RunEnded, StepEnded, StepStarted
from .executors.base import Executor, JobState, RemoteRun
from .follow import Liveness, check_alive
from .plan import Step
from .progress import ProtocolFilter
from .session import Session

FILE_SUFFIXES = {"stdout": "out", "stderr": "err"}  # step_logs' keys for a step's two output files


class StepText:
    """One step's part of `logs`: its heading, its output without evalkit's marked lines (they
    are the laptop's; a person or a file gets upstream's output), and how it exited. Bytes go in
    as they come, a piece at a time; a UTF-8 character cut between two pieces comes out whole,
    and an undecodable byte as U+FFFD."""

    def __init__(self, step: Step) -> None:
        self.step = step
        self.decoders = {stream: codecs.getincrementaldecoder("utf-8")("replace") for stream in STREAMS}
        self.filters = {stream: ProtocolFilter() for stream in STREAMS}

    def heading(self) -> str:
        return f"### step {self.step.name}: {self.step.title}\n"

    def output(self, stream: str, data: bytes, is_all: bool = False) -> str:
        """What DATA, the next bytes of STREAM (all that is known of it with IS_ALL), shows."""
        return self.filters[stream].feed(self.decoders[stream].decode(data, is_all))

    def exited(self, code: int) -> str:
        """The output's held-back end, then the step's exit line."""
        rest = "".join(self.output(stream, b"", is_all=True) for stream in STREAMS)
        return rest + "".join(self.filters[stream].close() for stream in STREAMS) + \
            f"### step {self.step.name} exited {code}\n"


def logs_text(steps: tuple[Step, ...] | list[Step], answered: list[dict]) -> Iterator[str]:
    """ANSWERED: each started step's files ({"out", "err", "exit"}: text, or None), in order.
    Each step's heading, its stdout then stderr, and how it exited; up to the first step still
    running or failed."""
    for step, files in zip(steps, answered):
        text = StepText(step)
        yield text.heading()
        for stream, suffix in FILE_SUFFIXES.items():
            yield text.output(stream, _as_bytes(files.get(suffix)), is_all=True)
        exit_fields = (files.get("exit") or "").split()
        if not exit_fields:
            return  # running: what it printed so far
        code = int(exit_fields[0])
        yield text.exited(code)
        if code != 0:
            return


def _as_bytes(text: str | None) -> bytes:
    """The file's bytes, which job.py sends as text with surrogates for what is not UTF-8."""
    return (text or "").encode("utf-8", "surrogateescape")


class EventsText:
    """A run's events as `logs` says them (logs_text's words), step by step; is_done after a
    failed step or the run's end. Raises as the follower does when the run ended in the middle
    of a step because it was cancelled or its driver crashed."""

    def __init__(self, run: RemoteRun) -> None:
        self.run = run
        self.running: StepText | None = None
        self.is_done = False

    def text_of(self, event: Event) -> str:
        if isinstance(event, StepStarted):
            self.running = StepText(self.run.plan.steps[event.step])
            return self.running.heading()
        if isinstance(event, Output) and self.running is not None:
            return self.running.output(event.stream, event.data)
        if isinstance(event, StepEnded) and self.running is not None:
            text, self.running, self.is_done = self.running.exited(event.code), None, event.code != 0
            return text
        if isinstance(event, RunEnded):
            self.is_done = True
            if self.running is not None:  # no exit code will come: say why, as `attach` would
                check_alive(JobState.from_answer({"status": event.status}), self.run, self.when())
        return ""

    def when(self) -> str:
        """Where the run is, for a message saying its driver is gone."""
        return f"during step {self.running.step.name!r}" if self.running is not None else "between steps"


def followed_logs(session: Session, executor: Executor, run: RemoteRun) -> Iterator[str]:
    """RUN's logs as its event stream brings them, until a step fails or the run ends; DriverGone
    when the driver is (the stream's heartbeat says so, or the executor, asked every
    LIVENESS_EVERY seconds where the stream cannot tell). No SFTP: the stream is a command's
    channel, resumed from its position after the session reconnects."""
    stream = EventStream(session, executor, run)
    liveness = Liveness(executor, run, lambda: session.call(lambda connection: executor.state(run)))
    said = EventsText(run)
    try:
        while not said.is_done:
            for event in stream.next(0.5):
                liveness.heard(event, said.when())
                text = said.text_of(event)
                if text:
                    yield text
                if said.is_done:
                    return
            liveness.check(said.when())
    finally:
        stream.close()
