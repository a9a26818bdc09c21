"""The step flow follows the user: `--step knn` and `recall` without --model-path evaluate the
checkpoint of this user's last extract step for the server, datapath, dataset and split (never a
colleague's later work), and only without one fall back to the server's latest extraction,
saying so. Split from test_step_by_step.py so that the parallel suite spreads its runs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.errors import OutputsNotReady

from .conftest import DATASETS, QUICK_SCRIPT, run_upstream_by_hand
from .step_runs import TEAM_LABEL, assert_clean_failure, results_of

pytestmark = pytest.mark.integration


def _flat(text: str) -> str:
    """TEXT as one line: a table's title wraps at the terminal's width."""
    return " ".join(text.split())


def _other_user(bed, home: Path) -> dict[str, str]:
    """Another person on the same server: a HOME and a results folder of their own (their laptop)."""
    shutil.copytree(bed.ssh_dir, home / ".ssh")
    return {**os.environ, "HOME": str(home)}


def test_knn_and_recall_evaluate_the_checkpoint_of_your_last_extract_step(testbed, second_checkpoint,
                                                                          third_checkpoint, tmp_path):
    spec = DATASETS[0]
    common = ("--datapath", str(testbed.datapath))
    extract = ("--step", "extract", *common, "--model-path")
    assert "extract image + text features" in testbed.quick(*extract, str(testbed.checkpoint)).stdout  # A
    assert "extract image + text features" in testbed.quick(*extract, str(second_checkpoint)).stdout    # B
    again = testbed.quick(*extract, str(testbed.checkpoint))                                         # A, reused
    assert again.returncode == 0 and "reusing the features extracted" in again.stdout, again.stderr

    # Meanwhile a colleague extracts C on the shared server, from their own laptop.
    colleague = subprocess.run(
        [sys.executable, str(QUICK_SCRIPT), "--config", str(testbed.config), *extract, str(third_checkpoint),
         "--results-dir", str(tmp_path / "colleague results")],
        env=_other_user(testbed, tmp_path / "colleague home"), capture_output=True, text=True, timeout=300)
    assert colleague.returncode == 0, colleague.stderr

    knn = testbed.quick("--step", "knn", *common)
    recall = testbed.quick("--step", "recall", *common)
    for run in (knn, recall):
        assert run.returncode == 0, run.stderr + run.stdout
        assert f"using the checkpoint of your last extract step: {testbed.checkpoint}" in run.stdout
    assert f"Recall (%) — {TEAM_LABEL} (your last extract step)" in _flat(recall.stdout)  # the title may wrap
    assert f"checkpoint: {testbed.checkpoint}" in recall.stdout
    summary = json.loads((testbed.results_dir / spec.name / spec.split / TEAM_LABEL / "summary.json").read_text())
    assert (summary["checkpoint"], summary["checkpoint_chosen_by"]) == (str(testbed.checkpoint),
                                                                         "your last extract step")
    by_hand = run_upstream_by_hand(testbed, spec, tmp_path / "by hand")
    pulled = {name.removesuffix("_results.json"): result
              for name, result in results_of(testbed, spec, TEAM_LABEL).items()}
    assert pulled == by_hand  # A's numbers, as upstream computes them
    for other in ("large_distill", "baseline_rn50"):
        assert not (testbed.results_dir / spec.name / spec.split / other).exists()


def test_without_an_extract_step_of_yours_the_servers_latest_is_used_and_the_table_says_so(
        testbed, second_checkpoint, tmp_path):
    common = ("--datapath", str(testbed.datapath))
    for checkpoint in (testbed.checkpoint, second_checkpoint):
        run = testbed.quick("--step", "extract", *common, "--model-path", str(checkpoint))
        assert run.returncode == 0, run.stderr
    elsewhere = ("--results-dir", str(tmp_path / "another results folder"))  # no extract step on record there
    knn = testbed.quick("--step", "knn", *common, *elsewhere)
    recall = testbed.quick("--step", "recall", *common, *elsewhere, "--json")
    assert knn.returncode == recall.returncode == 0, knn.stderr + recall.stderr
    for run in (knn.stdout, recall.stderr):
        assert "no extract step of yours is on record" in run
        assert f"using the most recent extraction on the server, by anyone: {second_checkpoint}" in run
    assert "Recall (%) — large_distill (the server's most recent extraction)" in _flat(recall.stderr)
    assert "not named by you" in recall.stderr
    [row] = json.loads(recall.stdout)["models"]
    assert (row["checkpoint"], row["checkpoint_chosen_by"]) == (str(second_checkpoint),
                                                                "the server's most recent extraction")
    assert row["provenance"]["checkpoint"]["path"] == str(second_checkpoint)  # gathered once it was chosen

    # Naming the first checkpoint evaluates the first, from its own directory.
    named = testbed.quick("--step", "recall", *common, "--model-path", str(testbed.checkpoint))
    assert_clean_failure(named, OutputsNotReady.exit_code, "no text→image KNN predictions", "--step knn")
