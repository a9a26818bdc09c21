"""The bootstrap (evalkit/remote/bootstrap.py) takes the scripts' digests and the script's first
message in one write from the client (starter.py: one round trip): whether the scripts were
current or had to be written first, the script reads that message as the first line of its stdin."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BOOTSTRAP = Path(__file__).resolve().parents[2] / "evalkit" / "remote" / "bootstrap.py"
ECHO = "import sys\nprint('EVALKIT-JOB ' + sys.stdin.readline().strip(), flush=True)\n"
MESSAGE = {"helpers": {"inspect": {"script": "x"}}}


def _answers(folder: Path, *lines: dict) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", BOOTSTRAP.read_text(), str(folder), "echo.py"],
                          input="".join(json.dumps(line) + "\n" for line in lines), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line.removeprefix("EVALKIT-JOB ")) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("is_current", [True, False], ids=["scripts current", "a script written first"])
def test_the_first_message_sent_with_the_digests_reaches_the_script(tmp_path, is_current):
    folder = tmp_path / ".evalkit"
    if is_current:
        folder.mkdir(mode=0o700)
        (folder / "echo.py").write_text(ECHO)
    digests = {"files": {"echo.py": hashlib.sha256(ECHO.encode()).hexdigest()}}
    sources = [] if is_current else [{"files": {"echo.py": ECHO}}]
    answers = _answers(folder, digests, MESSAGE, *sources)
    written = [] if is_current else [{"written": ["echo.py"]}]
    assert answers == [{"missing": [] if is_current else ["echo.py"]}, *written, MESSAGE]
    assert (folder / "echo.py").read_text() == ECHO


def test_a_scripts_folder_that_cannot_be_made_is_refused_with_why_and_a_fix(tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the output folder should be")  # as root, a permission would not stop it
    done = subprocess.run([sys.executable, "-c", BOOTSTRAP.read_text(), str(blocker / ".evalkit"), "echo.py"],
                          input=json.dumps({"files": {"echo.py": "0" * 64}}) + "\n", capture_output=True, text=True,
                          timeout=60)
    [answer] = [json.loads(line.removeprefix("EVALKIT-JOB ")) for line in done.stdout.splitlines()]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert answer["refused"].startswith(f"evalkit cannot write its scripts to {blocker / '.evalkit'} on the server: ")
    assert answer["fix"].startswith("set remote_output_dir (or --datapath) to a directory you can write there")
