"""How evalkit writes on the server: nothing planted in a folder (a symlink at a file's name or
at its temporary name) redirects a write; its folders are the user's alone; and a scripts
folder others could write is refused, through a real run, before anything in it runs."""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.errors import RemoteStepFailed
from evalkit.server import DRIVER_SCRIPTS
from evalkit.ssh import Connection, resolve_target

from .conftest import REPO

pytestmark = pytest.mark.integration

REMOTE = REPO / "evalkit" / "remote"
VICTIM_TEXT = "the symlink's target, which no write of evalkit's may touch\n"
# In a process of its own: SCRIPT's writer, with a symlink to VICTIM planted first at TARGET
# (PLANT=target) or wherever a writer naming its temporary file by its pid would put it.
PLANTED_WRITE = """
import os, runpy, sys
script, target, victim, plant = sys.argv[1:5]
module = runpy.run_path(script, run_name="planted")
planted = [target] if plant == "target" else [f"{target}.tmp-{os.getpid()}", f"{target}.tmp{os.getpid()}",
                                             f"{target}.{os.getpid()}.tmp"]
for name in planted:
    os.symlink(victim, name)
WRITE
"""
WRITERS = {
    "run_files.py": ('module["write_atomically"](target, "written")', "written"),  # job.py's writer
    "bootstrap.py": ('module["write_atomically"](os.open(os.path.dirname(target), os.O_RDONLY | os.O_DIRECTORY), '
                     'os.path.basename(target), b"written")', "written"),
    "fast_knn.py": ('import numpy; module["write_predictions"](target, "text_id", [1], "image_ids", [7], '
                    'numpy.array([[0]]))', '{"text_id": 1, "image_ids": [7]}\n'),
    "query_hits.py": ('module["atomic"].write_atomically(target, "written")', "written"),
    "atomic.py": ('module["write_atomically"](target, "written")', "written"),
    "provenance.py": ('cache = module["HashCache"](target); cache.changed = True; cache.save()', "{}"),
    "zeroshot.py": ('module["write_json"](target, {"top1": 50.0})', '{"top1": 50.0}'),  # results and hits
}
NEEDS_NUMPY = {"fast_knn.py", "query_hits.py"}


@pytest.mark.parametrize("plant", ["temporary", "target"])
@pytest.mark.parametrize("script", sorted(WRITERS))
def test_a_symlink_planted_in_the_folder_redirects_no_write(tmp_path, server_python, script, plant):
    victim, target = tmp_path / "victim", tmp_path / "folder" / "file"
    victim.write_text(VICTIM_TEXT)
    target.parent.mkdir()
    write, expected = WRITERS[script]
    python = server_python if script in NEEDS_NUMPY else sys.executable  # numpy lives there
    subprocess.run([str(python), "-c", PLANTED_WRITE.replace("WRITE", write), str(REMOTE / script), str(target),
                    str(victim), plant], check=True, timeout=60)
    assert victim.read_text() == VICTIM_TEXT
    assert not target.is_symlink() and target.read_text() == expected


def test_a_steps_output_file_planted_as_a_symlink_is_not_followed(tmp_path):
    victim, run_dir = tmp_path / "victim", tmp_path / "run"
    victim.write_text(VICTIM_TEXT)
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"run_id": "planted", "steps": [
        {"name": "say", "title": "say", "command": "echo from the step"}]}))
    (run_dir / "step-0.out").symlink_to(victim)
    subprocess.run([sys.executable, str(REMOTE / "job.py"), "drive", "--run-dir", str(run_dir)], timeout=60)
    assert victim.read_text() == VICTIM_TEXT
    assert json.loads((run_dir / "status.json").read_text())["state"] == "crashed"  # said, not done


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_scripts_folder_and_each_run_folder_are_the_users_alone(tmp_path):
    # they hold code that is run, and the run's commands and output: nobody else needs them
    folder = tmp_path / "outputs" / ".evalkit"
    run_dir = folder / "runs" / "private"
    hello = "import sys; print('hello')\n"
    request = {"run_dir": str(run_dir), "run": {"run_id": "private", "steps": [
        {"name": "n", "title": "n", "command": "true"}]}}
    sources = {**{name: (REMOTE / name).read_text() for name in DRIVER_SCRIPTS}, "hello.py": hello}
    lines = [json.dumps({"files": {name: "0" * 64 for name in sources}}), json.dumps({"files": sources}),
             json.dumps(request)]
    done = subprocess.run([sys.executable, "-c", (REMOTE / "bootstrap.py").read_text(), str(folder), "job.py", "start"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (_mode(folder), _mode(folder / "runs"), _mode(run_dir)) == (0o700, 0o700, 0o700)
    assert _mode(folder.parent) & 0o022 == 0


def _bootstrap(folder: Path) -> subprocess.CompletedProcess:
    files = {"hello.py": "print('hello')\n"}
    return subprocess.run([sys.executable, "-c", (REMOTE / "bootstrap.py").read_text(), str(folder), "hello.py"],
                          input=json.dumps({"files": {"hello.py": "0" * 64}}) + "\n" + json.dumps({"files": files})
                          + "\n", capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user takes root")
def test_a_scripts_folder_of_another_users_is_refused_before_anything_is_written(tmp_path):
    folder = tmp_path / ".evalkit"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)  # nobody's
    done = _bootstrap(folder)
    assert done.returncode == 1
    [line] = done.stdout.splitlines()
    refused = json.loads(line.removeprefix("EVALKIT-JOB "))
    assert refused["refused"].startswith(f"evalkit will not run its scripts from {folder}: it belongs to ")
    assert f"chown -R root {folder}" in refused["fix"]
    assert list(folder.iterdir()) == []


def test_a_world_writable_scripts_folder_is_refused_through_a_real_run(testbed):
    folder = testbed.server_outputs / ".evalkit"
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert run.returncode == RemoteStepFailed.exit_code, run.stderr
    assert run.stderr.splitlines() == [
        f"error: evalkit will not run its scripts from {folder}: other users can write to it (mode 777)",
        f"fix: on the server: chmod go-w {shlex.quote(str(folder))} (and check that its scripts are evalkit's)"]
    assert list(folder.iterdir()) == []  # nothing written, so nothing of it ran
    folder.chmod(0o755)  # the fix the message gives
    assert testbed.evaluate("--datapath", str(testbed.datapath), "--model-path",
                            str(testbed.checkpoint)).returncode == 0


def test_an_sftp_upload_replaces_a_planted_symlink_and_makes_its_folders_with_the_mode_given(testbed, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text(VICTIM_TEXT)
    planted = tmp_path / "planted" / "file"
    planted.parent.mkdir()
    planted.symlink_to(victim)
    new = tmp_path / "new" / "sub" / "file"
    with Connection(resolve_target("seetacloud-v800", testbed.ssh_dir / "config")) as connection:
        connection.write_bytes(str(planted), b"uploaded")
        connection.write_bytes(str(new), b"uploaded", folder_mode=0o700)
    assert victim.read_text() == VICTIM_TEXT
    assert not planted.is_symlink() and planted.read_bytes() == b"uploaded"
    assert (_mode(new.parent.parent), _mode(new.parent)) == (0o700, 0o700)
