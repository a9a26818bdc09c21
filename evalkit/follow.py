"""Following a run's steps on the server: the files its driver writes (step-N.started, .out,
.err, .exit and status.json), pushed as events by remote/job.py as it reads them there
(Follower, event_stream.py), or read over SFTP from the offsets already reached (`logs`).

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
from .events import Beat, Event, Output, RunEnded, StepEnded, StepStarted
from .executors.base import Executor, JobState, RemoteRun
from .outcome import Reporter, RunOutcome, StepResult
from .plan import Step
from .progress import Event as ProgressEvent, LogLine, ProgressUpdate, ProtocolFilter, StreamSplitter
from .session import Session
from .ssh import PendingCommand
from .ssh.server_disk import FULL_DISK_TEXTS, filled_up

READ_CHUNK = 1 << 20
TAIL_LINES = 30
SLOWEST_POLL = 0.25  # `logs --follow`: between looks at the run's files over SFTP
LIVENESS_EVERY = 10.0     # seconds between asking whether the driver still lives (a death is seen in ~10 s)
STREAMS = {"stdout": "out", "stderr": "err"}


def step_base(run: RemoteRun, step: Step) -> str:
    """The name its files share in the run directory: step-N (.started, .out, .err, .exit)."""
    return f"step-{run.plan.steps.index(step)}"


class StepFiles:
    """One step's files in the run directory, and how far each output file has been read."""

    def __init__(self, session: Session, run: RemoteRun, step: Step) -> None:
        self.session = session
        self.base = run.path(step_base(run, step))
        self.offsets = {stream: 0 for stream in STREAMS}

    def has_started(self) -> bool:
        return self.session.size_of(f"{self.base}.started") is not None

    def outcome(self) -> tuple[int, float | None] | None:
        """(exit code, seconds the step ran on the server), or None while it runs."""
        path = f"{self.base}.exit"
        if self.session.size_of(path) is None:
            return None
        fields = self.session.read_bytes(path).decode().split()
        return int(fields[0]), float(fields[1]) if len(fields) > 1 else None

    def read_new(self, stream: str) -> bytes:
        """What STREAM's file gained since the last read (at most READ_CHUNK bytes)."""
        path, offset = f"{self.base}.{STREAMS[stream]}", self.offsets[stream]
        size = self.session.size_of(path)
        if size is None or size <= offset:
            return b""
        chunk = self.session.read_range(path, offset, min(READ_CHUNK, size - offset))
        self.offsets[stream] += len(chunk)
        return chunk


class Follower:
    """Follows a run's steps in order through its event stream (event_stream.py), showing their
    output as it comes; keeps each step's stdout for what is read from it (output_of)."""

    def __init__(self, session: Session, executor: Executor, run: RemoteRun, reporter: Reporter, log: BinaryIO,
                 step_timeout: float, events: PendingCommand | None = None) -> None:
        self.session, self.executor, self.run = session, executor, run
        self.reporter, self.log, self.step_timeout = reporter, log, step_timeout
        self.stream = EventStream(session, executor, run, events)  # EVENTS: the launch's channel, if any
        self.detail: str | None = None  # the scheduler's last word on the run (JobState.detail)
        self.liveness = _Liveness(run, self._state)
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
            if isinstance(event, Beat) and not event.alive and self.executor.liveness_on_stream:
                check_alive(JobState(None, False), self.run, when)
            yield event
        if not self.executor.liveness_on_stream:
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


def read_logs(session: Session, run: RemoteRun, follow: bool,
              state: Callable[[], JobState] | None = None) -> Iterator[str]:
    """Each step's stdout then stderr as text; with FOLLOW, waits for steps still to come,
    asking STATE every LIVENESS_EVERY seconds whether the run's driver still lives."""
    alive = _Liveness(run, state)
    for step in run.plan.steps:
        files = StepFiles(session, run, step)
        while not files.has_started():
            if not follow or session.size_of(run.path("status.json")) is not None:
                return
            alive.check(f"before step {step.name!r}")
            time.sleep(SLOWEST_POLL)
        yield f"### step {step.name}: {step.title}\n"
        # evalkit's marked lines are for the laptop: a person (or a file) gets upstream's output
        filters = {stream: ProtocolFilter() for stream in STREAMS}
        while True:
            finished = files.outcome()  # before reading: then nothing is missed
            for stream in STREAMS:
                while chunk := files.read_new(stream):
                    yield filters[stream].feed(chunk.decode("utf-8", "replace"))
            if finished is not None:
                yield "".join(f.close() for f in filters.values())
                yield f"### step {step.name} exited {finished[0]}\n"
                break
            if not follow:
                return
            alive.check(f"during step {step.name!r}")
            time.sleep(SLOWEST_POLL)
        if finished[0] != 0:
            return


class _Liveness:
    """Asks whether the driver lives at most every LIVENESS_EVERY seconds of waiting."""

    def __init__(self, run: RemoteRun, state: Callable[[], JobState] | None) -> None:
        self.run, self.state, self.last = run, state, time.monotonic()

    def check(self, when: str) -> None:
        if self.state is not None and time.monotonic() - self.last > LIVENESS_EVERY:
            check_alive(self.state(), self.run, when)
            self.last = time.monotonic()
