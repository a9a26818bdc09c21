"""PURE: the server side as the laptop sees it: where evalkit's own scripts live there, and the
one way to say "run this in the server's environment" (cd, activate, PYTHONPATH,
CUDA_VISIBLE_DEVICES, python), used by every step, check, probe and the run's starter.

`activate` is the user's own shell code and is used as written; every other value is quoted
here, once, with shlex.
"""
from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, replace

from .config import Settings
from .executors import GPUS_FROM_SCHEDULER

# evalkit's server scripts (evalkit/remote/), each uploaded to OUTPUT_ROOT/.evalkit/ as needed.
INSPECTOR = "inspect_outputs.py"
JOB_RUNNER = "job.py"
CPU_LAUNCHER = "cpu_launch.py"
FAST_KNN = "fast_knn.py"
IMAGE_TO_IMAGE = "image_to_image.py"
QUERY_HITS = "query_hits.py"
ZEROSHOT = "zeroshot.py"
PROBE = "doctor_probe.py"
BOOTSTRAP = "bootstrap.py"
PROVENANCE = "provenance.py"
CHECKPOINT_LISTER = "list_checkpoints.py"
ATOMIC = "atomic.py"
# job.py's concerns, each a module beside it that it imports (evalkit/remote/job.py's docstring)
RUN_START, RUN_EVENTS, RUN_LOCK = "run_start.py", "run_events.py", "run_lock.py"
RUN_FILES, RUN_PROCESSES = "run_files.py", "run_processes.py"
SERVER_SCRIPTS = {
    INSPECTOR: "reads what the server's dataset and output directory hold (read-only)",
    JOB_RUNNER: "starts, drives, reports on and cancels a run's steps, detached from SSH (imports the run_*.py)",
    RUN_START: "job.py start: the checks' helpers, the run's files, the driver forked or submitted",
    RUN_EVENTS: "a run's event stream, read from its files on the server (job.py start and events)",
    RUN_LOCK: "the checkpoint's lock: a lease with a heartbeat, a stale one taken over (job.py drive)",
    RUN_FILES: "a run's files: written so nothing planted redirects them, its end claimed once (imports atomic.py)",
    RUN_PROCESSES: "a process's identity, and the processes of one run (job.py's driver, cancel and events)",
    ATOMIC: "writes a file so that nothing planted in its folder redirects it (run_files.py, query_hits.py and "
            "zeroshot.py import it)",
    CPU_LAUNCHER: "--device cpu: runs the unmodified upstream scripts with torch.cuda made no-ops",
    FAST_KNN: "--knn fast: exact batched KNN writing upstream's prediction files",
    IMAGE_TO_IMAGE: "--image-to-image: image→image recall and mAP@10 from the image features (beside fast_knn.py)",
    QUERY_HITS: "after recall: each query's hits and the 95% bootstrap intervals (query_hits.json)",
    ZEROSHOT: "zero-shot classification with upstream's functions, and its preflight (imports provenance.py, atomic.py)",
    PROBE: "the doctor's and the preflight's checks (env, GPU, dataset, checkpoint, disk)",
    PROVENANCE: "what a recall number was made from: checkpoint and dataset hashes (cached), the server's software",
    BOOTSTRAP: "sent inline, never uploaded: brings the other scripts up to date, then runs one",
    CHECKPOINT_LISTER: "sent inline, never uploaded: the checkpoint files a sweep's directory or glob names",
}
# what the driver runs of evalkit's own (job.py and what it imports): a Slurm job checks their
# SHA-256 before it starts it
DRIVER_SCRIPTS = (JOB_RUNNER, RUN_START, RUN_EVENTS, RUN_LOCK, RUN_FILES, RUN_PROCESSES, ATOMIC)


@dataclass(frozen=True)
class ServerCall:
    """A python script run in the server's environment."""

    python: str
    script: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # variables set
    pythonpath: tuple[str, ...] = ()       # directories put before the env's PYTHONPATH
    cwd: str | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        return (self.python, "-u", self.script, *self.args)

    def as_dict(self) -> dict:
        """What the run's starter needs to run it in the env it activated (remote/job.py run_helpers)."""
        return {"script": self.script, "args": list(self.args), "env": dict(self.env),
                "pythonpath": list(self.pythonpath)}


def in_server_env(settings: Settings, call: ServerCall, announce: str | None = None) -> str:
    """CALL as one shell command: cd, the user's activate, exports, then the python command.
    ANNOUNCE is printed once activate succeeded (the doctor tells a broken env from a broken probe)."""
    parts = [f"cd {shlex.quote(call.cwd)}"] if call.cwd else []
    parts.append(settings.activate)
    if announce:
        parts.append(f"printf '%s\\n' {shlex.quote(announce)}")
    exports = [f"PYTHONPATH={shlex.quote(':'.join(call.pythonpath))}${{PYTHONPATH:+:$PYTHONPATH}}"] \
        if call.pythonpath else []
    exports += [f"{name}={shlex.quote(value)}" for name, value in call.env]
    if exports:
        parts.append("export " + " ".join(exports))
    parts.append(shlex.join(call.argv))
    return " && ".join(parts)


def through_bootstrap(call: ServerCall, bootstrap: str) -> ServerCall:
    """CALL, one of evalkit's scripts by its path in the scripts folder, run by BOOTSTRAP
    (remote/bootstrap.py's source, given inline), which first makes the folder's scripts current
    from stdin (their digests; the sources of those missing or changed): no upload beforehand."""
    folder, name = posixpath.split(call.script)
    return replace(call, script="-c", args=(bootstrap, folder, name, *call.args))


def upstream_call(settings: Settings, script: str, args: list[str], launcher: str | None = None,
                  cwd: bool = True) -> ServerCall:
    """SCRIPT with the environment of an upstream cn_clip/eval step: Chinese-CLIP on PYTHONPATH,
    the chosen GPU; through LAUNCHER (--device cpu) when given."""
    root = settings.chinese_clip_dir
    front = (script,) if launcher is None else (launcher, script)
    # under a scheduler the job's CUDA_VISIBLE_DEVICES is the scheduler's choice: never overridden
    gpu = () if settings.executor in GPUS_FROM_SCHEDULER else (("CUDA_VISIBLE_DEVICES", str(settings.gpu)),)
    return ServerCall(settings.python, front[0], (*front[1:], *args), gpu,
                      (root, posixpath.join(root, "cn_clip")), root if cwd else None)


def script_call(settings: Settings, name: str, args: list[str] | tuple[str, ...]) -> ServerCall:
    """One of evalkit's server scripts, plainly (no PYTHONPATH, no GPU, no cd)."""
    return ServerCall(settings.python, script_path(settings, name), tuple(args))


def script_path(settings: Settings, name: str) -> str:
    """Where evalkit's server script NAME lives on the server."""
    return posixpath.join(scripts_dir(settings), name)


def scripts_dir(settings: Settings) -> str:
    return posixpath.join(settings.output_root, ".evalkit")


def run_dir(settings: Settings, run_id: str) -> str:
    """The server directory of one run: its step list, each step's output, exit codes, status."""
    return posixpath.join(scripts_dir(settings), "runs", run_id)


def scripts_for(settings: Settings, extra: tuple[str, ...] = ()) -> list[str]:
    """The server scripts a run needs: the inspector, the job runner and the modules it imports
    (DRIVER_SCRIPTS; atomic.py, which the per-query hits import too), the per-query hits, the CPU
    launcher (--device cpu), the fast KNN (--knn fast, and for --image-to-image, which imports it),
    EXTRA."""
    names = [INSPECTOR, *DRIVER_SCRIPTS, QUERY_HITS, *extra]
    if settings.device == "cpu":
        names.append(CPU_LAUNCHER)
    if settings.knn == "fast" or settings.image_to_image:
        names.append(FAST_KNN)
    if settings.image_to_image:
        names.append(IMAGE_TO_IMAGE)
    return names
