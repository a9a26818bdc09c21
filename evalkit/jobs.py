"""The client side of remote/job.py: start a run's steps detached on the server, follow their
output by byte offset (surviving dropped connections), cancel them cleanly.

Nothing here re-runs a step: the server runs each step once, and the client only reads files
(step-N.out / .err / .exit, status.json) from the offsets it has reached, so after a reconnect
no output line is lost or shown twice.
"""
from __future__ import annotations

import collections
import hashlib
import json
import posixpath
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from .config import Settings
from .errors import ConnectError, ConnectionLost, RemoteStepFailed, RunLocked
from .pipeline import (TAIL_LINES, Reporter, RunOutcome, StepResult, helper_names, helper_source, helper_sources,
                       now_iso, remember)
from .plan import BOOTSTRAP_NAME, LOCK_NAME, HelperCall, Plan, Step, job_command, start_run_command
from .progress import StreamSplitter, last_marked_json
from .ssh import Connection, PendingCommand

READ_CHUNK = 1 << 20
JOB_MARKER = b"EVALKIT-JOB "
# Polling is cheap (three SFTP stats) but not free: while output flows (tqdm redraws many times a
# second) every FLOWING_POLL is enough, and the server's CPU stays with the step.
FASTEST_POLL, FLOWING_POLL, SLOWEST_POLL = 0.05, 0.15, 0.25
LIVENESS_EVERY = 10.0     # seconds without news before asking whether the driver still lives
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class RemoteRun:
    run_id: str
    directory: str
    steps: tuple[Step, ...]

    def path(self, name: str) -> str:
        return posixpath.join(self.directory, name)


def prepare_start(connection: Connection, settings: Settings, helpers: dict[str, bytes]) -> PendingCommand:
    """job.py start, begun before the run is known: its login shell and the env's activation
    serve the checks and the run. Returns once HELPERS (name -> source; job.py among them) are
    current on the server: its bootstrap asks only for those that differ, so an unchanged
    evalkit costs no upload at all, and a failing `activate` is reported here."""
    starter = connection.start_command(start_run_command(settings, START_TIMEOUT, helper_source(BOOTSTRAP_NAME)
                                                         .decode("utf-8")))
    digests = {name: hashlib.sha256(source).hexdigest() for name, source in helpers.items()}
    answered = starter.ask(_line({"files": digests}), JOB_MARKER, START_TIMEOUT)
    if answered is not None and answered.get("missing"):
        sent = {name: helpers[name].decode("utf-8") for name in answered["missing"]}
        answered = starter.ask(_line({"files": sent}), JOB_MARKER, START_TIMEOUT)
    if answered is None:
        exit_code, stdout, stderr = starter.finish(b"", START_TIMEOUT)
        tail = (stderr or stdout).decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
        raise RemoteStepFailed(
            f"starting evalkit on the server failed with status {exit_code}\nits output:\n"
            + "\n".join(f"  {line}" for line in tail),
            f"check the `activate` ({settings.activate}) and `python` ({settings.python}) settings: "
            "the env must start in a login shell (python -m evalkit doctor)")
    return starter


def _line(message: dict) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"


def run_helpers(starter: PendingCommand, calls: dict[str, HelperCall],
                timeout: float) -> dict[str, tuple[int, bytes, bytes]]:
    """CALLS, all at once, by the starter in its activated env: (exit status, stdout, stderr) of
    each. When the starter ended instead of answering, each gets its status and output, so the
    caller reports that failure as its own."""
    answered = starter.ask(_line({"helpers": {name: call.as_dict() for name, call in calls.items()}}), JOB_MARKER,
                           timeout)
    if answered is None:
        exit_code, stdout, stderr = starter.finish(b"", timeout)
        return {name: (exit_code or 1, stdout, stderr) for name in calls}
    return {name: (result["exit_code"], result["stdout"].encode("utf-8", "surrogateescape"),
                   result["stderr"].encode("utf-8", "surrogateescape"))
            for name, result in answered["helpers"].items()}


def start(connection: Connection, settings: Settings, plan: Plan, run: RemoteRun,
          starter: PendingCommand | None = None) -> dict:
    """Write run.json, start the driver in the background; return once it holds the lock.

    The starter then stays, a line on its stdout each time the run moves on: a Follower given
    it as its doorbell sees a step's end at once (closing it changes nothing on the server)."""
    spec = {"run_id": run.run_id, "lock": posixpath.join(plan.output_dir, LOCK_NAME),
            "steps": [{"name": s.name, "title": s.title, "command": s.command} for s in run.steps]}
    starter = starter or prepare_start(connection, settings, helper_sources(helper_names(settings)))
    timeout = START_TIMEOUT + settings.connect_timeout * 4
    started = starter.ask(_line({"run_dir": run.directory, "run": spec}), JOB_MARKER, timeout)
    if started is None:
        exit_code, _, _ = starter.finish(b"", timeout)
        raise RemoteStepFailed(f"could not start the run on the server (status {exit_code})",
                               "check the `activate` and `python` settings (python -m evalkit doctor)")
    status = started.get("status") or {}
    if status.get("state") == "crashed":
        raise RemoteStepFailed(f"the run's driver failed on the server: {status.get('error')}",
                               f"see {run.path('driver.log')} on the server, and report it")
    if status.get("state") == "refused":
        holder = status.get("holder") or {}
        raise RunLocked(f"run {holder.get('run_id')} is already evaluating this checkpoint "
                        f"({plan.output_dir}, since {holder.get('taken_at')})",
                        f"wait for it (python -m evalkit attach {holder.get('run_id')}) or cancel it "
                        f"(python -m evalkit cancel {holder.get('run_id')})")
    if not started.get("driver"):
        raise RemoteStepFailed(f"the run's driver did not start within {START_TIMEOUT:.0f} s "
                               f"(see {run.path('driver.log')} on the server)",
                               "check the `python` setting (python -m evalkit doctor)")
    return started["driver"]


class Follower:
    """Follows a run's steps in order, reconnecting when the link drops."""

    def __init__(self, connection: Connection, settings: Settings, run: RemoteRun, reporter: Reporter,
                 log: BinaryIO, reconnect_for: float = 600.0, doorbell: PendingCommand | None = None) -> None:
        self.connection, self.settings, self.run = connection, settings, run
        self.reporter, self.log, self.reconnect_for = reporter, log, reconnect_for
        self.doorbell = doorbell  # the run's starter (see start): it rings when a step ends

    def follow(self, outcome: RunOutcome, steps: list[Step], on_step_done: Callable[[Step], None]) -> None:
        for step in steps:
            outcome.steps.append(self._follow_step(step, outcome.plan))
            on_step_done(step)

    def output_path(self, step: Step) -> str:
        """The server file holding STEP's stdout."""
        return self.run.path(f"step-{self.run.steps.index(step)}.out")

    def _follow_step(self, step: Step, plan: Plan) -> StepResult:
        index = self.run.steps.index(step)
        base = self.run.path(f"step-{index}")
        self._wait_for(lambda: self._exists(f"{base}.started"), step)
        self.reporter.step_started(step, plan.steps.index(step), len(plan.steps))
        self.log.write(f"\n### step {step.name}: {step.command}\n".encode())
        started_at, started = now_iso(), time.monotonic()
        splitters = {name: StreamSplitter(name) for name in ("stdout", "stderr")}
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        offsets = {"stdout": 0, "stderr": 0}

        def drain() -> bool:
            moved = False
            for stream, suffix in (("stdout", "out"), ("stderr", "err")):
                chunk = self.safely(lambda: read_new(self.connection, f"{base}.{suffix}", offsets[stream]))
                if chunk:
                    offsets[stream] += len(chunk)
                    self._show(step, splitters[stream].feed(chunk), chunk, tail)
                    moved = True
            return moved

        exit_code, server_seconds = self._wait_for(lambda: step_outcome(self.connection, f"{base}.exit"), step,
                                                   while_waiting=drain, started=started)
        while drain():
            pass
        for splitter in splitters.values():
            self._show(step, splitter.close(), b"", tail)
        seconds = server_seconds if server_seconds is not None else time.monotonic() - started
        result = StepResult(step.name, step.title, step.command, exit_code, seconds, started_at, now_iso())
        self.log.write(f"### step {step.name} exited {exit_code} after {result.seconds:.1f} s\n".encode())
        self.reporter.step_finished(step, result)
        if exit_code != 0:
            raise RemoteStepFailed(
                f"step {step.name!r} ({step.title}) exited with status {exit_code}\n"
                f"command: {step.command}\nlast {len(tail)} lines of its output:\n"
                + "\n".join(f"  {line}" for line in tail),
                "read the output above; the full log is kept locally (see below)")
        return result

    def _show(self, step: Step, events, chunk: bytes, tail) -> None:
        if chunk:
            self.log.write(chunk)
            self.log.flush()
        for event in events:
            remember(tail, event)
            self.reporter.step_event(step, event)

    def _wait_for(self, found: Callable[[], object], step: Step, while_waiting: Callable[[], bool] = lambda: False,
                  started: float | None = None):
        """Poll FOUND until it returns something; fast while output flows, slower when idle."""
        pause, last_news = FASTEST_POLL, time.monotonic()
        while True:
            if while_waiting():
                pause, last_news = FLOWING_POLL, time.monotonic()
            value = self.safely(found)
            if value is not None:
                return value
            if time.monotonic() - last_news > LIVENESS_EVERY:
                self._check_alive(step)
                last_news = time.monotonic()
            if started is not None and time.monotonic() - started > self.settings.step_timeout:
                raise ConnectionLost(f"step {step.name!r} ran longer than step_timeout "
                                     f"({self.settings.step_timeout:.0f} s)",
                                     f"raise step_timeout in the config file; cancel the run with "
                                     f"python -m evalkit cancel {self.run.run_id}")
            self._pause(pause)
            pause = min(pause * 1.5, SLOWEST_POLL)

    def _pause(self, seconds: float) -> None:
        """SECONDS, or less when the doorbell rings; without one (attached later, after a
        reconnect, or once the run has ended) the polls alone find each step's end."""
        if self.doorbell is None or not self.doorbell.wait_for_output(seconds):
            time.sleep(seconds)

    def _check_alive(self, step: Step) -> None:
        state = self.safely(lambda: job_state(self.connection, self.settings, self.run))
        if state.get("driver_alive") or state.get("status"):
            status = state.get("status") or {}
            if status.get("state") == "cancelled":
                raise RemoteStepFailed(f"run {self.run.run_id} was cancelled on the server",
                                       "start the evaluation again")
            return
        raise RemoteStepFailed(f"the run's driver on the server is gone, during step {step.name!r} "
                               "(killed, or the server rebooted)", "start the evaluation again")

    def safely(self, operation: Callable[[], object]):
        """OPERATION, reconnecting with bounded backoff while the link is down."""
        deadline, pause = None, 1.0
        while True:
            try:
                return operation()
            except ConnectionLost as lost:
                if deadline is None:
                    deadline = time.monotonic() + self.reconnect_for
                    self.reporter.note(f"connection lost ({lost.message}); reconnecting, the run goes on "
                                       "on the server")
                if time.monotonic() > deadline:
                    raise ConnectionLost(f"could not reconnect for {self.reconnect_for:.0f} s; the run "
                                         f"goes on on the server",
                                         f"re-attach later: python -m evalkit attach {self.run.run_id}") from lost
                time.sleep(pause)
                pause = min(pause * 2, 30.0)
                try:
                    self.connection.reconnect()
                    self.reporter.note("reconnected; resuming where the output left off")
                except ConnectionLost:
                    continue
                except ConnectError:
                    continue  # refused or unreachable while the server or its sshd restarts

    def _exists(self, path: str) -> bool | None:
        return True if self.connection.size_of(path) is not None else None


def exit_code_of(connection: Connection, path: str) -> int | None:
    finished = step_outcome(connection, path)
    return finished[0] if finished else None


def step_outcome(connection: Connection, path: str) -> tuple[int, float | None] | None:
    """(exit code, seconds the step ran on the server) from step-N.exit, or None while it runs."""
    if connection.size_of(path) is None:
        return None
    lines = connection.read_bytes(path).decode().split()
    return int(lines[0]), float(lines[1]) if len(lines) > 1 else None


def read_new(connection: Connection, path: str, offset: int) -> bytes:
    """What PATH gained past OFFSET (at most READ_CHUNK bytes)."""
    size = connection.size_of(path)
    if size is None or size <= offset:
        return b""
    return connection.read_range(path, offset, min(READ_CHUNK, size - offset))


def read_logs(connection: Connection, settings: Settings, run: RemoteRun, follow: bool) -> Iterator[str]:
    """Each step's stdout then stderr as text; with FOLLOW, waits for steps still to come."""
    for index, step in enumerate(run.steps):
        base = run.path(f"step-{index}")
        while connection.size_of(f"{base}.started") is None:
            status = _read_json(connection, run.path("status.json"))
            if not follow or status:
                return
            time.sleep(SLOWEST_POLL)
        yield f"### step {step.name}: {step.title}\n"
        offsets = {"out": 0, "err": 0}
        while True:
            code = exit_code_of(connection, f"{base}.exit")  # before reading: then nothing is missed
            for suffix in offsets:
                while chunk := read_new(connection, f"{base}.{suffix}", offsets[suffix]):
                    offsets[suffix] += len(chunk)
                    yield chunk.decode("utf-8", "replace")
            if code is not None:
                yield f"### step {step.name} exited {code}\n"
                break
            if not follow:
                return
            time.sleep(SLOWEST_POLL)
        if code != 0:
            return


def job_state(connection: Connection, settings: Settings, run: RemoteRun) -> dict:
    return _job_call(connection, settings, run, "state", timeout=60)


def cancel(connection: Connection, settings: Settings, run: RemoteRun, grace: float = 10.0) -> dict:
    """SIGTERM the run's processes, then SIGKILL after GRACE; returns what remained."""
    return _job_call(connection, settings, run, "cancel", timeout=grace + 60, grace=grace)


def _job_call(connection: Connection, settings: Settings, run: RemoteRun, action: str, timeout: float,
              grace: float = 10.0) -> dict:
    _, stdout, _ = connection.capture(job_command(settings, action, run.directory, grace), timeout=timeout)
    found = last_marked_json(stdout, JOB_MARKER)
    if found is None:
        raise RemoteStepFailed(f"job.py {action} printed nothing for run {run.run_id}",
                               "check the `python` setting (python -m evalkit doctor)")
    return found


def _read_json(connection: Connection, path: str) -> dict | None:
    if connection.size_of(path) is None:
        return None
    try:
        return json.loads(connection.read_bytes(path))
    except (ValueError, FileNotFoundError):
        return None
