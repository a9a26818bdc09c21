"""What the integration tests see of runs on the test bed's server (this machine): their run
directories, their processes, the starters; and the one-shot command run as a terminal would."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from evalkit.progress import is_protocol_line

from .conftest import ENTRY_SCRIPT, start_interruptible

T = TypeVar("T")


def launch_one_shot(bed, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The one-shot command in the background, as a user's terminal would run it (Ctrl-C included)."""
    return start_interruptible([sys.executable, str(ENTRY_SCRIPT), "--config", str(bed.config),
                                "--datapath", str(bed.datapath), "--model-path", str(bed.checkpoint), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=bed.results_dir.parent, stdin=subprocess.DEVNULL,
                               env={**os.environ, "COLUMNS": "200", **(env or {})})


def interrupted_at(point: str) -> dict[str, str]:
    """The environment of an evalkit that gets Ctrl-C at POINT, MODULE:QUALNAME[:after]
    (interrupt_at/sitecustomize.py)."""
    return {"PYTHONPATH": str(Path(__file__).parent / "interrupt_at"), "EVALKIT_TEST_SIGINT_AT": point}


def filled_at(point: str, folder: Path, leave: int = 0) -> dict[str, str]:
    """The environment of an evalkit that fills FOLDER's disk, but LEAVE bytes, at POINT."""
    return {"PYTHONPATH": str(Path(__file__).parent / "interrupt_at"), "EVALKIT_TEST_FILL_AT": point,
            "EVALKIT_TEST_FILL": f"{folder}:{leave}"}


def processes_of(run_id: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"EVALKIT_RUN_ID={run_id}".encode() in \
                    (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def run_dirs(bed) -> list[Path]:
    return sorted((bed.server_outputs / ".evalkit" / "runs").glob("*"))


def wait_for_extraction(bed, timeout: float = 120) -> Path:
    """The run directory, once its extraction step is under way on the server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_dir in run_dirs(bed):
            if (run_dir / "step-1.started").exists() and (run_dir / "step-1.err").stat().st_size > 0:
                return run_dir
        time.sleep(0.2)
    raise AssertionError("extraction never started")


def starters_of(bed) -> list[int]:
    """job.py start processes of this test bed, begun with every evaluation before it is known;
    not the drivers forked from them (driver.json names each)."""
    folder = str(bed.server_outputs / ".evalkit").encode()
    drivers = {json.loads((run_dir / "driver.json").read_text())["pid"]
               for run_dir in run_dirs(bed) if (run_dir / "driver.json").exists()}
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and folder in command and b"start" in command and int(entry.name) not in drivers:
            found.append(int(entry.name))
    return found


def assert_no_starter_left(bed) -> None:
    deadline = time.monotonic() + 10
    while starters_of(bed) and time.monotonic() < deadline:  # the channel closed: EOF reaches it
        time.sleep(0.1)
    assert not starters_of(bed)


def ctrl_c_once(process: subprocess.Popen, ready: Callable[[], T]) -> tuple[T, str, str]:
    """READY()'s value (it waits for the moment the test interrupts), then SIGINT as Ctrl-C in a
    terminal; (that value, stdout, stderr) once PROCESS has exited. It is killed if it has not."""
    try:
        found = ready()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return found, stdout, stderr


def logs_argv(bed, *args: str) -> list[str]:
    """`logs ARGS`: run it with bytes out (text mode would turn a tqdm bar's \r into \n)."""
    return [sys.executable, "-m", "evalkit", "logs", *args, "--config", str(bed.config)]


def assert_every_step_whole(logs: str, run_dir: Path) -> None:
    """LOGS (`logs -f`'s output) shows every step of the run in RUN_DIR, each ended with 0, and
    between its heading and its exit line its stdout and stderr as they came, interleaved: each
    stream whole (evalkit's marked lines left out) and in its order."""
    steps = json.loads((run_dir / "run.json").read_text())["steps"]
    headings = [line for line in logs.splitlines() if line.startswith("### step ")]
    assert headings == [line for step in steps for line in (f"### step {step['name']}: {step['title']}",
                                                           f"### step {step['name']} exited 0")]
    for index, shown in enumerate(step_outputs(logs)):
        streams = [_without_marked_lines(run_dir / f"step-{index}.{suffix}") for suffix in ("out", "err")]
        assert len(shown) == sum(map(len, streams)), steps[index]["name"]
        assert all(_is_in_order_within(stream, shown) for stream in streams), steps[index]["name"]


def step_outputs(logs: str) -> list[str]:
    """What `logs` showed of each step, between its heading and its exit line."""
    return [part.split("\n", 1)[1] for part in re.split(r"### step \S+ exited -?\d+\n", logs) if part]


def _without_marked_lines(path: Path) -> str:
    lines = re.split(r"(?<=\n)", path.read_bytes().decode("utf-8", "replace"))
    return "".join(line for line in lines if not is_protocol_line(line))


def _is_in_order_within(part: str, whole: str) -> bool:
    """Whether PART's characters are in WHOLE in their order (others between them)."""
    rest = iter(whole)
    return all(character in rest for character in part)
