"""A sweep on the real test bed: a checkpoints directory holding two epochs and an
epoch_latest.pt with the last epoch's bytes (written separately, as training does), on two
datasets and both splits, through a two-GPU queue. The alias is evaluated once, the cells a
dataset lacks are failed rows while the others finish (exit 14), each good cell's recall is
upstream's own, and the comparison across epochs marks the best."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalkit.comparison import METRICS
from evalkit.errors import INTERRUPTED_EXIT_CODE, ComparisonIncomplete, MissingInput

from .conftest import DATASETS, ENTRY_SCRIPT, REPO, run_upstream_by_hand, start_interruptible
from .server_runs import assert_no_starter_left, ctrl_c_once, processes_of, run_dirs, starters_of, \
    wait_for_extraction

pytestmark = pytest.mark.integration


@pytest.fixture
def experiment(testbed, second_checkpoint, tmp_path):
    folder = tmp_path / "实验 sweep" / "experiments" / "sweep_exp" / "checkpoints"
    folder.mkdir(parents=True)
    os.link(testbed.checkpoint, folder / "epoch_1.pt")
    os.link(second_checkpoint, folder / "epoch_2.pt")
    shutil.copyfile(second_checkpoint, folder / "epoch_latest.pt")  # its own inode and mtime: same bytes
    return folder


def test_a_directory_sweep_over_two_datasets_on_a_queue(testbed, experiment, second_checkpoint, tmp_path):
    matrix = ("--dataset-name", DATASETS[0].name, "--dataset-name", DATASETS[1].name,
              "--split", "valid", "--split", "test")
    dry = testbed.evaluate("--model-path", str(experiment.parent), *matrix, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{experiment}: 2 checkpoints" in dry.stderr
    assert "alias: epoch_latest.pt has the same content as epoch_2.pt: evaluated once, as epoch_2.pt" in dry.stderr
    assert "8 cells" in dry.stdout and dry.stdout.count("extract_features.py") == 8

    run = testbed.evaluate("--model-path", str(experiment / "epoch_*.pt"), *matrix, "--gpus", "0,1", "--json",
                           timeout=900)
    assert run.returncode == ComparisonIncomplete.exit_code, run.stderr
    assert "4 of 8 models failed" in run.stderr
    documents = {(d["dataset"], d["split"]): d for d in json.loads(run.stdout)}
    assert set(documents) == {(spec.name, split) for spec in DATASETS for split in ("valid", "test")}
    for spec in DATASETS:
        other = "test" if spec.split == "valid" else "valid"
        failed = documents[(spec.name, other)]["models"]
        assert [(r["status"], r["exit_code"]) for r in failed] == [("failed", MissingInput.exit_code)] * 2
        rows = documents[(spec.name, spec.split)]["models"]
        assert [(r["label"], r["experiment"], r["epoch"], r["status"]) for r in rows] == [
            ("sweep_exp@epoch_1", "sweep_exp", 1, "ok"), ("sweep_exp@epoch_2", "sweep_exp", 2, "ok")]
        assert sum(r["best"] for r in rows) == 1
        folder = testbed.results_dir / spec.name / spec.split
        assert json.loads((folder / "comparison.json").read_text())["models"] == rows
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["sweep_exp@epoch_1", "sweep_exp@epoch_2"]
        # upstream by hand for one cell per dataset, together covering both checkpoints
        index = DATASETS.index(spec)
        row, checkpoint = rows[index], (testbed.checkpoint, second_checkpoint)[index]
        by_hand = run_upstream_by_hand(testbed, spec, tmp_path / f"by-hand-{index}", checkpoint)
        for direction, result in by_hand.items():
            assert row["recall"][direction] == {key: result["scoreJson"][key] for key in METRICS}, row["label"]

    best = subprocess.run([sys.executable, "-m", "evalkit", "results", "--config", str(testbed.config), "--best",
                           "--model", "sweep_exp", "--format", "json"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert best.returncode == 0, best.stderr
    assert [[r["best"] for r in d["models"]] for d in json.loads(best.stdout)] == [[True], [True]]

    empty = experiment.parent / "empty"
    empty.mkdir()
    nothing = testbed.evaluate("--model-path", str(empty))
    assert nothing.returncode == MissingInput.exit_code
    assert f"error: no checkpoint (*.pt, *.pth) in the directory {empty} on the server" in nothing.stderr


def test_one_failing_cell_of_a_queue_is_its_row_and_a_rerun_runs_only_what_changed(testbed, second_checkpoint,
                                                                                   tmp_path):
    folder = tmp_path / "queue" / "experiments" / "queue_exp" / "checkpoints"
    folder.mkdir(parents=True)
    os.link(testbed.checkpoint, folder / "epoch_1.pt")
    os.link(second_checkpoint, folder / "epoch_2.pt")
    (folder / "epoch_3.pt").write_bytes(b"not a checkpoint: training died while saving it")
    sweep = ("--model-path", str(folder), "--gpus", "0,1", "--json")
    first = testbed.evaluate(*sweep, timeout=900)
    assert first.returncode == ComparisonIncomplete.exit_code, first.stderr
    assert "1 of 3 models failed: queue_exp@epoch_3" in first.stderr
    rows = json.loads(first.stdout)["models"]
    assert [(r["label"], r["status"], r["reused"]) for r in rows] == [
        ("queue_exp@epoch_1", "ok", False), ("queue_exp@epoch_2", "ok", False), ("queue_exp@epoch_3", "failed", False)]
    logs = sorted((testbed.results_dir / "logs").iterdir())
    assert len(logs) == 2

    # the same sweep again: the two good cells are unchanged (checkpoint, dataset, commands, their
    # results kept), so only the failed one runs again; their rows are that run's, marked reused
    again = testbed.evaluate(*sweep, timeout=900)
    assert again.returncode == ComparisonIncomplete.exit_code, again.stderr
    kept = json.loads(again.stdout)["models"]
    assert [(r["label"], r["status"], r["reused"]) for r in kept] == [
        ("queue_exp@epoch_1", "ok", True), ("queue_exp@epoch_2", "ok", True), ("queue_exp@epoch_3", "failed", False)]
    assert [(r["run_id"], r["recall"]) for r in kept[:2]] == [(r["run_id"], r["recall"]) for r in rows[:2]]
    assert f"= queue_exp@epoch_1: unchanged since run {rows[0]['run_id']}, its numbers kept" in again.stderr
    assert sorted((testbed.results_dir / "logs").iterdir()) == logs  # nothing evaluated again

    os.utime(folder / "epoch_2.pt")  # touched by training: evaluated again, the other kept
    forced = testbed.evaluate("--model-path", str(folder / "epoch_[12].pt"), "--json", timeout=900)
    assert forced.returncode == 0, forced.stderr
    assert [r["reused"] for r in json.loads(forced.stdout)["models"]] == [True, False]
    reevaluated = testbed.evaluate("--model-path", str(folder / "epoch_[12].pt"), "--json", "--reevaluate",
                                   timeout=900)
    assert reevaluated.returncode == 0, reevaluated.stderr
    assert [r["reused"] for r in json.loads(reevaluated.stdout)["models"]] == [False, False]


def _gpu_phases(results_dir) -> list[tuple[float, float, float]]:
    """Each run's (first GPU step started, last GPU step ended, run ended), by the server's own
    files (the test bed's server is this machine), in the order the runs started."""
    from evalkit.plan import GPU_STEPS
    phases = []
    for path in (results_dir / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        if "server_run_dir" not in record:
            continue  # evaluated-cells.json
        names = [step["name"] for step in record["plan"]["steps"]]
        on_gpu = [index for index, name in enumerate(names) if name in GPU_STEPS]
        run = record["server_run_dir"]
        phases.append((os.stat(f"{run}/step-{on_gpu[0]}.started").st_mtime,
                       os.stat(f"{run}/step-{on_gpu[-1]}.exit").st_mtime,
                       os.stat(f"{run}/status.json").st_mtime))
    return sorted(phases)


def test_on_one_gpu_the_next_cell_starts_as_the_gpu_frees_up_never_beside_a_gpu_step(testbed, experiment):
    """The next cell's checks run while the one before it still runs; it starts when that one's
    last GPU step has ended, while its recall (on the CPU) still runs; two cells' GPU steps never
    overlap. Each cell's numbers are its own (a run alone gives the same)."""
    run = testbed.evaluate("--model-path", str(experiment), "--json", timeout=900)
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)["models"]
    assert [r["label"] for r in rows] == ["sweep_exp@epoch_1", "sweep_exp@epoch_2"]
    (first_gpu, first_gpu_done, first_end), (second_gpu, second_gpu_done, second_end) = _gpu_phases(testbed.results_dir)
    assert first_gpu_done <= second_gpu, "the second cell's GPU steps began beside the first's"
    assert second_gpu < first_end, "the second cell waited for the first cell's recall"
    assert stdout_order(run.stderr + run.stdout) == ["[1/2] sweep_exp@epoch_1", "[2/2] sweep_exp@epoch_2"]

    testbed.results_dir = testbed.results_dir.parent / "alone"
    testbed.write_config()
    alone = testbed.evaluate("--model-path", str(experiment / "epoch_2.pt"), "--json", "--force-extraction",
                             timeout=600)
    assert alone.returncode == 0, alone.stderr
    assert json.loads(alone.stdout)["models"][0]["recall"] == rows[1]["recall"]


def stdout_order(text: str) -> list[str]:
    # a model's header: "[i/N] label  (checkpoint) ───", or the label's rule with the checkpoint on
    # the line below when both do not fit
    return [line.split("  (")[0].rstrip(" ─") for line in text.splitlines()
            if line.startswith("[") and "] sweep_exp" in line]


def test_ctrl_c_cancels_the_running_cell_and_the_one_waiting_for_its_gpu_never_starts(testbed, experiment):
    sweep = start_interruptible([sys.executable, str(ENTRY_SCRIPT), "--config", str(testbed.config), "--model-path",
                                 str(experiment)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=testbed.results_dir.parent, stdin=subprocess.DEVNULL)

    def next_cell_waiting() -> Path:
        run_dir = wait_for_extraction(testbed, timeout=300)
        deadline = time.monotonic() + 60
        while len(starters_of(testbed)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        # the running cell's starter, and the next cell's, which made its checks and waits for the GPU
        assert len(starters_of(testbed)) == 2
        return run_dir

    run_dir, stdout, stderr = ctrl_c_once(sweep, next_cell_waiting)
    assert sweep.returncode == INTERRUPTED_EXIT_CODE, stderr
    assert f"cancelled run {run_dir.name}: no process of it remains on the server" in stdout
    assert processes_of(run_dir.name) == []
    assert run_dirs(testbed) == [run_dir]  # the waiting cell was never launched
    assert_no_starter_left(testbed)
