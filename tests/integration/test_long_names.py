"""Names people choose, as long as a filesystem allows: an experiment folder of 80 Chinese
characters (240 bytes in UTF-8) is evaluated to the end, its numbers upstream's own, every file
evalkit names after it (the log, the server's output directory) within a file name's 255 bytes;
and one named after its hyperparameters in brackets, which rich would read as markup."""
from __future__ import annotations

import json

import pytest

from evalkit.comparison import METRICS
from evalkit.file_names import NAME_MAX

from .conftest import DATASETS, random_checkpoint, run_upstream_by_hand

pytestmark = pytest.mark.integration

SPEC = DATASETS[0]
EXPERIMENT = "知识蒸馏实验" * 13 + "二轮"  # 80 characters, 240 bytes


def test_an_experiment_of_80_chinese_characters_runs_to_the_end_with_upstreams_numbers(testbed, server_python,
                                                                                      tmp_path):
    assert len(EXPERIMENT) == 80 and len(EXPERIMENT.encode()) == 240
    checkpoint = random_checkpoint(server_python, testbed.datapath / "experiments" / EXPERIMENT / "checkpoints"
                                   / "epoch_latest.pt", seed=0)
    run = testbed.evaluate("--model-path", str(checkpoint), "--json", timeout=600)
    assert run.returncode == 0, run.stderr
    [row] = json.loads(run.stdout)["models"]
    assert row["label"] == EXPERIMENT and row["status"] == "ok"

    by_hand = run_upstream_by_hand(testbed, SPEC, tmp_path / "by-hand", checkpoint)
    folder = testbed.results_dir / SPEC.name / SPEC.split / EXPERIMENT
    for direction, result in by_hand.items():
        assert json.loads((folder / f"{direction}_results.json").read_text()) == result
        assert row["recall"][direction] == {key: result["scoreJson"][key] for key in METRICS}
    [log] = (testbed.results_dir / "logs").iterdir()
    [output_dir] = (testbed.server_outputs / SPEC.name / SPEC.split).iterdir()
    for name in (log.name, output_dir.name):
        assert len(name.encode()) <= NAME_MAX and name.startswith((EXPERIMENT[:20], f"{SPEC.name}-{SPEC.split}-"))
    assert "### step" in log.read_text(encoding="utf-8")


def test_an_experiment_named_with_brackets_is_evaluated_and_shown_as_typed(testbed, server_python):
    # exp[lr=1e-4] in a rich table title was the style tag [lr=1e-4], shown as "exp"; [/] crashed
    experiment = "exp[lr=1e-4]"
    checkpoint = random_checkpoint(server_python, testbed.datapath / "experiments" / experiment / "checkpoints"
                                   / "epoch_latest.pt", seed=0)
    run = testbed.evaluate("--model-path", str(checkpoint), timeout=600)
    assert run.returncode == 0, run.stderr
    assert f"Recall (%) — {experiment}" in run.stdout, run.stdout
    folder = testbed.results_dir / SPEC.name / SPEC.split / experiment
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["label"] == experiment and (folder / "text_to_image_results.json").is_file()
