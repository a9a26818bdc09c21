"""Faults and bad input on the real test bed: a server without SFTP, a driver that dies or
crashes, a results folder that cannot be written, labels that would replace another
checkpoint's results, and results replaced on the server after their run ended."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalkit.errors import ConfigError, DriverGone, LocalWriteError, OutputsNotReady
from evalkit.testbed.sshd import LoopbackSshd

from .conftest import DATASETS, REPO
from .server_runs import launch_one_shot, processes_of, run_dirs, wait_for_extraction

pytestmark = pytest.mark.integration

SPEC = DATASETS[0]
TEAM = "muge_finetune_rn50_rbt3_team_distill"


def _evalkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def _assert_clean_failure(run: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert run.returncode == code, run.stderr + run.stdout
    assert "Traceback" not in run.stderr
    for phrase in phrases:
        assert phrase in run.stderr, run.stderr


def _detached(bed, *args: str) -> str:
    started = bed.evaluate("--datapath", str(bed.datapath), "--model-path", str(bed.checkpoint), "--detach", *args)
    assert started.returncode == 0, started.stderr
    return started.stdout.split("started run ")[1].split()[0]


def _kill_driver(run_dir: Path) -> None:
    os.kill(json.loads((run_dir / "driver.json").read_text())["pid"], signal.SIGKILL)


def _clean_up(bed, run_id: str) -> None:
    """The killed driver's steps go on, orphaned: stop them, as a user would."""
    _evalkit("cancel", run_id, "--config", str(bed.config), "--grace", "1")
    assert processes_of(run_id) == []


# --- a server without SFTP -------------------------------------------------------------------

@pytest.fixture
def sshd_without_sftp(testbed, tmp_path):
    with LoopbackSshd(tmp_path / "sshd without sftp", sftp_server=None) as server:
        server.write_client_files(testbed.ssh_dir)  # the alias now leads there
        yield server


def test_a_server_without_sftp_serves_a_run_its_attach_status_logs_and_cancel(testbed, sshd_without_sftp):
    # a run is followed on its event stream, and everything else asks job.py through the
    # bootstrap on exec channels: no part of a run needs SFTP
    run_id = _detached(testbed, "--skip-image-to-text")
    config = ("--config", str(testbed.config))
    listed = _evalkit("status", *config)
    assert listed.returncode == 0 and run_id in listed.stdout, listed.stderr
    attached = _evalkit("attach", run_id, *config, timeout=300)
    assert attached.returncode == 0, attached.stderr
    assert (testbed.results_dir / SPEC.name / SPEC.split / TEAM / "text_to_image_results.json").exists()
    logged = _evalkit("logs", run_id, *config)
    assert logged.returncode == 0 and "### step extract" in logged.stdout, logged.stderr
    cancelled = _evalkit("cancel", run_id, *config, "--grace", "1")
    assert "Traceback" not in cancelled.stderr and "SFTP" not in cancelled.stdout + cancelled.stderr, cancelled.stderr
    assert processes_of(run_id) == []


def test_logs_follow_works_without_sftp(testbed, sshd_without_sftp):
    # `logs --follow` reads the run's event stream, on an exec channel, as a followed run does
    run_id = _detached(testbed, "--skip-image-to-text")
    followed = _evalkit("logs", run_id, "--follow", "--config", str(testbed.config), timeout=300)
    assert followed.returncode == 0, followed.stderr
    assert "Traceback" not in followed.stderr and "SFTP" not in followed.stderr, followed.stderr
    assert "### step extract" in followed.stdout and followed.stdout.endswith(" exited 0\n"), followed.stdout
    at_once = _evalkit("logs", run_id, "--config", str(testbed.config))  # every step, now the run has ended
    assert at_once.returncode == 0 and _headings(at_once.stdout) == _headings(followed.stdout), at_once.stderr


def test_the_doctor_passes_every_check_on_a_server_without_sftp(testbed, sshd_without_sftp):
    # its probe (and the scripts a run needs) made current by the bootstrap's digest exchange, on
    # the probe's own exec channel, as every run does: no SFTP session
    doctor = _evalkit("doctor", "--config", str(testbed.config), "--model-path", str(testbed.checkpoint), timeout=300)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "✗" not in doctor.stdout and "SFTP" not in doctor.stdout + doctor.stderr, doctor.stdout
    assert "✓ python: " in doctor.stdout and "✓ checkpoint: " in doctor.stdout, doctor.stdout
    scripts = testbed.server_outputs / ".evalkit"
    assert {"doctor_probe.py", "zeroshot.py", "job.py"} <= {path.name for path in scripts.iterdir()}


def _headings(logs: str) -> list[str]:
    """Each step's start and end lines in `logs`' output (between them, its stdout and stderr)."""
    return [line for line in logs.splitlines() if line.startswith("### step ")]


def test_debians_own_sftp_server_program_serves_a_whole_run(testbed, tmp_path):
    with LoopbackSshd(tmp_path / "sshd", sftp_server="/usr/lib/openssh/sftp-server") as server:
        server.write_client_files(testbed.ssh_dir)
        run = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                               "--skip-image-to-text")
    assert run.returncode == 0, run.stderr
    assert (testbed.results_dir / SPEC.name / SPEC.split / TEAM / "text_to_image_results.json").exists()


# --- the driver dies or crashes --------------------------------------------------------------

def test_a_killed_driver_ends_the_attached_client_with_its_own_exit_code(testbed):
    client = launch_one_shot(testbed)
    run_dir = wait_for_extraction(testbed)
    _kill_driver(run_dir)
    out, err = client.communicate(timeout=90)  # the driver is asked after at most ~10 s
    assert client.returncode == DriverGone.exit_code, err + out
    assert "the run's driver on the server is gone during step 'extract'" in err
    _clean_up(testbed, run_dir.name)


def test_attach_and_logs_follow_notice_a_killed_driver(testbed):
    run_id = _detached(testbed)
    run_dir = wait_for_extraction(testbed)
    _kill_driver(run_dir)
    attached = _evalkit("attach", run_id, "--config", str(testbed.config), timeout=90)
    _assert_clean_failure(attached, DriverGone.exit_code, "the run's driver on the server is gone")
    followed = _evalkit("logs", "-f", run_id, "--config", str(testbed.config), timeout=90)
    _assert_clean_failure(followed, DriverGone.exit_code, "the run's driver on the server is gone")
    _clean_up(testbed, run_id)


def test_a_crashed_driver_is_reported_with_its_error(testbed):
    run_id = _detached(testbed)
    run_dir = wait_for_extraction(testbed)
    _kill_driver(run_dir)
    (run_dir / "status.json").write_text(json.dumps({"state": "crashed", "error": "MemoryError in the driver"}))
    attached = _evalkit("attach", run_id, "--config", str(testbed.config), timeout=90)
    _assert_clean_failure(attached, DriverGone.exit_code, "crashed on the server", "MemoryError in the driver")
    _clean_up(testbed, run_id)


# --- a run never outlives its record ---------------------------------------------------------

def test_an_unwritable_results_folder_fails_before_the_run_starts(testbed, tmp_path):
    blocker = tmp_path / "not a folder"
    blocker.write_text("a file where the results folder's parent should be")
    testbed.write_config(results_dir=str(blocker / "results"))
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    _assert_clean_failure(run, LocalWriteError.exit_code, f"cannot write {blocker / 'results' / 'runs'}")
    assert run_dirs(testbed) == []  # no run holds the GPU without a record to attach to or cancel
    assert not list(tmp_path.rglob(".*.json.*"))  # no temporary file left behind


def test_a_started_run_has_a_record_before_anything_else_can_fail(testbed):
    run_id = _detached(testbed)
    record = json.loads((testbed.results_dir / "runs" / f"{run_id}.json").read_text())
    assert (record["state"], record["plan"]["checkpoint"]) == ("started", str(testbed.checkpoint))
    assert _evalkit("attach", run_id, "--config", str(testbed.config), timeout=300).returncode == 0


# --- labels never let one checkpoint's results replace another's ------------------------------

def _epoch(bed, experiment_dir: Path, name: str) -> Path:
    path = experiment_dir / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.link(bed.checkpoint, path)
    return path


def test_epochs_of_one_experiment_keep_their_own_results_and_a_namesake_is_refused(testbed, tmp_path):
    experiment = testbed.datapath / "experiments" / f"sweep-{tmp_path.name}"
    for name in ("epoch_5.pt", "epoch_latest.pt"):
        run = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(_epoch(testbed, experiment, name)),
                               "--skip-image-to-text")
        assert run.returncode == 0, run.stderr
    kept = testbed.results_dir / SPEC.name / SPEC.split
    assert {p.name for p in kept.iterdir() if p.name.startswith("sweep-")} == {experiment.name,
                                                                            f"{experiment.name}@epoch_5"}

    namesake = _epoch(testbed, tmp_path / "elsewhere" / experiment.name, "epoch_latest.pt")
    refused = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(namesake),
                               "--skip-image-to-text")
    _assert_clean_failure(refused, ConfigError.exit_code, f"the label {experiment.name!r} already holds the results",
                          str(experiment / "checkpoints" / "epoch_latest.pt"), str(namesake), "--label")
    labelled = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(namesake),
                                "--skip-image-to-text", "--label", "elsewhere")
    assert labelled.returncode == 0, labelled.stderr
    assert json.loads((kept / "elsewhere" / "summary.json").read_text())["checkpoint"] == str(namesake)


def test_a_run_of_one_direction_leaves_no_stale_result_of_the_other(testbed):
    common = ("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert testbed.evaluate(*common).returncode == 0
    one_way = testbed.evaluate(*common, "--skip-image-to-text")
    assert one_way.returncode == 0, one_way.stderr
    folder = testbed.results_dir / SPEC.name / SPEC.split / TEAM
    assert sorted(p.name for p in folder.iterdir()) == ["query_hits.json", "summary.json", "text_to_image_results.json"]
    assert list(json.loads((folder / "summary.json").read_text())["recall"]) == ["text_to_image"]
    hits = json.loads((folder / "query_hits.json").read_text())
    assert "text_to_image" in hits and "image_to_text" not in hits


def test_attaching_to_an_old_run_never_pulls_a_later_runs_results(testbed):
    first = _detached(testbed)
    assert _evalkit("attach", first, "--config", str(testbed.config), timeout=300).returncode == 0
    time.sleep(1.1)  # SFTP gives whole seconds: the later run's results must be visibly later
    later = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert later.returncode == 0, later.stderr
    again = _evalkit("attach", first, "--config", str(testbed.config), timeout=300)
    _assert_clean_failure(again, OutputsNotReady.exit_code, f"results of run {first} were replaced by a later run")
