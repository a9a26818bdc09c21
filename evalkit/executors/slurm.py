"""The `slurm` executor: `host` is the cluster's login node, and each evaluation is one Slurm job
that runs the run's driver (remote/job.py drive) on a compute node; the datapath and the output
directory are on the filesystem both share.

The checks before a run (the inspection, the preflight) run on the login node, as with `ssh`.
The job is submitted from there with `sbatch --parsable` (through the run's starter, in the
activated env); its id is kept in the run's folder (slurm.json). The run's files stay the truth:
squeue is asked only whether a job with no final status yet still lives, with backoff, and how
Slurm ended one that did not finish on its own.
"""
from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING

from .. import slurm_job
from ..config import Settings
from ..errors import RunLocked, SlurmJobEnded, SlurmJobLost, SlurmRefused
from ..starter import START_TIMEOUT
from .base import CancelResult, JobState, Launched, RemoteRun
from .ssh import SshExecutor, run_spec

if TYPE_CHECKING:
    from ..ssh import Connection

SQUEUE_TIMEOUT = 60.0
CANCEL_WAIT = 60.0  # scancel, then until squeue says the job ended (Slurm's KillWait is 30 s by default)


class SlurmCancelResult(CancelResult):
    def describe(self, run_id: str) -> str:
        if not self.signalled:
            return f"run {run_id}: no Slurm job of it was submitted"
        if self.remaining:
            return (f"run {run_id}: Slurm job {', '.join(map(str, self.remaining))} is still in the queue after "
                    f"scancel: scancel {' '.join(map(str, self.remaining))} on the login node")
        return f"cancelled run {run_id}: scancel ended Slurm job {', '.join(map(str, self.signalled))}"


class SlurmExecutor(SshExecutor):
    def __init__(self, connection: "Connection", settings: Settings) -> None:
        super().__init__(connection, settings)
        self.job_ids: dict[str, str] = {}          # run id -> job id
        self.asked_at: float | None = None         # the last squeue, by the monotonic clock
        self.pause = 0.0                           # until the next one (backoff)
        self.last_seen: dict[str, slurm_job.QueueEntry] = {}
        self.missing_since: dict[str, float] = {}  # run id -> when squeue first did not list its job

    def launch(self, run: RemoteRun) -> Launched:
        """Submit the job; return at once (Slurm decides when it starts: the lock is taken then)."""
        script = slurm_job.batch_script(self.settings, run.run_id, run.plan.label, run.directory)
        submitted = self._starter().submit_run(run.directory, run_spec(run),
                                               {"script": script, "argv": slurm_job.sbatch_argv(run.directory)},
                                               START_TIMEOUT + self.settings.connect_timeout * 4)
        job_id = slurm_job.parse_job_id(submitted.get("stdout", "")) if submitted.get("exit_code") == 0 else None
        if job_id is None:
            said = " ".join((submitted.get("stderr") or submitted.get("stdout") or "").split()) or "no message"
            raise SlurmRefused(f"sbatch refused the job on {self.settings.host}: {said}",
                               "fix the slurm section of the config (partition, gpus_per_job, time, account, qos, "
                               "sbatch_args): `sinfo` on the login node lists partitions and their GPUs")
        self.job_ids[run.run_id] = job_id
        return Launched(False, None)

    def state(self, run: RemoteRun) -> JobState:
        """From the run's status.json when it has one; else from squeue (with backoff): alive while
        Slurm lists the job as pending or running. A job Slurm ended raises SlurmJobEnded; one gone
        from the queue raises SlurmJobLost after slurm.lost_after seconds (the shared filesystem
        may show the run's last files late)."""
        status = self._read_json(run.path("status.json"))
        if status:
            if status.get("state") == "refused":
                holder = status.get("holder") or {}
                raise RunLocked(f"run {holder.get('run_id')} is already evaluating this checkpoint "
                                f"({run.plan.output_dir}, since {holder.get('taken_at')})",
                                f"wait for it (python -m evalkit attach {holder.get('run_id')}), then evaluate again")
            return JobState.from_answer({"status": status, "driver_alive": False})
        job_id = self._job_id(run)
        if job_id is None:
            return JobState(None, False, unknown="no Slurm job was submitted for this run")
        entry = self._queue([job_id]).get(job_id)
        if entry is not None and entry.is_active:
            self.missing_since.pop(run.run_id, None)
            return JobState(None, True, detail=f"Slurm job {job_id}: {entry.describe()}")
        first_missing = self.missing_since.setdefault(run.run_id, time.monotonic())
        if time.monotonic() - first_missing < self.settings.slurm.lost_after:
            return JobState(None, True)  # its status.json may not have reached this side of the filesystem yet
        output = run.path(slurm_job.OUTPUT_NAME.replace("%j", job_id))
        if entry is None:
            raise SlurmJobLost(f"Slurm job {job_id} of run {run.run_id} left the queue and the run's files do not "
                               "say how it ended", f"read the job's output {output} on the server; evaluate again")
        message, fix = slurm_job.ending(entry, self.settings.slurm, output)
        raise SlurmJobEnded(message, fix)

    def cancel(self, run: RemoteRun, grace: float = 10.0) -> CancelResult:
        """scancel the run's job, then wait until squeue no longer lists it as active."""
        job_id = self._job_id(run)
        if job_id is None:
            return SlurmCancelResult()
        self.connection.capture(shlex.join(["scancel", job_id]), timeout=SQUEUE_TIMEOUT)
        deadline = time.monotonic() + max(grace, CANCEL_WAIT)
        while True:
            self.asked_at = None  # no backoff here: the user waits for the answer
            entry = self._queue([job_id]).get(job_id)
            if entry is None or not entry.is_active or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        remaining = [int(job_id)] if entry is not None and entry.is_active else []
        if not remaining:  # the run's files say so (status.json), and its checkpoint's lock is free
            super().cancel(run, grace=1.0)
        return SlurmCancelResult(signalled=[int(job_id)], remaining=remaining)

    def _job_id(self, run: RemoteRun) -> str | None:
        if run.run_id not in self.job_ids:
            found = self._read_json(run.path("slurm.json")) or {}
            if str(found.get("job_id", "")).isdigit():
                self.job_ids[run.run_id] = str(found["job_id"])
        return self.job_ids.get(run.run_id)

    def _queue(self, job_ids: list[str]) -> dict[str, slurm_job.QueueEntry]:
        """squeue's answer for JOB_IDS; within the backoff pause, the last one."""
        now = time.monotonic()
        if self.asked_at is not None and now - self.asked_at < self.pause:
            return self.last_seen
        code, stdout, stderr = self.connection.capture(shlex.join(slurm_job.squeue_argv(job_ids)),
                                                       timeout=SQUEUE_TIMEOUT)
        self.asked_at, self.pause = now, slurm_job.next_pause(self.pause, self.settings.slurm)
        if code == 0:
            self.last_seen = slurm_job.parse_squeue(stdout.decode("utf-8", "replace"))
        elif b"Invalid job id" in stderr:  # Slurm has forgotten the job (MinJobAge): not listed
            self.last_seen = {}
        return self.last_seen  # else Slurm did not answer this time: what it said last

