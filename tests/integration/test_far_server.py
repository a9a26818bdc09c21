"""A far server costs round trips, not only seconds: on the real test bed behind the delay proxy
(evalkit/testbed/delay_proxy.py, no delay: it counts), `status` of any number of runs on one
server opens one connection and waits a bounded number of turns, the same for 2 runs as for 8."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from evalkit.config import build_settings
from evalkit.evaluation import Evaluation
from evalkit.plan import build_plan
from evalkit.run_record import new_record, new_run_id
from evalkit.server import run_dir
from evalkit.store import LocalStore
from evalkit.testbed.delay_proxy import Counts, DelayProxy

from .conftest import DATASETS, REPO

pytestmark = pytest.mark.integration

SPEC = DATASETS[0]
STATUS_TURNS = 15  # 9 measured: connect and authenticate, then one exec of job.py states; 141 for 8 runs before
START_TURNS = 15  # 11 measured with the scripts uploaded on the way (no SFTP, the look asked of the starter; 26 with SFTP, 38 and 2 connections before)


@pytest.fixture
def proxy(testbed):
    """The test bed's server, reached through the proxy: the config's alias goes through it."""
    with DelayProxy((testbed.sshd.host, testbed.sshd.port), 0.0) as proxy:
        testbed.sshd.write_client_files(testbed.ssh_dir, port=proxy.port)
        yield proxy


def _recorded_runs(bed, count: int, state: str) -> list[str]:
    """COUNT runs in the local store as a run command leaves them, each ended in STATE on the server."""
    settings = build_settings(bed.config, {})
    store = LocalStore.of(settings)
    evaluation = Evaluation(SPEC.name, SPEC.split, str(bed.checkpoint), "RN50", "RBT3-chinese")
    run_ids = []
    for _ in range(count):
        run_id = new_run_id()
        server_dir = run_dir(settings, run_id)
        store.save_record(new_record(settings, evaluation, build_plan(settings, evaluation), run_id, server_dir))
        os.makedirs(server_dir, mode=0o700)
        with open(os.path.join(server_dir, "status.json"), "w") as status:
            json.dump({"state": state, "ended_at": "2026-12-07T00:00:00Z"}, status)
        run_ids.append(run_id)
        time.sleep(0.01)
    return run_ids


def _status(bed, proxy: DelayProxy, *args: str) -> tuple[subprocess.CompletedProcess, Counts]:
    before = proxy.counts()
    done = subprocess.run([sys.executable, "-m", "evalkit", "status", "--config", str(bed.config), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, "COLUMNS": "250"})
    time.sleep(0.2)  # the closing connection's last bytes
    return done, proxy.counts() - before


def test_status_of_many_runs_costs_one_connection_and_as_many_turns_as_of_few(testbed, proxy):
    few = _recorded_runs(testbed, 2, "succeeded")
    shown, of_few = _status(testbed, proxy, "--last", "2")
    assert shown.returncode == 0, shown.stderr
    assert all(run_id in shown.stdout for run_id in few) and shown.stdout.count("succeeded") == 2, shown.stdout
    many = _recorded_runs(testbed, 6, "failed")
    shown, of_many = _status(testbed, proxy, "--last", "8")
    assert shown.returncode == 0, shown.stderr
    assert all(run_id in shown.stdout for run_id in few + many), shown.stdout
    assert shown.stdout.count("failed") == 6 and shown.stdout.count("succeeded") == 2, shown.stdout
    assert (of_few.connections, of_many.connections) == (1, 1)
    assert of_many.round_trips <= STATUS_TURNS and abs(of_many.round_trips - of_few.round_trips) <= 2, \
        (of_few, of_many)


def test_a_new_checkpoints_start_up_costs_one_connection_and_few_turns(testbed, proxy):
    """From the command's start to its run's launch (--detach ends there): the dataset's layout,
    the scripts' check, the inspection and preflight and the launch, on one connection."""
    before = proxy.counts()
    started = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                               "--detach")
    time.sleep(0.2)
    start_up = proxy.counts() - before
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("started run ")[1].split()[0]
    stopped = subprocess.run([sys.executable, "-m", "evalkit", "cancel", run_id, "--grace", "1", "--config",
                              str(testbed.config)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    print(start_up)
    assert start_up.connections == 1 and start_up.round_trips <= START_TURNS, start_up


def test_logs_of_a_finished_run_say_what_the_follower_says_in_one_ask(testbed, proxy):
    evaluated = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert evaluated.returncode == 0, evaluated.stderr
    [record] = LocalStore.of(build_settings(testbed.config, {})).newest_records(5)
    run_id = record.run_id
    before = proxy.counts()
    at_once = _evalkit_run(testbed, "logs", run_id)
    time.sleep(0.2)
    cost = proxy.counts() - before
    before = proxy.counts()
    followed = _evalkit_run(testbed, "logs", "-f", run_id)  # step by step, as the run's events bring them
    time.sleep(0.2)
    followed_cost = proxy.counts() - before
    assert at_once.returncode == followed.returncode == 0, at_once.stderr + followed.stderr
    assert "### step recall_i2t exited 0" in at_once.stdout and at_once.stdout == followed.stdout
    assert cost.connections == 1 and cost.round_trips <= STATUS_TURNS, cost  # 9 measured
    # the event stream from its start: 7 measured (13 SFTP requests a step, one after another, before)
    assert followed_cost.connections == 1 and followed_cost.round_trips <= STATUS_TURNS, followed_cost


def _evalkit_run(bed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit", *args, "--config", str(bed.config)], capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={**os.environ, "COLUMNS": "250"})
