"""A throwaway one-node Slurm cluster (Debian's slurm-wlm 22.05 and munge), without systemd.

Everything lives in one work directory: munged with its own key, socket, pid file and log;
slurmctld and `slurmd -N localhost` with their own ports, state and spool folders, pid files and
logs; two fake GPUs (`gres.conf` `File=` entries are symlinks to /dev/null, so `--gres=gpu:1` sets
CUDA_VISIBLE_DEVICES while the scripts run on the CPU). Several clusters can run at once on one
machine: nothing is shared but the binaries. Client commands find this cluster through
SLURM_CONF (`environment()`); slurm.conf names munged's socket (AuthInfo), so nothing else is needed.
Every daemon is stopped by its pid file.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Optional

from .sshd import _free_port

MUNGED = os.environ.get("EVALKIT_MUNGED", "/usr/sbin/munged")
SLURMCTLD = os.environ.get("EVALKIT_SLURMCTLD", "/usr/sbin/slurmctld")
SLURMD = os.environ.get("EVALKIT_SLURMD", "/usr/sbin/slurmd")
DAEMONS = (MUNGED, SLURMCTLD, SLURMD)
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
FAKE_GPUS = 2
PARTITION = "gpu"


def is_installed() -> bool:
    return all(Path(daemon).exists() for daemon in DAEMONS) and shutil.which("sbatch") is not None


class LoopbackSlurm:
    """munged + slurmctld + slurmd for one node, `localhost`, with FAKE_GPUS fake GPUs in partition
    PARTITION. Use as a context manager, or call start / stop."""

    def __init__(self, workdir: Path, cpus: int | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.workdir / "slurm.conf"
        self.munge_socket = self.workdir / "munge" / "munge.socket"
        self.cluster = f"evalkit{secrets.token_hex(4)}"
        self.pid_files = {name: self.workdir / f"{name}.pid" for name in ("munged", "slurmctld", "slurmd")}

    def __enter__(self) -> "LoopbackSlurm":
        self.start()
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()

    def environment(self) -> dict[str, str]:
        """What a shell needs to use this cluster's client commands."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        for folder in ("munge", "state", "spool", "gpus"):
            (self.workdir / folder).mkdir(parents=True, exist_ok=True)
        (self.workdir / "munge").chmod(0o700)
        self._start_munged()
        self._write_config()
        env = {**os.environ, **self.environment()}
        self._run_daemon("slurmctld", [SLURMCTLD, "-f", str(self.conf), "-i"], env)
        self._run_daemon("slurmd", [SLURMD, "-f", str(self.conf), "-N", "localhost"], env)
        self._wait_until_idle(env)

    def _start_munged(self) -> None:
        key = self.workdir / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self._run_daemon("munged", [MUNGED, "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                                    f"--pid-file={self.pid_files['munged']}",
                                    f"--log-file={self.workdir / 'munged.log'}",
                                    f"--seed-file={self.workdir / 'munge' / 'munged.seed'}"], dict(os.environ))
        self._wait_for(lambda: self.munge_socket.exists(), "munged's socket")

    def _write_config(self) -> None:
        gpus = []
        for index in range(FAKE_GPUS):
            device = self.workdir / "gpus" / f"nvidia{index}"
            if not device.is_symlink():
                device.symlink_to("/dev/null")
            gpus.append(str(device))
        (self.workdir / "gres.conf").write_text(
            "AutoDetect=off\n" + "".join(f"NodeName=localhost Name=gpu File={path}\n" for path in gpus))
        work = self.workdir
        lines = [
            f"ClusterName={self.cluster}",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={work / 'state'}",
            f"SlurmdSpoolDir={work / 'spool'}",
            f"SlurmctldPidFile={self.pid_files['slurmctld']}",
            f"SlurmdPidFile={self.pid_files['slurmd']}",
            f"SlurmctldLogFile={work / 'slurmctld.log'}",
            f"SlurmdLogFile={work / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={work / 'jobcomp.txt'}",
            "GresTypes=gpu",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=300",
            "Waittime=0",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} Gres=gpu:{FAKE_GPUS} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _run_daemon(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.workdir / f"{name}.out", "ab") as out:
            done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=30)
        if done.returncode != 0:
            self._fail(f"{name} exited with status {done.returncode}", name)
        self._wait_for(lambda: self._pid(name) is not None, f"{name}'s pid file")

    def _wait_until_idle(self, env: dict[str, str]) -> None:
        """Until the node is up and schedulable (sinfo says idle)."""
        def idle() -> bool:
            found = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True,
                                   timeout=10)
            return found.returncode == 0 and found.stdout.strip() == "idle"
        self._wait_for(idle, "the node to be idle", "slurmd")

    def _wait_for(self, ready, what: str, log: str | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.05)
        self._fail(f"timed out waiting for {what}", log)

    def _fail(self, why: str, log: str | None) -> None:
        tail = self.log_tail(log) if log else ""
        self.stop()
        raise RuntimeError(f"{why}; in {self.workdir}:\n{tail}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        texts = []
        for path in (self.workdir / f"{name}.log", self.workdir / f"{name}.out"):
            try:
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
            except FileNotFoundError:
                continue
        return "\n".join(texts)

    def _pid(self, name: str) -> int | None:
        try:
            return int(self.pid_files[name].read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Its jobs cancelled (a job's processes outlive slurmd), then each daemon by its pid file:
        SIGTERM, then SIGKILL after STOP_TIMEOUT_S. Safe to call twice."""
        self.cancel_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pid(name)
            if pid is None or not _is_running(pid):
                continue
            _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _is_running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _is_running(pid):
                _signal(pid, signal.SIGKILL)
            self.pid_files[name].unlink(missing_ok=True)


    def cancel_jobs(self) -> None:
        """Every job of the cluster cancelled, waiting until squeue lists none."""
        pid = self._pid("slurmctld")
        if pid is None or not _is_running(pid):
            return
        env = {**os.environ, **self.environment()}
        try:
            subprocess.run(["scancel", f"--user={os.getuid()}"], env=env, capture_output=True, timeout=30)
            deadline = time.monotonic() + STOP_TIMEOUT_S + 10  # KillWait, then SIGKILL
            while time.monotonic() < deadline and subprocess.run(
                    ["squeue", "--noheader", "--format=%i"], env=env, capture_output=True, text=True,
                    timeout=30).stdout.strip():
                time.sleep(0.2)
        except (OSError, subprocess.SubprocessError):
            pass  # the daemons are stopped anyway


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


def _is_running(pid: int) -> bool:
    """Alive and not a zombie (a daemon's parent is init here: it may be reaped late)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
