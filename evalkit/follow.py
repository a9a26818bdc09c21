"""Following a run's steps on the server by reading the files its driver writes (step-N.started,
.out, .err, .exit and status.json) from the offsets already reached.

Nothing here re-runs a step: the server runs each step once, and the client only reads, so
after a reconnect (session.py) no output line is lost or shown twice.
"""
from __future__ import annotations

import collections
import time
from typing import BinaryIO, Callable, Iterator

from . import clock
from .errors import ConnectionLost, DriverGone, RemoteStepFailed
from .executors.base import Executor, JobState, RemoteRun
from .outcome import Reporter, RunOutcome, StepResult
from .plan import Step
from .progress import Event, LogLine, ProgressUpdate, ProtocolFilter, StreamSplitter
from .session import Session
from .ssh.server_disk import FULL_DISK_TEXTS, filled_up

READ_CHUNK = 1 << 20
TAIL_LINES = 30
# Polling is cheap (three SFTP stats) but not free: while output flows (tqdm redraws many times a
# second) every FLOWING_POLL is enough, and the server's CPU stays with the step.
FASTEST_POLL, FLOWING_POLL, SLOWEST_POLL = 0.05, 0.15, 0.25
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
    """Follows a run's steps in order, showing their output as it comes."""

    def __init__(self, session: Session, executor: Executor, run: RemoteRun, reporter: Reporter, log: BinaryIO,
                 step_timeout: float, doorbell: Callable[[float], bool] | None = None) -> None:
        self.session, self.executor, self.run = session, executor, run
        self.reporter, self.log, self.step_timeout = reporter, log, step_timeout
        self.doorbell = doorbell  # rings when the run moves on (executors.base.Launched)
        self.detail: str | None = None  # the scheduler's last word on the run (JobState.detail)
        self.liveness = _Liveness(run, self._state)

    def follow(self, outcome: RunOutcome, on_step_done: Callable[[Step], None]) -> None:
        for step in self.run.plan.steps:
            outcome.steps.append(self._follow_step(step))
            on_step_done(step)

    def output_path(self, step: Step) -> str:
        """The server file holding STEP's stdout."""
        return self.run.path(f"{step_base(self.run, step)}.out")

    def _follow_step(self, step: Step) -> StepResult:
        files, steps = StepFiles(self.session, self.run, step), self.run.plan.steps
        self._wait_for(lambda: True if files.has_started() else None, step)
        self.reporter.step_started(step, steps.index(step), len(steps))
        self.log.write(f"\n### step {step.name}: {step.command}\n".encode())
        started_at, started = clock.timestamp(), time.monotonic()
        splitters = {stream: StreamSplitter(stream) for stream in STREAMS}
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

        def drain() -> bool:
            moved = False
            for stream in STREAMS:
                chunk = files.read_new(stream)
                if chunk:
                    self._show(step, splitters[stream].feed(chunk), chunk, tail)
                    moved = True
            return moved

        exit_code, server_seconds = self._wait_for(files.outcome, step, while_waiting=drain, started=started)
        while drain():
            pass
        for splitter in splitters.values():
            self._show(step, splitter.close(), b"", tail)
        seconds = server_seconds if server_seconds is not None else time.monotonic() - started
        result = StepResult(step.name, step.title, step.command, exit_code, seconds, started_at, clock.timestamp())
        self.log.write(f"### step {step.name} exited {exit_code} after {result.seconds:.1f} s\n".encode())
        self.reporter.step_finished(step, result)
        full_disk = next((line for line in tail if any(text in line for text in FULL_DISK_TEXTS)), None)
        if exit_code != 0 and full_disk is not None:
            raise filled_up(self.session.capture, f"{step.name!r} ({step.title})", self.run.plan.output_dir,
                            full_disk, timeout=60)
        if exit_code != 0:
            raise RemoteStepFailed(
                f"step {step.name!r} ({step.title}) exited with status {exit_code}\n"
                f"command: {step.command}\nlast {len(tail)} lines of its output:\n"
                + "\n".join(f"  {line}" for line in tail),
                "read the output above; the full log is kept locally (see below)")
        return result

    def _show(self, step: Step, events: Iterator[Event], chunk: bytes, tail: collections.deque) -> None:
        if chunk:
            self.log.write(chunk)
            self.log.flush()
        for event in events:
            remember(tail, event)
            self.reporter.step_event(step, event)

    def _wait_for(self, found: Callable[[], object], step: Step, while_waiting: Callable[[], bool] = lambda: False,
                  started: float | None = None):
        """Poll FOUND until it returns something; fast while output flows, slower when idle."""
        pause = FASTEST_POLL
        while True:
            if while_waiting():
                pause = FLOWING_POLL
            value = found()
            if value is not None:
                return value
            # also while output flows: a killed driver's steps may go on printing, orphaned
            self.liveness.check(f"during step {step.name!r}")
            if started is not None and time.monotonic() - started > self.step_timeout:
                raise ConnectionLost(f"step {step.name!r} ran longer than step_timeout ({self.step_timeout:.0f} s)",
                                     f"raise step_timeout in the config file; cancel the run with "
                                     f"python -m evalkit cancel {self.run.run_id}")
            self._pause(pause)
            pause = min(pause * 1.5, SLOWEST_POLL)

    def _pause(self, seconds: float) -> None:
        """SECONDS, or less when the doorbell rings; without one (attached later, after a
        reconnect, or once the run has ended) the polls alone find each step's end."""
        if self.doorbell is None or not self.doorbell(seconds):
            time.sleep(seconds)

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


def remember(tail: collections.deque, event: Event) -> None:
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
