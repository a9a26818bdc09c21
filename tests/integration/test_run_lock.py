"""The checkpoint's lock under contention: many real `remote/job.py drive` processes released at
the same instant onto one lock file, a fresh one or a dead run's; exactly one runs, every other
is refused naming it. And the lock goes with its driver, not with the driver's steps."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.integration

JOB = REPO / "evalkit" / "remote" / "job.py"
RACERS = 12
ROUNDS = 5
# Blocks on stdin until the test closes the pipe's other end: every racer is then released at once.
AT_THE_BARRIER = ("import os, runpy, sys; open(sys.argv[2], 'w').close(); os.read(0, 1); "
                  "sys.argv = [sys.argv[1], 'drive', '--run-dir', sys.argv[3]]; "
                  "runpy.run_path(sys.argv[0], run_name='__main__')")


def _race(root: Path, lock: Path) -> dict[str, dict]:
    """RACERS drivers of one lock, released together; each one's status.json and driver.json.
    The winner's step holds the lock until every other driver has been answered."""
    root.mkdir()
    others_done = (f"for _ in $(seq 200); do [ $(ls {shlex.quote(str(root))}/*/status.json 2>/dev/null | wc -l)"
                   f" -ge {RACERS - 1} ] && exit 0; sleep 0.05; done")
    racers, barrier, release = [], *os.pipe()
    for index in range(RACERS):
        run_dir = root / f"racer-{index}"
        run_dir.mkdir()
        (run_dir / "run.json").write_text(json.dumps({"run_id": run_dir.name, "lock": str(lock), "steps": [
            {"name": "hold", "title": "hold", "command": others_done}]}))
        racers.append(subprocess.Popen([sys.executable, "-c", AT_THE_BARRIER, str(JOB), str(root / f"ready-{index}"),
                                        str(run_dir)], stdin=barrier, stdout=subprocess.DEVNULL))
    os.close(barrier)
    deadline = time.monotonic() + 60
    while len(list(root.glob("ready-*"))) < RACERS and time.monotonic() < deadline:
        time.sleep(0.01)
    os.close(release)  # EOF for all of them at once
    for racer in racers:
        racer.wait(timeout=60)
    return {run_dir.name: {name: json.loads((run_dir / f"{name}.json").read_text())
                           for name in ("status", "driver") if (run_dir / f"{name}.json").exists()}
            for run_dir in root.glob("racer-*")}


def _the_one_winner(outcomes: dict[str, dict]) -> str:
    states = Counter(outcome["status"]["state"] for outcome in outcomes.values())
    assert states == {"succeeded": 1, "refused": RACERS - 1}, states
    [winner] = [name for name, outcome in outcomes.items() if outcome["status"]["state"] == "succeeded"]
    holders = {outcome["status"]["holder"]["run_id"] for name, outcome in outcomes.items() if name != winner}
    assert holders == {winner}  # each refusal names the run that holds the lock
    return winner


def test_of_many_drivers_released_at_once_onto_one_lock_exactly_one_runs(tmp_path):
    for round_ in range(ROUNDS):
        lock = tmp_path / f"out-{round_}" / ".evalkit-lock"
        outcomes = _race(tmp_path / f"round-{round_}", lock)
        winner = _the_one_winner(outcomes)
        assert outcomes[winner]["driver"]["took_over_stale_lock"] is False
        assert not lock.exists()  # released at the end


def test_a_dead_runs_lock_is_taken_over_by_exactly_one_of_many_takers(tmp_path):
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    for round_ in range(ROUNDS):
        lock = tmp_path / f"out-{round_}" / ".evalkit-lock"
        lock.parent.mkdir()
        lock.write_text(json.dumps({"pid": 999999, "start_time": 1, "boot_id": boot_id,
                                    "run_id": "20200101-000000-dead00"}))
        outcomes = _race(tmp_path / f"round-{round_}", lock)
        winner = _the_one_winner(outcomes)
        assert [name for name, outcome in outcomes.items() if outcome.get("driver", {}).get("took_over_stale_lock")] \
            == [winner]
        assert not lock.exists()


def test_the_lock_goes_with_its_driver_even_while_a_step_of_it_lives_on(tmp_path):
    # the kernel frees a flock when the last descriptor of it closes: a step must not inherit one
    lock = tmp_path / "out" / ".evalkit-lock"
    first, second = tmp_path / "first", tmp_path / "second"
    for run_dir in (first, second):
        run_dir.mkdir()
        (run_dir / "run.json").write_text(json.dumps({"run_id": run_dir.name, "lock": str(lock), "steps": [
            {"name": "step", "title": "step", "command": "sleep 30" if run_dir is first else "true"}]}))
    driver = subprocess.Popen([sys.executable, str(JOB), "drive", "--run-dir", str(first)])
    try:
        deadline = time.monotonic() + 30
        while not (first / "step-0.started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        driver.kill()  # the driver alone: its step, `sleep 30`, lives on
        driver.wait(timeout=10)
        subprocess.run([sys.executable, str(JOB), "drive", "--run-dir", str(second)], check=True, timeout=60)
        assert json.loads((second / "status.json").read_text())["state"] == "succeeded"
        assert json.loads((second / "driver.json").read_text())["took_over_stale_lock"] is True
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver made itself a process group leader
