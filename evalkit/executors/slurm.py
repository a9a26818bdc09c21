"""The `slurm` executor: `host` is the cluster's login node, and each evaluation is one Slurm job
that runs the run's driver (remote/job.py drive) on a compute node; the datapath and the output
directory are on the filesystem both share.

The checks before a run (the inspection, the preflight) run on the login node, as with `ssh`.
The job is submitted from there with `sbatch --parsable` (through the run's starter, in the
activated env); its id is kept in the run's folder (slurm.json). The run's files stay the truth:
Slurm is asked only whether a job with no final status yet still lives, with one squeue for all
of a command's jobs per poll (SlurmRunGroup), with backoff, and how Slurm ended one that did not
finish on its own (squeue, then sacct where the cluster keeps accounting).
"""
from __future__ import annotations

import shlex
import threading
import time
from typing import TYPE_CHECKING

from .. import slurm_job
from ..config import Settings, SlurmSettings
from ..errors import RemoteStepFailed, RunLocked, SlurmJobEnded, SlurmJobLost, SlurmRefused
from ..slurm_job import QueueEntry
from ..starter import START_TIMEOUT
from ..uploads import slurm_batch_script
from .base import CancelResult, JobState, Launched, RemoteRun, RunGroup
from .ssh import SshExecutor, run_spec

if TYPE_CHECKING:
    from ..ssh import Connection

SQUEUE_TIMEOUT = 60.0
CANCEL_WAIT = 60.0  # scancel, then until squeue says the jobs ended (Slurm's KillWait is 30 s by default)


class SlurmCancelResult(CancelResult):
    def describe(self, run_id: str) -> str:
        if not self.signalled:
            return f"run {run_id}: no Slurm job of it was submitted"
        if self.remaining:
            return (f"run {run_id}: Slurm job {', '.join(map(str, self.remaining))} is still in the queue after "
                    f"scancel: scancel {' '.join(map(str, self.remaining))} on the login node")
        return f"cancelled run {run_id}: scancel ended Slurm job {', '.join(map(str, self.signalled))}"


class SlurmRunGroup(RunGroup):
    """The runs of one command and their jobs, watched together by all of the command's threads:
    one squeue for every job per poll, whoever asks, with backoff (slurm.poll_interval doubling up
    to slurm.poll_max); sacct only until it says the cluster keeps no accounting."""

    def __init__(self) -> None:
        super().__init__()
        self._jobs: dict[str, str] = {}        # run id -> job id, while its run is followed
        self._asking = threading.Lock()        # one squeue at a time: the other threads wait for its answer
        self.asked_at: float | None = None     # the last squeue, by the monotonic clock
        self.pause = 0.0                       # until the next one
        self.asked_for: frozenset[str] = frozenset()
        self.last_seen: dict[str, QueueEntry] = {}
        self.has_accounting = True             # until sacct fails once

    def watch(self, run_id: str, job_id: str) -> None:
        with self._lock:
            self._jobs[run_id] = job_id

    def job_of(self, run_id: str) -> str | None:
        with self._lock:
            return self._jobs.get(run_id)

    def discard(self, run_id: str) -> None:
        with self._lock:
            self._jobs.pop(run_id, None)
        super().discard(run_id)

    def queue(self, connection: "Connection", slurm: SlurmSettings) -> dict[str, QueueEntry]:
        """squeue's answer for every watched job: the last one within the backoff's pause, unless
        a job joined since (its first answer should not wait up to poll_max)."""
        with self._asking:
            with self._lock:
                jobs = frozenset(self._jobs.values())
            now = time.monotonic()
            if self.asked_at is not None and now - self.asked_at < self.pause and jobs <= self.asked_for:
                return self.last_seen
            answer = squeue(connection, sorted(jobs, key=int)) if jobs else {}
            self.asked_at, self.pause, self.asked_for = now, slurm_job.next_pause(self.pause, slurm), jobs
            if answer is not None:  # else Slurm did not answer this time: what it said last
                self.last_seen = answer
            return self.last_seen

    def accounting(self, connection: "Connection", job_id: str) -> QueueEntry | None:
        """sacct's word on JOB_ID, which squeue no longer lists (MinJobAge); None without accounting
        ("accounting storage is disabled"), and from then on without asking again."""
        if not self.has_accounting:
            return None
        code, stdout, stderr = connection.capture(shlex.join(slurm_job.sacct_argv([job_id])), timeout=SQUEUE_TIMEOUT)
        found = slurm_job.parse_sacct(code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))
        if found is None:
            self.has_accounting = False
            return None
        return found.get(job_id)


class SlurmExecutor(SshExecutor):
    group_class = SlurmRunGroup
    group: SlurmRunGroup
    # the event stream's job.py runs on the login node, the driver on a compute node: Slurm says
    # whether the job lives (state), the stream only what the run's files, shared, say
    liveness_on_stream = False
    follows_over_sftp = True  # state() reads the run's status.json and slurm.json

    def __init__(self, connection: "Connection", settings: Settings, group: RunGroup | None = None) -> None:
        super().__init__(connection, settings, group)
        self.missing_since: dict[str, float] = {}  # run id -> when squeue first did not list its job

    def launch(self, run: RemoteRun, files: dict[str, str] | None = None) -> Launched:
        """Submit the job; return at once (Slurm decides when it starts: the lock is taken then)."""
        name = slurm_job.job_name(run.run_id, run.plan.label)
        script = slurm_batch_script(self.settings, run.run_id, run.plan.label, run.directory)
        submitted = self._starter().submit_run(run.directory, run_spec(run), files or {},
                                               {"script": script, "argv": slurm_job.sbatch_argv(run.directory),
                                                "name": name},
                                               START_TIMEOUT + self.settings.connect_timeout * 4)
        self.check_written(submitted)
        # the server found the id: in sbatch's output among a site's notices, else in the queue by
        # the job's name; no job of it in the queue is the one proof that nothing runs
        job_id = submitted.get("job_id")
        if job_id is None:
            said = " ".join((submitted.get("stderr") or submitted.get("stdout") or "").split()) or "no message"
            raise SlurmRefused(f"sbatch refused the job on {self.settings.host}: {said}",
                               "fix the slurm section of the config (partition, gpus_per_job, time, account, qos, "
                               "sbatch_args): `sinfo` on the login node lists partitions and their GPUs")
        self.group.watch(run.run_id, str(job_id))
        return Launched(False, None)

    def state(self, run: RemoteRun) -> JobState:
        """From the run's status.json when it has one; else from squeue (the command's one poll):
        alive while Slurm lists the job as pending or running. A job Slurm ended raises
        SlurmJobEnded; one gone from the queue, and from accounting, SlurmJobLost; both only after
        slurm.lost_after seconds (the shared filesystem may show the run's last files late)."""
        return self._state(run, patient=True, status=self._read_json(run.path("status.json")))

    def look(self, run: RemoteRun) -> JobState:
        """As state(), at once: how Slurm ended the job, or that it is lost, is the answer."""
        return self._looked(run, self._read_json(run.path("status.json")))

    def look_all(self, runs: list[RemoteRun]) -> dict[str, JobState]:
        """Every run's files in one ask (job.py states), then one squeue for the jobs of those
        that have not ended."""
        answers = self.states_of(runs)
        for run, answer in zip(runs, answers):
            job_id = str((answer.get("slurm") or {}).get("job_id", ""))
            if job_id.isdigit() and self.group.job_of(run.run_id) is None:
                self.group.watch(run.run_id, job_id)
        return {run.run_id: self._answered(run, answer.get("status")) for run, answer in zip(runs, answers)}

    def _answered(self, run: RemoteRun, status: dict | None) -> JobState:
        try:
            return self._looked(run, status)
        except RunLocked as refused:  # one run's word, not the others'
            return JobState(None, False, unknown=refused.message)

    def _looked(self, run: RemoteRun, status: dict | None) -> JobState:
        try:
            return self._state(run, patient=False, status=status)
        except (SlurmJobEnded, SlurmJobLost, RemoteStepFailed) as ended:  # the last: its start refused the folder
            return JobState(None, False, detail=ended.message)

    def _state(self, run: RemoteRun, patient: bool, status: dict | None) -> JobState:
        """STATUS: the run's status.json as just read (None: not written yet)."""
        final = self._final_state(run, status)
        if final is not None:
            return final
        job_id = self._job_id(run)
        if job_id is None:
            return JobState(None, False, unknown="no Slurm job was submitted for this run")
        entry = self.group.queue(self.connection, self.settings.slurm).get(job_id)
        if entry is not None and entry.is_active:
            self.missing_since.pop(run.run_id, None)
            return _waiting_or_running(entry)
        first_missing = self.missing_since.setdefault(run.run_id, time.monotonic())
        if patient and time.monotonic() - first_missing < self.settings.slurm.lost_after:
            return JobState(None, True)  # its status.json may not have reached this side of the filesystem yet
        return self._after_the_queue(run, job_id, entry)

    def _final_state(self, run: RemoteRun, status: dict | None) -> JobState | None:
        if not status:
            return None
        if status.get("state") == "refused":
            holder = status.get("holder") or {}
            raise RunLocked(f"run {holder.get('run_id')} is already evaluating this checkpoint "
                            f"({run.plan.output_dir}, since {holder.get('taken_at')})",
                            f"wait for it (python -m evalkit attach {holder.get('run_id')}), then evaluate again")
        if status.get("state") == "unsafe":  # the job's start refused evalkit's scripts folder (remote/bootstrap.py)
            raise RemoteStepFailed(status.get("error") or "the Slurm job refused evalkit's scripts folder",
                                   status.get("fix"))
        return JobState.from_answer({"status": status, "driver_alive": False})

    def _after_the_queue(self, run: RemoteRun, job_id: str, entry: QueueEntry | None) -> JobState:
        """ENTRY: squeue's word on the job (None: squeue has forgotten it, so sacct is asked).
        Alive while pending or running; else SlurmJobEnded naming how Slurm ended it, or SlurmJobLost."""
        if entry is None:
            entry = self.group.accounting(self.connection, job_id)
        if entry is not None and entry.is_active:
            return _waiting_or_running(entry)
        output = run.path(slurm_job.OUTPUT_NAME.replace("%j", job_id))
        if entry is None:
            raise SlurmJobLost(f"Slurm job {job_id} of run {run.run_id} left the queue and the run's files do not "
                               "say how it ended", f"read the job's output {output} on the server; evaluate again")
        raise SlurmJobEnded(*slurm_job.ending(entry, self.settings.slurm, output))

    def cancel(self, run: RemoteRun, grace: float = 10.0) -> CancelResult:
        return self.cancel_all([run], grace)[run.run_id]

    def cancel_all(self, runs: list[RemoteRun], grace: float) -> dict[str, CancelResult]:
        """One scancel for the jobs of RUNS, then squeue until none is pending or running; then the
        files of each run whose job ended say `cancelled`, and its checkpoint's lock is free."""
        jobs = {run.run_id: self._job_id(run) for run in runs}
        submitted = sorted({job_id for job_id in jobs.values() if job_id}, key=int)
        remaining = self._scancel(submitted, grace) if submitted else set()
        results: dict[str, CancelResult] = {}
        for run in runs:
            job_id = jobs[run.run_id]
            if job_id not in remaining:  # nothing of it runs; without a job yet (a submission in flight),
                SshExecutor.cancel(self, run, grace=1.0)  # its files say cancelled before its driver starts
            results[run.run_id] = SlurmCancelResult(signalled=[int(job_id)] if job_id else [],
                                                    remaining=[int(job_id)] if job_id in remaining else [])
        return results

    def _scancel(self, job_ids: list[str], grace: float) -> set[str]:
        """scancel JOB_IDS, then ask squeue (no backoff: the user waits) until none is active; those still active."""
        self.connection.capture(shlex.join(["scancel", *job_ids]), timeout=SQUEUE_TIMEOUT)
        deadline = time.monotonic() + max(grace, CANCEL_WAIT)
        while True:
            answer = squeue(self.connection, job_ids)
            active = set(job_ids) if answer is None else {job for job, entry in answer.items() if entry.is_active}
            if not active or time.monotonic() > deadline:
                return active
            time.sleep(0.5)

    def _job_id(self, run: RemoteRun) -> str | None:
        job_id = self.group.job_of(run.run_id)
        if job_id is None:
            found = self._read_json(run.path("slurm.json")) or {}
            if str(found.get("job_id", "")).isdigit():
                job_id = str(found["job_id"])
                self.group.watch(run.run_id, job_id)
        return job_id


def squeue(connection: "Connection", job_ids: list[str]) -> dict[str, QueueEntry] | None:
    """One squeue for JOB_IDS: the jobs it lists (a job Slurm has forgotten is not); None when
    Slurm did not answer."""
    code, stdout, stderr = connection.capture(shlex.join(slurm_job.squeue_argv(job_ids)), timeout=SQUEUE_TIMEOUT)
    if code == 0:
        return slurm_job.parse_squeue(stdout.decode("utf-8", "replace"))
    if b"Invalid job id" in stderr:  # one job asked for, and Slurm has forgotten it (MinJobAge)
        return {}
    return None


def _waiting_or_running(entry: QueueEntry) -> JobState:
    return JobState(None, True, detail=f"Slurm job {entry.job_id}: {entry.describe()}")
