"""Ctrl-C at any point of a run's life in evalkit, delivered at the code point (a real SIGINT,
interrupt_at/sitecustomize.py), not at a moment: the tool says what became of each run, and no
process of any run is left on the server."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from evalkit.errors import INTERRUPTED_EXIT_CODE

from .conftest import ENTRY_SCRIPT, start_interruptible
from .server_runs import assert_no_starter_left, interrupted_at, launch_one_shot, processes_of, run_dirs

pytestmark = pytest.mark.integration

# from the launch to the following of one model's run
ONE_MODEL_POINTS = (
    "evalkit.executors.ssh:SshExecutor.launch",  # its driver not yet asked for
    "evalkit.starter:Starter.start_run:after",  # mid-launch: the driver holds the lock, the launch not yet returned
    "evalkit.pipeline:_started",  # launched, its record not yet saved as started
    "evalkit.store:LocalStore.make_current",  # its record saved as started
    "evalkit.follow:Follower.follow",  # following about to begin
)


def _cancelled_and_gone(bed, out: str) -> list[str]:
    """Every run launched (or claimed by a cancel): cancelled, said so, and nothing of it running;
    their ids. A folder holding only the provenance, written before the launch, never ran."""
    launched = [run_dir for run_dir in run_dirs(bed) if {"run.json", "status.json"} & {p.name for p in run_dir.iterdir()}]
    for never_launched in set(run_dirs(bed)) - set(launched):
        assert [path.name for path in never_launched.iterdir()] in ([], ["provenance.json"])
        assert processes_of(never_launched.name) == []
    run_ids = [run_dir.name for run_dir in launched]
    for run_id in run_ids:
        assert f"cancelled run {run_id}: no process of it remains on the server" in out, out
        status = json.loads((bed.server_outputs / ".evalkit" / "runs" / run_id / "status.json").read_text())
        assert status["state"] == "cancelled"
        assert processes_of(run_id) == []
    assert_no_starter_left(bed)
    assert not list(bed.server_outputs.rglob(".evalkit-lock"))  # every checkpoint is free again
    return run_ids


@pytest.mark.parametrize("point", ONE_MODEL_POINTS)
def test_ctrl_c_at_any_point_of_one_models_run_cancels_it_and_says_so(testbed, point):
    client = launch_one_shot(testbed, env=interrupted_at(point))
    out, err = client.communicate(timeout=300)
    assert client.returncode == INTERRUPTED_EXIT_CODE, err + out
    assert len(_cancelled_and_gone(testbed, out + err)) == 1
    assert "Traceback" not in err


def test_ctrl_c_before_a_detached_run_was_announced_cancels_it(testbed):
    client = launch_one_shot(testbed, "--detach", env=interrupted_at("evalkit.pipeline:_started"))
    out, err = client.communicate(timeout=300)
    assert client.returncode == INTERRUPTED_EXIT_CODE, err + out
    assert "started run" not in out  # never announced: nothing of it goes on
    assert len(_cancelled_and_gone(testbed, out + err)) == 1


def test_ctrl_c_while_a_gpus_worker_is_mid_launch_cancels_that_run_too(testbed, second_checkpoint):
    checkpoints = {"team": testbed.checkpoint, "large": second_checkpoint}
    testbed.write_config(models={name: {"path": str(path)} for name, path in checkpoints.items()})
    client = start_interruptible([sys.executable, str(ENTRY_SCRIPT), "--config", str(testbed.config),
                                  "--model", "all", "--gpus", "0,1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=testbed.results_dir.parent, stdin=subprocess.DEVNULL,
                                 env={**os.environ, "COLUMNS": "200",
                                      **interrupted_at("evalkit.starter:Starter.start_run:after")})
    out, err = client.communicate(timeout=300)
    assert client.returncode == INTERRUPTED_EXIT_CODE, err + out
    assert _cancelled_and_gone(testbed, out + err)  # the one mid-launch at least
    assert "Traceback" not in err
