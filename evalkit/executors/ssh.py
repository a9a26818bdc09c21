"""The `ssh` executor: the run's driver as a detached process on the server, started by the
run's starter (starter.py) and asked about and cancelled through remote/job.py, always through
the bootstrap (which makes job.py current on the way): nothing of a run needs SFTP."""
from __future__ import annotations

import json

from ..errors import RemoteStepFailed, RunLocked, TransferUnavailable
from ..plan import step_outputs
from ..server import DRIVER_SCRIPTS, ServerCall
from ..config import Settings
from ..ssh import Connection, PendingCommand
from ..ssh.server_disk import write_failure
from ..starter import START_TIMEOUT, Starter
from .base import CallResult, CancelResult, Executor, JobState, Launched, RemoteRun, RunGroup


class SshExecutor(Executor):
    starter: Starter | None = None
    # (the connection's generation it was read in, the server's boot id): asked every few seconds
    # while a run is followed, it cannot change within one SSH session; a reconnect may meet a
    # rebooted server
    _boot: tuple[int, str] | None = None
    _sftp_refused = False  # the server has no SFTP subsystem: state() asks job.py at once

    def __init__(self, connection: Connection, settings: Settings, group: RunGroup | None = None) -> None:
        super().__init__(connection, settings, group)
        self.streams: list[PendingCommand] = []  # the runs' event channels it opened (close ends them)

    def prepare(self, scripts: list[str]) -> None:
        self.starter = Starter.begin(self.connection, self.settings, scripts)

    def run_scripts(self, calls: dict[str, ServerCall], timeout: float) -> dict[str, CallResult]:
        return self._starter().run_scripts(calls, timeout)

    def launch(self, run: RemoteRun, files: dict[str, str] | None = None) -> Launched:
        """The starter stays after the start, pushing the run's events on its channel: the
        follower sees each step's output and end as the server writes them."""
        plan = run.plan
        starter = self._starter()
        started = starter.start_run(run.directory, run_spec(run), files or {},
                                    START_TIMEOUT + self.settings.connect_timeout * 4)
        self.check_written(started)
        status = started.get("status") or {}
        if status.get("state") == "crashed":
            raise RemoteStepFailed(f"the run's driver failed on the server: {status.get('error')}",
                                   f"see {run.path('driver.log')} on the server, and report it")
        if status.get("state") == "cancelled":  # by Ctrl-C in another thread, or `cancel`, before it began
            raise RemoteStepFailed(f"run {run.run_id} was cancelled before its driver started",
                                   "start the evaluation again")
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
        self.starter = None  # its channel is the run's events now: the follower reads it
        self.streams.append(starter.command)
        return Launched(bool(started["driver"].get("took_over_stale_lock")), starter.command)

    def check_written(self, answer: dict) -> None:
        """ServerFileError when the starter could not write the run's files (nothing started)."""
        failed = answer.get("not_written")
        if failed:
            raise write_failure(self.connection.capture, failed["path"], failed["error"], self.settings.connect_timeout)

    def open_events(self, run: RemoteRun, position: str) -> PendingCommand:
        """job.py events through the bootstrap (job.py made current on the way, no SFTP)."""
        starter = Starter.begin(self.connection, self.settings, list(DRIVER_SCRIPTS),
                                ("events", "--run-dir", run.directory, "--from", position))
        starter.make_current()
        self.streams.append(starter.command)
        return starter.command

    def state(self, run: RemoteRun) -> JobState:
        """From the run's files and /proc over SFTP (a few reads, no login shell: cheap enough to
        ask every few seconds); through job.py where /proc, or SFTP, is not there."""
        answer = self._read_over_sftp(run)
        if answer is None:
            return JobState.from_answer(self.states_of([run])[0])
        return JobState.from_answer(answer)

    def _read_over_sftp(self, run: RemoteRun) -> dict | None:
        """RUN's status and whether its driver lives, read over SFTP; None where they cannot be
        read so: no /proc, or no SFTP (remembered: each try would cost a round trip)."""
        if self._sftp_refused:
            return None
        try:
            status, driver = self._read_json(run.path("status.json")), self._read_json(run.path("driver.json"))
            alive = self._is_alive(driver)
        except TransferUnavailable:
            self._sftp_refused = True  # a server's sshd does not gain the subsystem while a command runs
            return None
        return None if alive is None else {"status": status, "driver_alive": alive}

    def look_all(self, runs: list[RemoteRun]) -> dict[str, JobState]:
        return {run.run_id: JobState.from_answer(answer) for run, answer in zip(runs, self.states_of(runs))}

    def states_of(self, runs: list[RemoteRun]) -> list[dict]:
        """Each run's status, driver, whether it lives, and its Slurm job: one ask for all of RUNS."""
        found = self.job_answer(("states", "--run-dirs", *(run.directory for run in runs)), "states")
        return [found["states"].get(run.directory) or {} for run in runs]

    def step_logs(self, run: RemoteRun) -> list[dict]:
        return self.job_answer(("logs", "--run-dir", run.directory, "--steps", str(len(run.plan.steps))),
                               "steps")["steps"]

    def job_answer(self, job_args: tuple[str, ...], key: str, timeout: float = START_TIMEOUT) -> dict:
        """job.py JOB_ARGS in one exec, through the bootstrap (which makes job.py current on the
        way: no upload over SFTP first); its answer, which holds KEY."""
        found = Starter.begin(self.connection, self.settings, list(DRIVER_SCRIPTS), job_args).finish(timeout)
        if found is None or key not in found:
            raise RemoteStepFailed(f"job.py {job_args[0]} printed nothing",
                                   "check the `python` setting (python -m evalkit doctor)")
        return found

    def _is_alive(self, driver: dict | None) -> bool | None:
        """Is the process driver.json describes still running: same boot, pid and start time, as
        remote/run_processes.py is_alive decides. None when the server's /proc cannot be read."""
        try:
            boot_id = self._boot_id()
        except FileNotFoundError:
            return None
        if not driver or driver.get("boot_id") != boot_id or driver.get("start_time") is None:
            return False
        try:
            fields = self.connection.read_bytes(f"/proc/{int(driver['pid'])}/stat").rsplit(b")", 1)[1].split()
            return fields[0] != b"Z" and int(fields[19]) == driver["start_time"]  # a zombie has exited
        except (FileNotFoundError, IndexError, ValueError, KeyError, TypeError):
            return False

    def _boot_id(self) -> str:
        generation = self.connection.open().generation
        if self._boot is None or self._boot[0] != generation:
            self._boot = (generation, self.connection.read_bytes("/proc/sys/kernel/random/boot_id").decode().strip())
        return self._boot[1]

    def _read_json(self, path: str) -> dict | None:
        try:
            found = json.loads(self.connection.read_bytes(path))
        except (FileNotFoundError, ValueError):
            return None  # not written yet (or being replaced: the next look sees it)
        return found if isinstance(found, dict) else None

    def cancel(self, run: RemoteRun, grace: float = 10.0) -> CancelResult:
        return CancelResult.from_answer(self.job_answer(("cancel", "--run-dir", run.directory, "--grace", f"{grace:g}"),
                                                        "remaining", timeout=grace + START_TIMEOUT))

    def close(self) -> None:
        """The starter (not needed after all) and every event stream end: they see EOF on stdin."""
        if self.starter is not None:
            self.starter.abandon()
        for stream in self.streams:
            stream.abandon()

    def _starter(self) -> Starter:
        if self.starter is None:
            raise RuntimeError("SshExecutor.prepare() must come first")
        return self.starter


def run_spec(run: RemoteRun) -> dict:
    """run.json: what the driver runs (remote/job.py drive)."""
    return {"run_id": run.run_id, "lock": run.plan.lock,
            "steps": [{"name": s.name, "title": s.title, "command": s.command, "outputs": step_outputs(run.plan, s),
                       "beside_rest": s.beside_rest} for s in run.plan.steps],
            "beside": [{"name": s.name, "command": s.command} for s in run.plan.beside]}
