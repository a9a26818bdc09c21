"""Following a run's steps on the server: the files its driver writes (step-N.started, .out,
.err, .exit and status.json), pushed as events by remote/job.py (run_events.py) as it reads them there
(event_stream.py). The Follower shows them as a run's progress; `logs --follow` as text
(run_logs.py); both know whether the driver lives the same way (Liveness).

Nothing here re-runs a step: the server runs each step once, and the client only reads, so
after a reconnect (session.py) no output line is lost or shown twice.
"""
from __future__ import annotations

import collections
import time
from typing import BinaryIO, Callable, Iterator

from . import clock
from .errors import ConnectionLost, DriverGone, RemoteStepFailed
from .event_stream import EventStream
from .events import STREAMS, Beat, Event, Output, RunEnded, StepEnded, StepStarted
from .executors.base import Executor, JobState, RemoteRun
from .outcome import Reporter, RunOutcome, StepResult
from .plan import Step
from .progress import Event as ProgressEvent, LogLine, ProgressUpdate, StreamSplitter
from .session import Session
from .ssh import PendingCommand
from .ssh.server_disk import FULL_DISK_TEXTS, filled_up

TAIL_LINES = 30
LIVENESS_EVERY = 10.0     # seconds between asking whether the driver still lives (a death is seen in ~10 s)


class Follower:
    """Follows a run's steps in order through its event stream (event_stream.py), showing their
    output as it comes; keeps each step's stdout for what is read from it (output_of)."""

    def __init__(self, session: Session, executor: Executor, run: RemoteRun, reporter: Reporter, log: BinaryIO,
                 step_timeout: float, events: PendingCommand | None = None) -> None:
        self.session, self.executor, self.run = session, executor, run
        self.reporter, self.log, self.step_timeout = reporter, log, step_timeout
        self.stream = EventStream(session, executor, run, events)  # EVENTS: the launch's channel, if any
        self.detail: str | None = None  # the scheduler's last word on the run (JobState.detail)
        self.liveness = Liveness(executor, run, self._state)
        self.printed: dict[str, bytes] = {}  # the last ended step's stdout, by its name
        self.status: dict | None = None      # status.json, once the run's end came
        self.pending: collections.deque[Event] = collections.deque()  # received, not yet taken

    def follow(self, outcome: RunOutcome, on_step_done: Callable[[Step], None]) -> None:
        """Each step to its end (RemoteStepFailed at the first that failed), then the run's."""
        for step in self.run.plan.steps:
            outcome.steps.append(self._follow_step(step))
            on_step_done(step)
        while self.status is None:
            for event in self._events(None):
                if isinstance(event, RunEnded):
                    self.status = event.status

    def output_of(self, step: Step) -> bytes:
        """What STEP, ended, printed on stdout."""
        return self.printed[step.name]

    def write(self, path: str, data: bytes) -> None:
        """DATA to PATH on the server, beside the run (the manifest): no round trip waited for."""
        self.stream.write(path, data)

    def collect(self, paths: list[str]) -> dict[str, tuple[int, bytes] | None]:
        """PATHS' (mtime, content) on the server, in one ask; the stream ends after it."""
        try:
            return self.stream.collect(paths, timeout=self.session.connection.connect_timeout * 4 + 60)
        finally:
            self.stream.close()

    def _follow_step(self, step: Step) -> StepResult:
        index, steps = self.run.plan.steps.index(step), self.run.plan.steps
        splitters = {stream: StreamSplitter(stream) for stream in STREAMS}
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        printed, started_at, started = bytearray(), clock.timestamp(), None
        while True:
            for event in self._events(step, started):
                if isinstance(event, StepStarted):
                    self.reporter.step_started(step, index, len(steps))
                    self.log.write(f"\n### step {step.name}: {step.command}\n".encode())
                    started_at, started = clock.timestamp(), time.monotonic()
                elif isinstance(event, Output):
                    printed += event.data if event.stream == "stdout" else b""
                    self._show(step, splitters[event.stream].feed(event.data), event.data, tail)
                elif isinstance(event, StepEnded):
                    for splitter in splitters.values():
                        self._show(step, splitter.close(), b"", tail)
                    self.printed = {step.name: bytes(printed)}
                    seconds = event.seconds if event.seconds is not None else time.monotonic() - (started or 0)
                    return self._ended(step, StepResult(step.name, step.title, step.command, event.code, seconds,
                                                        started_at, clock.timestamp()), tail)
                elif isinstance(event, RunEnded):
                    self.status = event.status
                    self._ended_before(step)

    def _ended(self, step: Step, result: StepResult, tail: collections.deque) -> StepResult:
        self.log.write(f"### step {step.name} exited {result.exit_code} after {result.seconds:.1f} s\n".encode())
        self.reporter.step_finished(step, result)
        full_disk = next((line for line in tail if any(text in line for text in FULL_DISK_TEXTS)), None)
        if result.exit_code != 0 and full_disk is not None:
            raise filled_up(self.session.capture, f"{step.name!r} ({step.title})", self.run.plan.output_dir,
                            full_disk, timeout=60)
        if result.exit_code != 0:
            raise RemoteStepFailed(
                f"step {step.name!r} ({step.title}) exited with status {result.exit_code}\n"
                f"command: {step.command}\nlast {len(tail)} lines of its output:\n"
                + "\n".join(f"  {line}" for line in tail),
                "read the output above; the full log is kept locally (see below)")
        return result

    def _ended_before(self, step: Step) -> None:
        """The run ended before STEP did: say how (the executor knows a scheduler's refusal)."""
        when = f"before step {step.name!r} ended"
        check_alive(self._state(), self.run, when)
        raise RemoteStepFailed(f"run {self.run.run_id} ended ({(self.status or {}).get('state')}) {when}",
                               f"see {self.run.path('driver.log')} on the server; start the evaluation again")

    def _events(self, step: Step | None, started: float | None = None) -> Iterator[Event]:
        """The events that come within a moment; raises when the driver is gone (the heartbeat
        says so, or the executor where the stream cannot tell) or STEP, STARTED then, ran too long."""
        when = f"during step {step.name!r}" if step is not None else "after the last step"
        if not self.pending:
            self.pending.extend(self.stream.next(0.5))
        while self.pending:  # what a step's end leaves here is the next step's
            event = self.pending.popleft()
            self.liveness.heard(event, when)
            yield event
        self.liveness.check(when)
        if step is not None and started is not None and time.monotonic() - started > self.step_timeout:
            raise ConnectionLost(f"step {step.name!r} ran longer than step_timeout ({self.step_timeout:.0f} s)",
                                 f"raise step_timeout in the config file; cancel the run with "
                                 f"python -m evalkit cancel {self.run.run_id}")

    def _show(self, step: Step, events: Iterator[ProgressEvent], chunk: bytes, tail: collections.deque) -> None:
        if chunk:
            self.log.write(chunk)
            self.log.flush()
        for event in events:
            remember(tail, event)
            self.reporter.step_event(step, event)

    def _state(self) -> JobState:
        state = self.session.call(lambda connection: self.executor.state(self.run))
        if state.detail and state.detail != self.detail:  # a job waiting in a scheduler's queue, and why
            self.reporter.note(state.detail)
        self.detail = state.detail
        return state


def check_alive(state: JobState, run: RemoteRun, when: str) -> None:
    """Raise unless the run's driver lives or the run ended on its own (its files say how)."""
    if state.state == "cancelled":
        raise RemoteStepFailed(f"run {run.run_id} was cancelled on the server", "start the evaluation again")
    if state.state == "crashed":
        raise DriverGone(f"the run's driver crashed on the server {when}: {state.error}",
                         f"see {run.path('driver.log')} on the server; start the evaluation again")
    if state.state or state.driver_alive:
        return
    raise DriverGone(f"the run's driver on the server is gone {when} (killed, out of memory, or the server "
                     "rebooted)", "start the evaluation again")


def remember(tail: collections.deque, event: ProgressEvent) -> None:
    if isinstance(event, LogLine):
        tail.append(event.text)
    elif isinstance(event, ProgressUpdate):
        total = f"/{event.total:g}" if event.total is not None else ""
        tail.append(f"{event.description + ': ' if event.description else ''}{event.n:g}{total}")




class Liveness:
    """Whether the run's driver lives, as the executor can tell: the event stream's heartbeat
    says so where job.py runs beside the driver (liveness_on_stream); elsewhere (a Slurm job on
    a compute node) STATE is asked at most every LIVENESS_EVERY seconds of following."""

    def __init__(self, executor: Executor, run: RemoteRun, state: Callable[[], JobState]) -> None:
        self.is_on_stream, self.run, self.state = executor.liveness_on_stream, run, state
        self.last = time.monotonic()

    def heard(self, event: Event, when: str) -> None:
        """DriverGone when EVENT is a heartbeat saying the driver is gone (the run not ended)."""
        if isinstance(event, Beat) and not event.alive and self.is_on_stream:
            check_alive(JobState(None, False), self.run, when)

    def check(self, when: str) -> None:
        if not self.is_on_stream and time.monotonic() - self.last > LIVENESS_EVERY:
            check_alive(self.state(), self.run, when)
            self.last = time.monotonic()
