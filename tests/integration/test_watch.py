"""--watch on the real test bed: a checkpoint written while evalkit watches is evaluated once it
is complete, never while half of it is written (even left alone past watch_settle), the watch
ends at --until-epoch, and a restart skips what was evaluated unchanged; Ctrl-C while a cell runs
leaves nothing running on the server; a server gone for a while between looks is said, and the
watch goes on."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalkit.errors import INTERRUPTED_EXIT_CODE

from .conftest import ENTRY_SCRIPT, start_interruptible
from .server_runs import assert_no_starter_left, ctrl_c_once, processes_of, wait_for_extraction

pytestmark = pytest.mark.integration


def wait_for(path, process, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.5)


def test_watch_takes_a_new_epoch_once_complete_and_skips_it_after_a_restart(testbed, second_checkpoint, tmp_path):
    folder = tmp_path / "watched" / "experiments" / "live_exp" / "checkpoints"
    folder.mkdir(parents=True)
    os.link(testbed.checkpoint, folder / "epoch_1.pt")
    os.utime(folder / "epoch_1.pt", (time.time() - 10, time.time() - 10))  # written before the watch
    testbed.write_config(watch_settle=3, watch_interval=1)
    argv = [sys.executable, str(ENTRY_SCRIPT), "--config", str(testbed.config), "--model-path", str(folder),
            "--watch", "--until-epoch", "2"]
    results = testbed.results_dir / "Flickr30k-CN" / "valid"
    watcher = start_interruptible(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=testbed.results_dir.parent)
    try:
        wait_for(results / "live_exp@epoch_1" / "summary.json", watcher, 600)
        data = second_checkpoint.read_bytes()
        with open(folder / "epoch_2.pt", "wb") as half:  # a writer that stalls half-way, past watch_settle
            half.write(data[: len(data) // 2])
        time.sleep(6)
        assert not (results / "live_exp@epoch_2").exists()
        with open(folder / "epoch_2.pt", "ab") as rest:
            rest.write(data[len(data) // 2:])
        stdout, stderr = watcher.communicate(timeout=600)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, stderr
    assert "failed" not in stdout, stdout
    summary = json.loads((results / "live_exp@epoch_2" / "summary.json").read_text())
    assert summary["checkpoint"] == str(folder / "epoch_2.pt")
    comparison = json.loads((results / "comparison.json").read_text())
    assert [(row["label"], row["epoch"]) for row in comparison["models"]] == [("live_exp@epoch_1", 1),
                                                                              ("live_exp@epoch_2", 2)]
    assert "live_exp  " in stdout  # the trend line under the table
    logs = sorted((testbed.results_dir / "logs").iterdir())

    again = testbed.evaluate("--model-path", str(folder), "--watch", "--until-epoch", "2", timeout=120)
    assert again.returncode == 0, again.stderr
    assert sorted((testbed.results_dir / "logs").iterdir()) == logs  # nothing evaluated again


def watched_experiment(testbed, tmp_path, name: str):
    folder = tmp_path / "watched" / "experiments" / name / "checkpoints"
    folder.mkdir(parents=True)
    os.link(testbed.checkpoint, folder / "epoch_1.pt")
    os.utime(folder / "epoch_1.pt", (time.time() - 10, time.time() - 10))  # written before the watch
    testbed.write_config(watch_settle=1, watch_interval=1)
    return folder


def start_watch(testbed, folder, *args: str) -> subprocess.Popen:
    return start_interruptible([sys.executable, str(ENTRY_SCRIPT), "--config", str(testbed.config), "--model-path",
                                str(folder), "--watch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=testbed.results_dir.parent, stdin=subprocess.DEVNULL)


def test_ctrl_c_ends_the_watch_while_a_cell_runs_and_leaves_nothing_running(testbed, tmp_path):
    watcher = start_watch(testbed, watched_experiment(testbed, tmp_path, "stopped_exp"))

    def cell_running() -> Path:
        run_dir = wait_for_extraction(testbed, timeout=300)
        assert processes_of(run_dir.name), "the cell's run should be running on the server"
        return run_dir

    run_dir, stdout, stderr = ctrl_c_once(watcher, cell_running)
    assert watcher.returncode == INTERRUPTED_EXIT_CODE, stderr
    assert f"cancelled run {run_dir.name}: no process of it remains on the server" in stdout
    assert processes_of(run_dir.name) == []
    assert_no_starter_left(testbed)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "cancelled"


def test_the_watch_goes_on_after_the_server_went_away_and_takes_the_next_epoch(testbed, second_checkpoint, tmp_path):
    folder = watched_experiment(testbed, tmp_path, "rebooted_exp")
    results = testbed.results_dir / "Flickr30k-CN" / "valid"
    watcher = start_watch(testbed, folder, "--until-epoch", "2")
    try:
        wait_for(results / "rebooted_exp@epoch_1" / "summary.json", watcher, 600)
        testbed.sshd.kill_sessions()  # the server goes away between two looks
        testbed.sshd.stop()
        try:
            shutil.copyfile(second_checkpoint, folder / "epoch_2.pt")
            time.sleep(4)  # looks fail meanwhile
        finally:
            testbed.sshd.restart()
        stdout, stderr = watcher.communicate(timeout=600)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, stderr
    assert "could not look at the checkpoints" in stdout
    assert json.loads((results / "rebooted_exp@epoch_2" / "summary.json").read_text())["checkpoint"] == \
        str(folder / "epoch_2.pt")
