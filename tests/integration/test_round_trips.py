"""A followed run costs the round trips its decisions need, not one per look at a file: counted on
the real test bed by each Connection's RequestCounter (count_requests/sitecustomize.py), so that a
change that adds a request per poll, per step or per result file fails here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import DATASETS
from .server_runs import launch_one_shot

pytestmark = pytest.mark.integration

SPEC = DATASETS[0]


def test_a_one_shot_run_asks_two_channels_before_its_launch_and_nothing_after_but_its_results(testbed, tmp_path):
    counts = tmp_path / "counts.json"
    client = launch_one_shot(testbed, env={"PYTHONPATH": str(Path(__file__).parent / "count_requests"),
                                           "EVALKIT_TEST_COUNTS": str(counts)})
    out, err = client.communicate(timeout=600)
    assert client.returncode == 0, err + out
    found = json.loads(counts.read_text())
    # Up to the launch: two channels, no SFTP. The dataset's layout is one `find`; the starter,
    # begun while that look went on, is the one that runs the checks and launches the run.
    assert found["at_launch"] == {"sftp_requests": 0, "channels": 2}, found
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
