"""The executor seam: how a run's driver is launched on the server, asked about and stopped.

Everything else (the follower, the view, the plan, the pipeline) sees only this interface. The
run's own files on the server are the truth for every executor: each step's output, exit
status and the run's status.json are written by the same driver (remote/job.py drive), and
followed through the events remote/job.py pushes as it reads them on the server (follow.py,
run_logs.py).
"""
from __future__ import annotations

import posixpath
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..config import Settings
from ..plan import Plan
from ..server import ServerCall

if TYPE_CHECKING:  # the view reads JobState: the SSH side stays out of `--help`'s start-up
    from ..ssh import Connection, PendingCommand

CallResult = tuple[int, bytes, bytes]  # exit status, stdout, stderr


@dataclass(frozen=True)
class RemoteRun:
    """A run on the server: its id, its directory there, and its plan's steps."""

    run_id: str
    directory: str
    plan: Plan

    def path(self, name: str) -> str:
        return posixpath.join(self.directory, name)


@dataclass(frozen=True)
class JobState:
    """What the server says about a run: its final state (None while it runs) and whether its
    driver still lives."""

    state: str | None
    driver_alive: bool
    failed_step: str | None = None
    error: str | None = None    # why the driver failed (state "crashed")
    unknown: str | None = None  # why the server could not be asked
    detail: str | None = None   # a scheduler's word on a live run, e.g. "Slurm job 7: PENDING (Resources)"

    @classmethod
    def from_answer(cls, answer: dict) -> "JobState":
        status = answer.get("status") or {}
        return cls(status.get("state"), bool(answer.get("driver_alive")), status.get("failed_step"),
                   status.get("error"))


@dataclass(frozen=True)
class CancelResult:
    signalled: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    remaining: list[int] = field(default_factory=list)   # survived SIGKILL
    gpu_processes: list[int] = field(default_factory=list)
    ended: str | None = None  # the state the run had ended in before the cancel (its status.json kept)

    @classmethod
    def from_answer(cls, answer: dict) -> "CancelResult":
        return cls(*(list(answer.get(key) or []) for key in ("signalled", "killed", "remaining", "gpu_processes")),
                   ended=answer.get("ended"))

    def describe(self, run_id: str) -> str:
        if self.remaining:
            return (f"run {run_id}: processes {self.remaining} survived SIGKILL on the server "
                    f"(GPU: {self.gpu_processes or 'none'})")
        if self.ended:
            return f"run {run_id} had already ended ({self.ended}) before the cancel: no process of it remains"
        gpu = "; no GPU process of it either" if not self.gpu_processes else ""
        return f"cancelled run {run_id}: no process of it remains on the server{gpu}"


@dataclass(frozen=True)
class Launched:
    took_over_stale_lock: bool = False
    # the run's events from its first step on, on the channel that launched it (the starter's);
    # None: the follower opens them (Executor.open_events)
    events: "PendingCommand | None" = None


class RunGroup:
    """The runs one command launches, over its threads and their connections, kept from before
    their launch until evalkit lets go of each (followed to its end, detached, or cancelled): Ctrl-C
    cancels those still held, all at once (gpu_queue), launches in flight included. Whoever takes
    a run out (take, close) says what became of it. Thread-safe. An executor may share more among
    the runs of one command in a subclass (its `group_class`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RemoteRun] = {}
        self.is_closed = False

    def add(self, run: RemoteRun) -> bool:
        """Keep RUN; False once the command is being stopped (close): then its caller stops RUN."""
        with self._lock:
            if self.is_closed:
                return False
            self._runs[run.run_id] = run
            return True

    def discard(self, run_id: str) -> None:
        """RUN_ID ended: nothing left to stop."""
        self.take(run_id)

    def take(self, run_id: str) -> bool:
        """RUN_ID out of the group: True when it was there (its taker says what became of it),
        False when another took it first (close: Ctrl-C in another thread cancels it)."""
        with self._lock:
            return self._runs.pop(run_id, None) is not None

    def close(self) -> list[RemoteRun]:
        """No run may join any more; those still held, to cancel (the caller's now)."""
        with self._lock:
            self.is_closed = True
            runs, self._runs = list(self._runs.values()), {}
            return runs


class Executor(ABC):
    """One connection's worth of runs. Before `launch`, `prepare` makes evalkit's server scripts
    current and `run_scripts` runs evalkit's checks in the server's env. GROUP: what the
    executors of one command share (a RunGroup of this executor's `group_class`)."""

    group_class: type[RunGroup] = RunGroup
    # whether the event stream's heartbeat says if the run's driver lives (it runs where the
    # stream's job.py runs); else the follower asks `state` every few seconds
    liveness_on_stream = True
    # whether following a run reads its files over SFTP (else the event stream and job.py say all)
    follows_over_sftp = False

    def __init__(self, connection: "Connection", settings: Settings, group: RunGroup | None = None) -> None:
        self.connection, self.settings = connection, settings
        self.group = group if group is not None else self.group_class()

    @abstractmethod
    def prepare(self, scripts: list[str]) -> None: ...

    @abstractmethod
    def run_scripts(self, calls: dict[str, ServerCall], timeout: float) -> dict[str, CallResult]: ...

    @abstractmethod
    def launch(self, run: RemoteRun, files: dict[str, str] | None = None) -> Launched:
        """Write FILES ({name: text}) in RUN's folder, then start RUN's driver; return once it holds
        the checkpoint directory's lock. Raises RunLocked when another run holds it,
        ServerFileError when a file could not be written (nothing started), RemoteStepFailed
        when the driver could not start."""

    @abstractmethod
    def open_events(self, run: RemoteRun, position: str) -> "PendingCommand":
        """RUN's events (remote/job.py events) from POSITION (events.Position.as_argument) on,
        on a channel of their own: to attach, and after a reconnect."""

    @abstractmethod
    def state(self, run: RemoteRun) -> JobState:
        """Asked again and again while a run is followed: may raise how the run ended."""

    def look(self, run: RemoteRun) -> JobState:
        """One look, for `status` in a process of its own: what the run's files and the server
        say now, without waiting for anything to settle."""
        return self.state(run)

    def look_all(self, runs: list[RemoteRun]) -> dict[str, JobState]:
        """look() for each of RUNS (all of one host's, for `status`), by run id; an executor answers
        them in one ask to the server where it can. An EvalkitError: none could be asked."""
        return {run.run_id: self.look(run) for run in runs}

    @abstractmethod
    def step_logs(self, run: RemoteRun) -> list[dict]:
        """Each started step's files ({"out", "err", "exit"}: text, or None), in one ask (`logs`)."""

    @abstractmethod
    def cancel(self, run: RemoteRun, grace: float) -> CancelResult:
        """Stop every process of RUN: SIGTERM, GRACE seconds, SIGKILL; say what remained."""

    def cancel_all(self, runs: list[RemoteRun], grace: float) -> dict[str, CancelResult]:
        """Every run of RUNS stopped as cancel() does; by run id."""
        return {run.run_id: self.cancel(run, grace) for run in runs}

    def close(self) -> None:
        """Release what prepare() began; a launched run goes on."""
