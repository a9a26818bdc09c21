"""Slurm, pure: the job script of one evaluation, the sbatch and squeue command lines, squeue's
answer read, and what each way Slurm ends a job means for the user. No I/O, no clock.

The job runs the run's own driver (remote/job.py drive), exactly as the `ssh` executor starts it,
so the run's files in its server directory stay the truth for every executor.
"""
from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass

from .config import Settings, SlurmSettings
from .diagnosis import Check
from .server import JOB_RUNNER, ServerCall, in_server_env, scripts_dir

SIGNAL_SECONDS = 120  # before the time limit Slurm tells the job's batch shell (--signal=B:TERM@120)
SQUEUE_FORMAT = "%i|%T|%r"
SACCT_FORMAT = "JobID,State,Reason"  # the same three fields, in sacct's words
OUTPUT_NAME = "slurm-%j.out"   # the job's own stdout and stderr (Slurm's messages), in the run's folder
SIGNALLED_NAME = "slurm-signalled"  # written by the batch shell when Slurm's TERM reaches it
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"})
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_.@+-]")

# state -> (what happened, how to fix it); {time}, {partition} filled from the settings
ENDINGS = {
    "TIMEOUT": ("it ran past its time limit ({time})",
                "raise slurm.time in the config file (now {time}), or evaluate fewer things per job"),
    "OUT_OF_MEMORY": ("it ran out of memory",
                      "ask for more memory: add \"--mem=64G\" (or more) to slurm.sbatch_args"),
    "NODE_FAIL": ("its node failed", "evaluate again; if it repeats, tell the cluster's admins which node"),
    "PREEMPTED": ("a job of higher priority took its resources",
                  "evaluate again, or use a partition / qos without preemption (slurm.partition, slurm.qos)"),
    "CANCELLED": ("it was cancelled by someone else (scancel, or an admin)",
                  "evaluate again; ask whoever cancelled it if it was not you"),
    "BOOT_FAIL": ("its node failed to boot", "evaluate again; if it repeats, tell the cluster's admins"),
    "DEADLINE": ("it reached its deadline", "remove --deadline from slurm.sbatch_args"),
    "FAILED": ("its batch script failed before the run's driver could say how the run ended",
               "read the job's output {output} on the server; check slurm.setup and the `activate` setting"),
    "COMPLETED": ("it ended without the run's driver saying how the run ended",
                  "read the job's output {output} on the server; check slurm.setup and the `activate` setting"),
}


@dataclass(frozen=True)
class QueueEntry:
    """One job as squeue lists it."""

    job_id: str
    state: str
    reason: str

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE

    def describe(self) -> str:
        """`PENDING (Resources)`; the state alone when Slurm gives no reason."""
        return f"{self.state} ({self.reason})" if self.reason and self.reason != "None" else self.state


def job_name(run_id: str, label: str) -> str:
    return _UNSAFE_IN_NAME.sub("_", f"evalkit-{run_id}-{label}")


def job_script(settings: Settings, name: str, run_dir: str, drive: str) -> str:
    """The batch script: Slurm's options, an explicit environment, the user's setup lines, then
    DRIVE (the driver's command, in the server env) in the background, so that the TERM Slurm sends
    SIGNAL_SECONDS before the time limit is noted in the run's folder and does not end the run."""
    slurm = settings.slurm
    options = [f"--job-name={name}"]
    options += [f"--partition={slurm.partition}"] if slurm.partition else []
    if slurm.gpus_per_job:
        options.append(f"--gres=gpu:{slurm.gpus_per_job}")
    options.append(f"--time={slurm.time}")
    options += [f"--account={slurm.account}"] if slurm.account else []
    options += [f"--qos={slurm.qos}"] if slurm.qos else []
    options += [f"--signal=B:TERM@{SIGNAL_SECONDS}", "--export=NONE", *slurm.sbatch_args]
    note = shlex.quote(f"date +%Y-%m-%dT%H:%M:%S%z > {shlex.quote(f'{run_dir.rstrip(chr(47))}/{SIGNALLED_NAME}')}")
    lines = ["#!/bin/bash -l", *(option if option.startswith("#SBATCH") else f"#SBATCH {option}" for option in options),
             "# the job's environment is its own: the submitter's is not exported (--export=NONE)",
             "export PYTHONUNBUFFERED=1",
             f"trap {note} TERM",
             *slurm.setup,
             f"{drive} &",
             "driver=$!",
             "while :; do",
             '  wait "$driver"; status=$?',
             '  kill -0 "$driver" 2>/dev/null || break  # a trapped TERM ends the wait, not the driver',
             "done",
             'exit "$status"']
    return "\n".join(lines) + "\n"


def batch_script(settings: Settings, run_id: str, label: str, run_dir: str, bootstrap: str,
                 expected: dict[str, str]) -> str:
    """The batch script of run RUN_ID (what --dry-run prints): its driver, in the server env, run
    by BOOTSTRAP (remote/bootstrap.py's source, inline) only if evalkit's scripts folder is still
    safe to run from and holds the scripts EXPECTED ({name: SHA-256}, those submitted) when the
    job starts, hours later maybe; else the refusal is the run's status.json."""
    checked = ServerCall(settings.python, "-c", (bootstrap, "--expect", json.dumps(expected, sort_keys=True),
                                                 "--refusal-to", posixpath.join(run_dir, "status.json"),
                                                 scripts_dir(settings), JOB_RUNNER, "drive", "--run-dir", run_dir))
    return job_script(settings, job_name(run_id, label), run_dir, in_server_env(settings, checked))


def sbatch_argv(run_dir: str) -> list[str]:
    """sbatch for the script (appended by the submitter), its output in the run's folder."""
    output = f"{run_dir.rstrip('/')}/{OUTPUT_NAME}"
    return ["sbatch", "--parsable", f"--output={output}", f"--error={output}"]


def squeue_argv(job_ids: list[str]) -> list[str]:
    """One squeue for all of JOB_IDS, finished ones too (while slurmctld remembers them: MinJobAge)."""
    return ["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}", f"--format={SQUEUE_FORMAT}"]


def sacct_argv(job_ids: list[str]) -> list[str]:
    """Accounting's final word on JOB_IDS (the jobs alone, not their steps), once squeue has
    forgotten them; with --jobs sacct looks back to the epoch, not only today."""
    return ["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(job_ids)}",
            f"--format={SACCT_FORMAT}"]


def parse_squeue(text: str) -> dict[str, QueueEntry]:
    """squeue's lines in SQUEUE_FORMAT, by job id; lines of another shape are skipped."""
    found = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3 and fields[0]:
            found[fields[0]] = QueueEntry(fields[0], fields[1].split()[0] if fields[1] else "", fields[2])
    return found


def parse_sacct(code: int, stdout: str, stderr: str) -> dict[str, QueueEntry] | None:
    """sacct's answer (SACCT_FORMAT, --parsable2) as squeue's, by job id; None where the cluster keeps no
    accounting ("Slurm accounting storage is disabled") or sacct failed: then squeue is all there is.
    A step's line (`7.batch`) is skipped; `CANCELLED by 1000` is CANCELLED."""
    if code != 0 or "accounting storage is disabled" in stderr + stdout:
        return None
    found = {}
    for line in stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3 and fields[0].isdigit() and fields[1]:
            found[fields[0]] = QueueEntry(fields[0], fields[1].split()[0], fields[2])
    return found


def ending(entry: QueueEntry, slurm: SlurmSettings, output: str) -> tuple[str, str]:
    """(message, fix) for a job that left the running states without its run saying how it ended."""
    what, fix = ENDINGS.get(entry.state, (f"Slurm ended it with state {entry.state}",
                                          "read the job's output {output} on the server"))
    values = {"time": slurm.time, "output": output}
    # a job cancelled while it waited keeps its last waiting reason (Priority, Resources): not why it ended
    said = entry.reason and entry.reason != "None" and entry.state != "CANCELLED"
    reason = f", reason {entry.reason}" if said else ""
    return (f"Slurm job {entry.job_id} ended {entry.state}{reason}: {what.format(**values)}",
            fix.format(**values))


def next_pause(pause: float, slurm: SlurmSettings) -> float:
    """The backoff between squeue calls: from poll_interval, doubling, up to poll_max."""
    return min(max(pause * 2, slurm.poll_interval), slurm.poll_max)


# --- doctor -----------------------------------------------------------------------------------------

COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")
FOUND_COMMANDS = shlex.join(["command", "-v", *COMMANDS])
PING = shlex.join(["scontrol", "ping"])
PARTITIONS = shlex.join(["sinfo", "--noheader", "--format=%P|%D|%G|%a"])


def doctor_checks(found: str, ping: tuple[int, str], partitions: tuple[int, str], slurm: SlurmSettings) -> list[Check]:
    """The doctor's Slurm lines from what the login node said: FOUND (command -v's paths), PING and
    PARTITIONS (exit status, output) of the commands above."""
    have = {line.rsplit("/", 1)[-1].strip() for line in found.splitlines() if line.strip()}
    missing = [name for name in COMMANDS if name not in have]
    checks = [Check("Slurm commands", not missing,
                    f"{', '.join(missing)} not found on the login node" if missing
                    else f"{', '.join(COMMANDS)} found on the login node",
                    "load Slurm in the login shell (e.g. `module load slurm` in ~/.bashrc), or check `host`: "
                    "it must be the cluster's login node" if missing else None)]
    code, said = ping
    up = code == 0 and "UP" in said
    checks.append(Check("Slurm answers", up, " ".join(said.split()) or f"scontrol ping exited {code}",
                        None if up else "slurmctld does not answer: ask the cluster's admins"))
    checks.append(_partition_check(partitions, slurm))
    return checks


def _partition_check(partitions: tuple[int, str], slurm: SlurmSettings) -> Check:
    code, listed = partitions
    rows = [line.split("|") for line in listed.splitlines() if line.count("|") == 3]
    if code != 0 or not rows:
        return Check("Slurm partition", False, f"sinfo listed no partition (exit {code})",
                     "check that Slurm answers (`sinfo` on the login node)")
    wanted = [row for row in rows if (row[0].rstrip("*") == slurm.partition if slurm.partition
                                      else row[0].endswith("*"))]
    name = slurm.partition or "the default partition"
    if not wanted:
        names = ", ".join(sorted({row[0].rstrip("*") for row in rows}))
        return Check("Slurm partition", False, f"{name} does not exist (partitions: {names})",
                     "set slurm.partition to one of them")
    partition, nodes, gres, available = wanted[0]
    partition = partition.rstrip("*")
    if available != "up":
        return Check("Slurm partition", False, f"partition {partition} is {available}", "ask the cluster's admins")
    gpus = max((int(match) for match in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", gres)), default=0)
    if slurm.gpus_per_job > gpus:
        return Check("Slurm partition", False,
                     f"partition {partition}: {nodes} nodes, at most {gpus} GPUs per node ({gres}); "
                     f"slurm.gpus_per_job is {slurm.gpus_per_job}",
                     "lower slurm.gpus_per_job, or choose a partition with GPUs (slurm.partition)")
    return Check("Slurm partition", True, f"partition {partition}: {nodes} nodes, GPUs per node: {gres}")


PROBE_WAIT = 120  # seconds srun waits for the probe job to start (--immediate)
# the probe job's script: the lock file the login node holds ($1) made again by link(), as a run's
# driver takes its lock (it must fail: the filesystem keeps one lock across nodes), the paths
# ("$@") stat'ed, the node's clock, then the GPUs Slurm gave it, as the node sees them
PROBE_SCRIPT = ('lock=$1; shift; stat --format=%n "$@" || exit; : > "$lock.job-$$" && '
                'if ln "$lock.job-$$" "$lock" 2>/dev/null; then echo "LOCK=made again"; else echo "LOCK=held"; fi; '
                'rm -f -- "$lock.job-$$"; echo "CLOCK=$(date +%s)"; '
                'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"; nvidia-smi -L 2>/dev/null || true')
# how far a compute node's clock may be from the login node's: a lock's heartbeat is judged by
# the clock of the node that reads it (a quarter of remote/run_lock.py's LEASE_SECONDS)
CLOCK_TOLERANCE = 15


def probe_job_command(settings: Settings, paths: list[str]) -> str:
    """A tiny job (srun, as the evaluations' jobs ask: partition, GPUs, account, qos) that stats
    PATHS on a compute node, tries to take a lock file the login node holds in evalkit's folder
    (as a run's driver would) and lists the GPUs it got there; given up when Slurm cannot start
    it within PROBE_WAIT seconds. The login node's clock before and after it is printed last."""
    slurm = settings.slurm
    options = [f"--partition={slurm.partition}"] if slurm.partition else []
    options += [f"--gres=gpu:{slurm.gpus_per_job}"] if slurm.gpus_per_job else []
    options += [f"--account={slurm.account}"] if slurm.account else []
    options += [f"--qos={slurm.qos}"] if slurm.qos else []
    srun = shlex.join(["srun", f"--immediate={PROBE_WAIT}", "--time=5", "--job-name=evalkit-doctor", *options,
                       "bash", "-c", PROBE_SCRIPT, "evalkit-probe"])
    lock = shlex.quote(posixpath.join(scripts_dir(settings), "doctor-lock-probe"))
    return (f'lock={lock}-$$; (set -C; : > "$lock") || exit; before=$(date +%s); '
            f'{srun} "$lock" {shlex.join(paths)}; code=$?; '
            'echo "LOGIN_CLOCK=$before $(date +%s)"; rm -f -- "$lock"; exit $code')


def lock_check(seen_by_job: str) -> Check | None:
    """Whether a run's lock holds across this cluster's nodes, from what the probe job printed
    (SEEN_BY_JOB: its stdout and the login node's clocks); None when it did not get that far."""
    said = dict(line.split("=", 1) for line in seen_by_job.splitlines() if "=" in line)
    if "LOCK" not in said or "CLOCK" not in said or "LOGIN_CLOCK" not in said:
        return None
    if said["LOCK"] != "held":
        return Check("Slurm lock across nodes", False, "a job on a compute node made again the lock file the login "
                     "node holds: this filesystem does not keep one file across nodes, so two runs of one checkpoint "
                     "could both start", "put remote_output_dir on the filesystem all nodes share (NFS, Lustre), or "
                     "evaluate each checkpoint from one evalkit at a time")
    before, after = (int(value) for value in said["LOGIN_CLOCK"].split())
    node = int(said["CLOCK"])
    off = max(before - node, node - after, 0)
    if off > CLOCK_TOLERANCE:
        return Check("Slurm lock across nodes", False, f"a compute node's clock is {off} s off the login node's: "
                     "a run's lock, judged by its heartbeat's age, could be taken over while it is held",
                     "ask the cluster's admins to synchronise the nodes' clocks (NTP, chrony)")
    return Check("Slurm lock across nodes", True, "a job on a compute node could not take the lock the login node "
                 f"holds (link() keeps it across nodes); its clock is within {max(off, 1)} s of the login node's")


def probe_job_check(code: int, stdout: str, stderr: str, paths: list[str]) -> Check:
    if code == 0:
        return Check("Slurm probe job", True, f"a job on a compute node sees {', '.join(paths)}")
    said = " ".join(line.strip() for line in stderr.splitlines() if line.strip())[-400:] or f"srun exited {code}"
    return Check("Slurm probe job", False, f"a job on a compute node: {said}",
                 "put the datapath, chinese_clip_dir and remote_output_dir on the filesystem the compute nodes "
                 "share with the login node; if the job could not start, check the slurm section")


def compute_node_gpu_check(login_node: Check, partition: Check, seen_by_job: str | None, settings: Settings) -> Check:
    """The doctor's GPU line under Slurm. The evaluations run on compute nodes, so the login node's
    own GPU (LOGIN_NODE: the probe's line) says nothing about theirs: the partition's GPUs (sinfo's
    Gres: PARTITION, the doctor's partition line) do and, with --probe-job, what nvidia-smi showed
    a job on a compute node (SEEN_BY_JOB: the probe job's stdout, None when it did not run)."""
    if settings.device == "cpu":
        return login_node
    if seen_by_job is None:
        return Check("GPU", partition.ok, f"on the compute nodes (sinfo), not this login node: {partition.found}",
                     partition.fix)
    lines = seen_by_job.splitlines()
    visible = next((line.split("=", 1)[1] for line in lines if line.startswith("CUDA_VISIBLE_DEVICES=")), "unset")
    gpus = [line.strip() for line in lines if line.startswith("GPU ")]
    if gpus:
        return Check("GPU", True, f"a job on a compute node got CUDA_VISIBLE_DEVICES={visible}: {'; '.join(gpus)}")
    return Check("GPU", False, f"a job on a compute node got CUDA_VISIBLE_DEVICES={visible}, but nvidia-smi there "
                 "lists no GPU", "check slurm.partition and slurm.gpus_per_job (`sinfo -o '%P %G'` lists each "
                 "partition's GPUs), or ask the cluster's admins; --device cpu runs without one")
