"""`executor: slurm` on a real one-node Slurm (munged, slurmctld, slurmd; 2 fake GPUs), reached
through the loopback sshd as its login node: registered models become jobs whose results are
upstream's own, Slurm's refusals and endings are named, Ctrl-C leaves no job behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from evalkit.comparison import METRICS
from evalkit.errors import INTERRUPTED_EXIT_CODE, RemoteStepFailed, SlurmJobEnded, SlurmJobLost, SlurmRefused

from .conftest import DATASETS, ENTRY_SCRIPT, REPO, SLURM_TEST_SETTINGS, run_upstream_by_hand, start_interruptible

pytestmark = pytest.mark.integration

NAMES = ("team", "large", "baseline")


def _squeue(slurm, *args: str) -> str:
    found = subprocess.run(["squeue", "--noheader", *args], env={"PATH": "/usr/bin:/bin", **slurm.environment()},
                           capture_output=True, text=True, timeout=30, check=True)
    return found.stdout


def _jobs_of(run_dir: Path) -> dict[str, str]:
    """job id -> the run's folder, for each run the server side holds."""
    return {json.loads((folder / "slurm.json").read_text())["job_id"]: folder.name
            for folder in run_dir.iterdir() if (folder / "slurm.json").exists()}


def _stamp(path: Path, key: str) -> datetime:
    return datetime.strptime(json.loads(path.read_text())[key], "%Y-%m-%dT%H:%M:%S%z")


def test_three_registered_models_are_three_jobs_whose_results_are_upstreams(
        slurm_testbed, slurm, second_checkpoint, third_checkpoint, tmp_path):
    spec = DATASETS[0]
    bed = slurm_testbed
    checkpoints = dict(zip(NAMES, (bed.checkpoint, second_checkpoint, third_checkpoint)))
    bed.write_config(executor="slurm", slurm=SLURM_TEST_SETTINGS,
                     models={name: {"path": str(path)} for name, path in checkpoints.items()})
    run = bed.evaluate("--model", "all", "--json", timeout=900)
    assert run.returncode == 0, run.stderr
    rows = {row["label"]: row for row in json.loads(run.stdout)["models"]}
    assert list(rows) == list(NAMES) and all(row["status"] == "ok" for row in rows.values())

    # asked at once: slurmctld forgets a finished job after MinJobAge (300 s)
    runs = bed.server_outputs / ".evalkit" / "runs"
    jobs = _jobs_of(runs)
    assert len(jobs) == 3
    # each job is Slurm's: named after its run and label, it ran the run's driver to the end, on
    # one of the two fake GPUs Slurm chose (CUDA_VISIBLE_DEVICES is Slurm's, never overridden)
    listed = _squeue(slurm, "--states=all", f"--jobs={','.join(jobs)}", "--format=%i|%j|%T")
    states = {line.split("|")[0]: line.split("|")[1:] for line in listed.splitlines()}
    for job_id, run_id in jobs.items():
        name, state = states[job_id]
        assert state == "COMPLETED" and name.startswith(f"evalkit-{run_id}-")
        assert json.loads((runs / run_id / "status.json").read_text())["state"] == "succeeded"
        script = (runs / run_id / "job.sh").read_text()
        assert "#SBATCH --gres=gpu:1" in script and "CUDA_VISIBLE_DEVICES" not in script
        assert "#SBATCH --signal=B:TERM@120" in script and "export PYTHONUNBUFFERED=1" in script
    assert {name.split("-")[-1] for name, _ in states.values()} == set(NAMES)
    # Slurm placed them: two at a time on its two GPUs (the drivers' own start and end times)
    intervals = [(_stamp(runs / run_id / "driver.json", "started_at"), _stamp(runs / run_id / "status.json",
                                                                              "finished_at")) for run_id in jobs.values()]
    at_once = max(sum(start <= moment < end for start, end in intervals) for moment, _ in intervals)
    assert at_once == 2, intervals

    folder = bed.results_dir / spec.name / spec.split
    for name, checkpoint in checkpoints.items():
        by_hand = run_upstream_by_hand(bed, spec, tmp_path / name, checkpoint)
        pulled = {d: json.loads((folder / name / f"{d}_results.json").read_text()) for d in by_hand}
        assert pulled == by_hand, name
        for direction, result in by_hand.items():
            assert rows[name]["recall"][direction] == {key: result["scoreJson"][key] for key in METRICS}


def test_a_missing_partition_is_refused_before_anything_runs(slurm_testbed):
    bed = slurm_testbed
    bed.write_config(executor="slurm", slurm={**SLURM_TEST_SETTINGS, "partition": "nosuch"})
    run = bed.evaluate("--model-path", str(bed.checkpoint))
    assert run.returncode == SlurmRefused.exit_code, run.stderr
    assert "sbatch refused the job" in run.stderr and "invalid partition" in run.stderr.lower()
    assert "Traceback" not in run.stderr
    assert not list((bed.results_dir / "runs").glob("*.json"))  # no record of a run that never ran
    runs = bed.server_outputs / ".evalkit" / "runs"
    assert not _jobs_of(runs) if runs.exists() else True


# A site's sbatch: a wrapper (or a submit plugin) that says something around the job's id
SBATCH_WRAPPERS = {
    "notices before and after the id": 'echo "NOTICE: charged to account lab"\n{sbatch} "$@" || exit\n'
                                       'echo "Remember to cite the cluster (2024)"\n',
    "no parsable id at all": 'set -o pipefail\n{sbatch} "$@" | sed "s/^[0-9]*$/Submitted batch job &/"\n',
}


@pytest.mark.parametrize("wrapper", sorted(SBATCH_WRAPPERS))
def test_a_job_submitted_through_a_sites_sbatch_wrapper_is_reached_from_any_terminal(slurm_testbed, slurm,
                                                                                      tmp_path, wrapper):
    bed = slurm_testbed
    folder = tmp_path / "site-bin"
    folder.mkdir()
    (folder / "sbatch").write_text("#!/bin/bash\n" + SBATCH_WRAPPERS[wrapper].format(sbatch=shutil.which("sbatch")))
    (folder / "sbatch").chmod(0o755)
    # first on the login node's PATH, as a site's module or profile puts it
    bed.write_config(executor="slurm", slurm={**SLURM_TEST_SETTINGS, "setup": ["sleep 600"]},
                     activate=f"export PATH='{folder}':$PATH && source '{bed.server_python.parent / 'activate'}'")
    started = bed.evaluate("--model-path", str(bed.checkpoint), "--detach")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("started run ")[1].split()[0]
    runs = bed.server_outputs / ".evalkit" / "runs"
    [(job_id, folder_of_job)] = _jobs_of(runs).items()  # slurm.json: the id whoever asks later reads
    assert folder_of_job == run_id
    assert _squeue(slurm, f"--jobs={job_id}", "--format=%j").strip().startswith(f"evalkit-{run_id}-")

    status = _evalkit("status", run_id, "--config", str(bed.config))  # another terminal
    assert status.returncode == 0 and f"Slurm job {job_id}: " in status.stdout, status.stdout + status.stderr
    assert "no Slurm job was submitted" not in status.stdout
    cancelled = _evalkit("cancel", run_id, "--config", str(bed.config))
    assert cancelled.returncode == 0 and f"scancel ended Slurm job {job_id}" in cancelled.stdout, \
        cancelled.stdout + cancelled.stderr
    assert _squeue(slurm, f"--jobs={job_id}", "--format=%i") == ""


def test_a_detached_job_past_its_time_limit_is_reported_as_timeout_with_the_fix(slurm_testbed, slurm):
    bed = slurm_testbed
    # the job waits in its setup line until Slurm's time limit (one minute, the least) ends it
    bed.write_config(executor="slurm", slurm={**SLURM_TEST_SETTINGS, "time": "1", "setup": ["sleep 600"]})
    started = bed.evaluate("--model-path", str(bed.checkpoint), "--detach")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("started run ")[1].split()[0]
    [job_id] = _jobs_of(bed.server_outputs / ".evalkit" / "runs")
    deadline = time.monotonic() + 60
    while "RUNNING" not in _squeue(slurm, f"--jobs={job_id}", "--format=%T") and time.monotonic() < deadline:
        time.sleep(0.2)
    status = _evalkit("status", run_id, "--config", str(bed.config))
    assert status.returncode == 0 and f"Slurm job {job_id}: RUNNING" in status.stdout, status.stdout + status.stderr

    attached = _evalkit("attach", run_id, "--config", str(bed.config))
    assert attached.returncode == SlurmJobEnded.exit_code, attached.stdout + attached.stderr
    assert f"Slurm job {job_id} ended TIMEOUT" in attached.stderr and "raise slurm.time" in attached.stderr
    assert "Traceback" not in attached.stderr
    # `logs -f` reads the run's events on the login node, where no driver ever ran: Slurm says how it ended
    followed = _evalkit("logs", "-f", run_id, "--config", str(bed.config))
    assert followed.returncode == SlurmJobEnded.exit_code, followed.stdout + followed.stderr
    assert f"Slurm job {job_id} ended TIMEOUT" in followed.stderr and "Traceback" not in followed.stderr


def test_a_job_whose_job_py_was_changed_while_it_waited_refuses_to_start_and_says_so(slurm_testbed, slurm,
                                                                                     tmp_path):
    bed = slurm_testbed
    go = tmp_path / "go"
    # the job waits in its setup line until the test has changed job.py: hours in a busy queue
    bed.write_config(executor="slurm", slurm={**SLURM_TEST_SETTINGS,
                                              "setup": [f"while [ ! -e '{go}' ]; do sleep 0.2; done"]})
    started = bed.evaluate("--model-path", str(bed.checkpoint), "--detach")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("started run ")[1].split()[0]
    job_py = bed.server_outputs / ".evalkit" / "job.py"
    job_py.write_text(job_py.read_text() + "\nopen('/tmp/evalkit-tampered', 'w')  # not evalkit's\n")
    go.touch()
    # the job's word first: an attach (or status) before it would make job.py evalkit's own again
    ended = bed.server_outputs / ".evalkit" / "runs" / run_id / "status.json"
    deadline = time.monotonic() + 120
    while not ended.exists() and time.monotonic() < deadline:
        time.sleep(0.2)

    attached = _evalkit("attach", run_id, "--config", str(bed.config))
    assert attached.returncode == RemoteStepFailed.exit_code, attached.stdout + attached.stderr
    assert f"error: evalkit will not run job.py in {job_py.parent}: changed since this Slurm job was submitted" \
        in attached.stderr
    assert "fix: evaluate again" in attached.stderr and "Traceback" not in attached.stderr
    status = _evalkit("status", run_id, "--config", str(bed.config))
    assert "changed since this Slurm job was submitted" in status.stdout, status.stdout + status.stderr
    assert not (bed.server_outputs / ".evalkit" / "runs" / run_id / "driver.json").exists()  # no driver ran
    again = bed.evaluate("--model-path", str(bed.checkpoint), "--detach")  # the fix: evalkit uploads job.py anew
    assert again.returncode == 0, again.stderr
    _evalkit("cancel", again.stdout.split("started run ")[1].split()[0], "--config", str(bed.config))


def _evalkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "COLUMNS": "400"}, stdin=subprocess.DEVNULL)


def test_ctrl_c_scancels_the_job_and_leaves_nothing_in_the_queue(slurm_testbed, slurm):
    bed = slurm_testbed
    bed.write_config(executor="slurm", slurm={**SLURM_TEST_SETTINGS, "setup": ["sleep 600"]})
    child = start_interruptible([sys.executable, str(ENTRY_SCRIPT), "--config", str(bed.config),
                                 "--model-path", str(bed.checkpoint)], cwd=bed.results_dir.parent,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = bed.server_outputs / ".evalkit" / "runs"
    deadline = time.monotonic() + 120
    while not (runs.exists() and _jobs_of(runs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    [job_id] = _jobs_of(runs)
    while "RUNNING" not in _squeue(slurm, f"--jobs={job_id}", "--format=%T") and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == INTERRUPTED_EXIT_CODE, err + out
    assert f"scancel ended Slurm job {job_id}" in out
    assert _squeue(slurm, f"--jobs={job_id}", "--format=%i") == ""  # neither pending nor running
    assert str(runs) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    [run_id] = _jobs_of(runs).values()
    assert json.loads((runs / run_id / "status.json").read_text())["state"] == "cancelled"
    assert not list(bed.server_outputs.rglob(".evalkit-lock"))  # the checkpoint is free again


def test_ctrl_c_with_three_models_scancels_all_their_jobs_running_or_pending(
        slurm_testbed, slurm, second_checkpoint, third_checkpoint):
    bed = slurm_testbed
    checkpoints = dict(zip(NAMES, (bed.checkpoint, second_checkpoint, third_checkpoint)))
    # each job waits in its setup line: two run on the two GPUs, the third waits for one
    bed.write_config(executor="slurm", slurm={**SLURM_TEST_SETTINGS, "setup": ["sleep 617"]},
                     models={name: {"path": str(path)} for name, path in checkpoints.items()})
    child = start_interruptible([sys.executable, str(ENTRY_SCRIPT), "--config", str(bed.config), "--model", "all"],
                                cwd=bed.results_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COLUMNS": "200"})
    try:
        runs = bed.server_outputs / ".evalkit" / "runs"
        deadline = time.monotonic() + 180
        states: list[str] = []
        while sorted(states) != ["PENDING", "RUNNING", "RUNNING"] and time.monotonic() < deadline:
            time.sleep(0.2)
            jobs = _jobs_of(runs) if runs.exists() else {}
            states = _squeue(slurm, f"--jobs={','.join(jobs)}", "--format=%T").split() if len(jobs) == 3 else []
        assert sorted(states) == ["PENDING", "RUNNING", "RUNNING"], states
        # `status` in a process of its own says where each job stands, in Slurm's words
        status = _evalkit("status", "--config", str(bed.config))
        assert status.returncode == 0, status.stderr
        # Slurm gives the waiting job its reason (Resources) at its next scheduling pass
        assert status.stdout.count(": RUNNING") == 2 and status.stdout.count(": PENDING") == 1, status.stdout

        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=180)
        assert child.returncode == INTERRUPTED_EXIT_CODE, err + out
        for job_id, run_id in jobs.items():
            assert f"cancelled run {run_id}: scancel ended Slurm job {job_id}" in out, out
            assert json.loads((runs / run_id / "status.json").read_text())["state"] == "cancelled"
        assert _squeue(slurm, f"--jobs={','.join(jobs)}", "--format=%i") == ""  # neither pending nor running
        processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "sleep 617" not in processes and str(runs) not in processes
        assert not [job_id for job_id in jobs if f"slurmstepd: [{job_id}." in processes], processes
        assert "Traceback" not in err
    finally:  # a failure above must not leave evalkit running (slurm_testbed cancels the jobs)
        if child.poll() is None:
            child.kill()
            child.communicate()


def test_status_in_a_fresh_process_names_how_slurm_ended_a_job_and_a_job_slurm_forgot(slurm_testbed, slurm):
    bed = slurm_testbed
    bed.write_config(executor="slurm", slurm={**SLURM_TEST_SETTINGS, "setup": ["sleep 600"]})
    started = bed.evaluate("--model-path", str(bed.checkpoint), "--detach")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("started run ")[1].split()[0]
    runs = bed.server_outputs / ".evalkit" / "runs"
    [job_id] = _jobs_of(runs)
    subprocess.run(["scancel", job_id], env={"PATH": "/usr/bin:/bin", **slurm.environment()}, check=True)
    deadline = time.monotonic() + 60
    while "CANCELLED" not in _squeue(slurm, f"--jobs={job_id}", "--format=%T") and time.monotonic() < deadline:
        time.sleep(0.2)
    status = _evalkit("status", run_id, "--config", str(bed.config))
    assert status.returncode == 0, status.stderr
    assert f"Slurm job {job_id} ended CANCELLED: it was cancelled by someone else" in status.stdout, status.stdout

    # as if slurmctld had forgotten the job (MinJobAge): squeue no longer lists it, and this
    # cluster keeps no accounting (sacct: "accounting storage is disabled"), so it is lost
    forgotten = str(int(job_id) + 100000)
    (runs / run_id / "slurm.json").write_text(json.dumps({"job_id": forgotten}))
    status = _evalkit("status", run_id, "--config", str(bed.config))
    assert f"Slurm job {forgotten} of run {run_id} left the queue and the run's files do not say how it ended" \
        in status.stdout, status.stdout
    attached = _evalkit("attach", run_id, "--config", str(bed.config))  # after slurm.lost_after (5 s)
    assert attached.returncode == SlurmJobLost.exit_code, attached.stdout + attached.stderr
    assert f"Slurm job {forgotten} of run {run_id} left the queue" in attached.stderr
    assert "Traceback" not in attached.stderr


def test_the_doctor_checks_the_login_nodes_slurm(slurm_testbed):
    from .test_doctor import EVERY_CHECK, checks, doctor

    bed = slurm_testbed
    run = doctor(bed, "--probe-job")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = checks(run)
    assert list(lines) == [*EVERY_CHECK, "Slurm commands", "Slurm answers", "Slurm partition", "Slurm probe job",
                           "Slurm lock across nodes"]
    assert lines["Slurm lock across nodes"][0] == "✓" and "could not take the lock" in lines["Slurm lock across nodes"][1]
    assert lines["Slurm partition"] == ("✓", "partition gpu: 1 nodes, GPUs per node: gpu:2")
    assert lines["Slurm probe job"][0] == "✓" and str(bed.checkpoint) in lines["Slurm probe job"][1]
    bed.write_config(executor="slurm", slurm={**SLURM_TEST_SETTINGS, "gpus_per_job": 3})
    run = doctor(bed)
    assert checks(run)["Slurm partition"][0] == "✗" and "at most 2 GPUs per node" in run.stdout


def test_the_doctors_gpu_line_is_the_compute_nodes_not_the_login_nodes(slurm_testbed):
    """The test bed's login node has no GPU; its partition has two (fake ones, for scheduling)."""
    from .test_doctor import checks, doctor

    bed = slurm_testbed
    lines = checks(doctor(bed, "--device", "cuda"))
    assert lines["GPU"] == ("✓", "on the compute nodes (sinfo), not this login node: "
                                 "partition gpu: 1 nodes, GPUs per node: gpu:2")
    # a job on the node gets one of them (CUDA_VISIBLE_DEVICES), but no nvidia-smi there lists it
    probed = doctor(bed, "--device", "cuda", "--probe-job")
    lines = checks(probed)
    assert lines["Slurm probe job"][0] == "✓", probed.stdout
    mark, found = lines["GPU"]
    assert mark == "✗" and found in {f"a job on a compute node got CUDA_VISIBLE_DEVICES={gpu}, but nvidia-smi there "
                                     "lists no GPU" for gpu in (0, 1)}, probed.stdout
