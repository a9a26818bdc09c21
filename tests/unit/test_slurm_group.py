"""The jobs of one command are watched together: one squeue for all of them per poll, whichever of
the command's threads asks, with backoff; sacct only until it says the cluster keeps no accounting.
The login node is a stand-in that answers as Slurm 22.05 does and keeps each command it was given."""
from __future__ import annotations

import shlex
import threading
import time

from evalkit.config import SlurmSettings
from evalkit.executors.slurm import SlurmRunGroup

SLURM = SlurmSettings(poll_interval=60, poll_max=60)


class LoginNode:
    def __init__(self, jobs: dict[str, str], accounting: bool = False) -> None:
        self.jobs, self.accounting, self.commands = jobs, accounting, []
        self._lock = threading.Lock()

    def capture(self, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        argv = shlex.split(command)
        with self._lock:
            self.commands.append(argv)
        asked = next(arg for arg in argv if arg.startswith("--jobs=")).split("=", 1)[1].split(",")
        if argv[0] == "sacct" and not self.accounting:
            return 1, b"", b"Slurm accounting storage is disabled\n"
        time.sleep(0.05)  # Slurm takes a moment: the other threads ask meanwhile
        lines = "".join(f"{job}|{self.jobs[job]}|None\n" for job in asked if job in self.jobs)
        return 0, lines.encode(), b""

    def asked(self, command: str) -> list[str]:
        return [next(arg for arg in argv if arg.startswith("--jobs=")) for argv in self.commands if argv[0] == command]


def watched(*jobs: str) -> SlurmRunGroup:
    group = SlurmRunGroup()
    for index, job in enumerate(jobs):
        group.watch(f"run-{index}", job)
    return group


def test_three_threads_asking_at_once_make_one_squeue_for_all_three_jobs():
    node, group = LoginNode({"7": "RUNNING", "8": "RUNNING", "9": "PENDING"}), watched("7", "8", "9")
    seen: dict[str, str] = {}

    def ask(job: str) -> None:
        seen[job] = group.queue(node, SLURM)[job].state

    threads = [threading.Thread(target=ask, args=(job,)) for job in ("7", "8", "9")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert node.asked("squeue") == ["--jobs=7,8,9"]
    assert seen == {"7": "RUNNING", "8": "RUNNING", "9": "PENDING"}


def test_within_the_pause_the_last_answer_serves_until_a_new_job_joins():
    node, group = LoginNode({"7": "RUNNING", "8": "PENDING"}), watched("7")
    group.queue(node, SLURM)
    group.queue(node, SLURM)
    assert node.asked("squeue") == ["--jobs=7"]
    group.watch("run-1", "8")
    assert group.queue(node, SLURM)["8"].state == "PENDING"
    assert node.asked("squeue") == ["--jobs=7", "--jobs=7,8"]


def test_a_run_followed_to_its_end_is_asked_about_no_more():
    node, group = LoginNode({"7": "COMPLETED", "8": "RUNNING"}), watched("7", "8")
    group.discard("run-0")
    assert list(group.queue(node, SLURM)) == ["8"]
    assert group.job_of("run-0") is None and group.job_of("run-1") == "8"


def test_without_accounting_sacct_is_asked_once_then_never_again():
    node, group = LoginNode({}), watched("7", "8")
    assert group.accounting(node, "7") is None
    assert group.accounting(node, "8") is None
    assert node.asked("sacct") == ["--jobs=7"]


def test_where_accounting_answers_sacct_says_how_a_forgotten_job_ended():
    node, group = LoginNode({"7": "TIMEOUT"}, accounting=True), watched("7")
    assert group.accounting(node, "7").state == "TIMEOUT"
    assert group.accounting(node, "8") is None and group.has_accounting
