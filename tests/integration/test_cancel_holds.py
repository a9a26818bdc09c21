"""A cancel that answered is a cancel that holds, driven against remote/job.py itself: whenever it
comes (before the run's directory exists, while its driver waits for the checkpoint's lock, as
the run ends), no step runs after it, and the run's final state is written once, by whoever came
first, never hiding how the run had ended (a crash's message, a refusal)."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO
from .server_runs import processes_of

pytestmark = pytest.mark.integration

JOB = REPO / "evalkit" / "remote" / "job.py"
ROUNDS = 12


def _cancel(run_dir: Path, grace: float = 1.0) -> dict:
    done = subprocess.run([sys.executable, str(JOB), "cancel", "--run-dir", str(run_dir), "--grace", str(grace)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("EVALKIT-JOB ")]
    return json.loads(line.removeprefix("EVALKIT-JOB "))


def _run(run_id: str, marker: Path, lock: Path | None = None) -> dict:
    return {"run_id": run_id, "lock": str(lock) if lock else None,
            "steps": [{"name": "mark", "title": "mark", "command": f"touch '{marker}'"}]}


def _start(run_dir: Path, run: dict) -> subprocess.Popen:
    """remote/job.py start as the client begins it, told the run; its stdin stays open."""
    starter = subprocess.Popen([sys.executable, str(JOB), "start"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    starter.stdin.write(json.dumps({"run_dir": str(run_dir), "run": run}) + "\n")
    starter.stdin.flush()
    return starter


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def _wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_cancel_before_the_run_directory_exists_stops_the_run_its_launch_then_starts(tmp_path):
    # what Ctrl-C during a launch relies on: the run's group cancels it before its starter wrote a thing
    run_dir, marker = tmp_path / "runs" / "early", tmp_path / "step ran"
    answer = _cancel(run_dir)
    assert answer["signalled"] == [] and answer["ended"] is None
    starter = _start(run_dir, _run("early", marker))
    try:
        started = json.loads(starter.stdout.readline().removeprefix("EVALKIT-JOB "))
    finally:
        starter.stdin.close()
        starter.wait(timeout=30)
    assert started == {"status": _status(run_dir), "driver": None}
    assert _status(run_dir)["state"] == "cancelled"
    time.sleep(0.5)
    assert not marker.exists() and not (run_dir / "driver.json").exists()


def test_a_cancel_while_the_driver_waits_for_the_lock_finds_it_and_holds(tmp_path):
    lock, run_dir, marker = tmp_path / "out" / ".evalkit-lock", tmp_path / "runs" / "waiting", tmp_path / "step ran"
    lock.parent.mkdir()
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # granted a moment ago, its holder not yet written: the driver waits
    starter = _start(run_dir, _run("waiting", marker, lock))
    try:
        _wait_for(lambda: (run_dir / "driver.json").exists())  # its identity, before the wait
        driver = json.loads((run_dir / "driver.json").read_text())
        assert driver["waiting_for_lock"] is True
        answer = _cancel(run_dir)
        os.close(holder)  # the lock is free: a driver still waiting would take it now and run its step
        starter.stdin.close()
        starter.wait(timeout=30)
    finally:
        starter.kill()
    assert driver["pid"] in answer["signalled"] and answer["ended"] is None
    time.sleep(1)
    assert _status(run_dir)["state"] == "cancelled"
    assert not marker.exists()
    assert processes_of("waiting") == []


def test_a_cancel_keeps_the_crash_it_came_after_and_its_message(tmp_path):
    run_dir = tmp_path / "crashed"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"run_id": "crashed", "steps": [{"name": "no command"}]}))
    subprocess.run([sys.executable, str(JOB), "drive", "--run-dir", str(run_dir)], capture_output=True, timeout=60)
    crashed = _status(run_dir)
    assert crashed["state"] == "crashed" and "KeyError" in crashed["error"]
    assert _cancel(run_dir)["ended"] == "crashed"
    assert _status(run_dir) == crashed


def test_a_cancel_keeps_the_refusal_it_came_after(tmp_path):
    lock, run_dir = tmp_path / "out" / ".evalkit-lock", tmp_path / "refused"
    lock.parent.mkdir()
    run_dir.mkdir()
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    start_time = int(Path(f"/proc/{os.getpid()}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
    os.write(holder, json.dumps({"pid": os.getpid(), "start_time": start_time, "boot_id": boot_id,
                                 "run_id": "the holder"}).encode())
    (run_dir / "run.json").write_text(json.dumps(_run("refused", tmp_path / "never", lock)))
    try:
        subprocess.run([sys.executable, str(JOB), "drive", "--run-dir", str(run_dir)], timeout=60)
        refused = _status(run_dir)
        assert refused["state"] == "refused" and refused["holder"]["run_id"] == "the holder"
        assert _cancel(run_dir)["ended"] == "refused"
        assert _status(run_dir) == refused
    finally:
        os.close(holder)


def test_a_cancel_racing_the_runs_end_and_the_run_agree_on_who_came_first(tmp_path):
    """The driver's end and the cancel, released at the same instant: the state written is the
    first one's, and the cancel's answer says so (it had ended already, or it is cancelled)."""
    first_came = set()
    for round_ in range(ROUNDS):
        run_dir = tmp_path / f"round-{round_}"
        run_dir.mkdir()
        (run_dir / "run.json").write_text(json.dumps({"run_id": f"race-{round_}", "steps": [
            {"name": "quick", "title": "quick", "command": "true"}]}))
        barrier, release = os.pipe()
        racers = [subprocess.Popen([sys.executable, "-c", AT_THE_BARRIER, str(JOB), *action],
                                   stdin=barrier, stdout=subprocess.PIPE, text=True)
                  for action in (["drive", "--run-dir", str(run_dir)],
                                 ["cancel", "--run-dir", str(run_dir), "--grace", "0"])]
        os.close(barrier)
        time.sleep(0.3)  # both are waiting on the barrier
        os.close(release)
        _, cancelled = (racer.communicate(timeout=60)[0] for racer in racers)
        answer = json.loads(cancelled.strip().splitlines()[-1].removeprefix("EVALKIT-JOB "))
        state = _status(run_dir)["state"]
        assert state in ("succeeded", "cancelled")
        assert answer["ended"] == (None if state == "cancelled" else state)
        first_came.add(state)
    assert first_came  # which came first varies; each round's two sides agree


AT_THE_BARRIER = ("import os, runpy, sys; os.read(0, 1); sys.argv = sys.argv[1:]; "
                  "runpy.run_path(sys.argv[0], run_name='__main__')")
