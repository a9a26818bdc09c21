"""A followed run costs the round trips its decisions need, not one per look at a file: counted on
the real test bed by each Connection's RequestCounter (count_requests/sitecustomize.py), so that a
change that adds a request per poll, per step or per result file fails here; `logs --follow` of a
running run too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import DATASETS, ENTRY_SCRIPT, REPO
from .server_runs import assert_every_step_whole, launch_one_shot, logs_argv, step_outputs

pytestmark = pytest.mark.integration

SPEC = DATASETS[0]


def test_a_one_shot_run_asks_one_channel_before_its_launch_and_nothing_after_but_its_results(testbed, tmp_path):
    counts = tmp_path / "counts.json"
    client = launch_one_shot(testbed, env={"PYTHONPATH": str(Path(__file__).parent / "count_requests"),
                                           "EVALKIT_TEST_COUNTS": str(counts)})
    out, err = client.communicate(timeout=600)
    assert client.returncode == 0, err + out
    found = json.loads(counts.read_text())
    # Up to the launch: one channel, no SFTP. The starter, begun as soon as the connection was up,
    # looks at the dataset's layout, runs the checks and launches the run.
    assert found["at_launch"] == {"sftp_requests": 0, "channels": 1}, found
    after = {key: found["at_exit"][key] - found["at_launch"][key] for key in found["at_exit"]}
    # From the launch on, everything rides on the starter's channel, opened before it:
    # - each step's start, output and end, and the run's end: pushed by the server (no request);
    # - liveness: the stream's heartbeat (no `state` probe);
    # - the manifest, after each check step: a write request on the channel, answered in turn
    #   (nothing waits for it);
    # - the results, query_hits.json, the provenance and status.json's time: one collect, answered
    #   on the channel too.
    # So no SFTP request and no new channel at all (before: 476 to 573 SFTP requests, each read
    # request counted, for this same run).
    assert after == {"sftp_requests": 0, "channels": 0}, found
    local = testbed.results_dir / SPEC.name / SPEC.split
    assert list(local.rglob("summary.json")), out


def test_logs_follow_of_a_running_run_reads_its_event_stream_to_the_end_with_no_sftp_request(testbed, tmp_path):
    started = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                               "--detach")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("started run ")[1].split()[0]
    run_dir = testbed.server_outputs / ".evalkit" / "runs" / run_id
    assert not (run_dir / "status.json").exists(), "the run should still be running when it is followed"
    counts = tmp_path / "counts.json"
    followed = _logs(testbed, "-f", run_id, env={"PYTHONPATH": str(Path(__file__).parent / "count_requests"),
                                                  "EVALKIT_TEST_COUNTS": str(counts)})
    assert followed.returncode == 0, followed.stderr  # it ended by itself, with the run
    assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"
    # the steps' start, output and end came as events on one exec channel, as a followed run's do
    assert json.loads(counts.read_text())["at_exit"]["sftp_requests"] == 0
    assert_every_step_whole(followed.stdout, run_dir)
    at_once = _logs(testbed, run_id)  # read once the run had ended: stdout then stderr of each step
    assert at_once.returncode == 0, at_once.stderr
    assert list(map(sorted, step_outputs(at_once.stdout))) == list(map(sorted, step_outputs(followed.stdout)))


def test_a_dry_run_of_a_checkpoints_folder_lists_it_on_one_channel_and_begins_no_starter(testbed, tmp_path):
    folder = tmp_path / "experiments" / "dry_exp" / "checkpoints"
    folder.mkdir(parents=True)
    os.link(testbed.checkpoint, folder / "epoch_1.pt")
    counts = tmp_path / "counts.json"
    dry = subprocess.run([sys.executable, str(ENTRY_SCRIPT), "--config", str(testbed.config), "--model-path",
                          str(folder), "--dry-run"], capture_output=True, text=True, cwd=testbed.results_dir.parent,
                         stdin=subprocess.DEVNULL, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent / "count_requests"),
                              "EVALKIT_TEST_COUNTS": str(counts)})
    assert dry.returncode == 0, dry.stderr
    assert f"{folder}: 1 checkpoint" in dry.stderr and "extract_features.py" in dry.stdout
    # The listing's one command, and nothing else: no run follows a dry run, so no run's starter
    # (a login shell and a python on the server that nothing would take) is begun beside it.
    assert json.loads(counts.read_text())["at_exit"] == {"sftp_requests": 0, "channels": 1}


def _logs(bed, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(logs_argv(bed, *args), capture_output=True, cwd=REPO, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())

