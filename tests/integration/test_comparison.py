"""TEAM / Large / baseline side by side on the real test bed: each model's recall is its own
upstream run's, the runs really overlap with --gpus, a broken model is one failed row, and the
shell loop over --model-path gives the same numbers."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from evalkit.comparison import METRICS
from evalkit.errors import ComparisonIncomplete, MissingInput

from .conftest import DATASETS, REPO, run_upstream_by_hand

pytestmark = pytest.mark.integration

NAMES = ("team", "large", "baseline")


@pytest.fixture
def registry(testbed, second_checkpoint, third_checkpoint) -> dict[str, Path]:
    checkpoints = dict(zip(NAMES, (testbed.checkpoint, second_checkpoint, third_checkpoint)))
    testbed.write_config(models={name: {"path": str(path)} for name, path in checkpoints.items()})
    return checkpoints


def _interval(row: dict) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(row["started_at"]), datetime.fromisoformat(row["finished_at"])


def test_three_models_in_parallel_each_equal_their_own_upstream_run(testbed, registry, tmp_path):
    spec = DATASETS[0]
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model", "team", "--model", "large",
                           "--model", "baseline", "--gpus", "0,1,2", "--json", timeout=600)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)  # stdout is the JSON document and nothing else
    folder = testbed.results_dir / spec.name / spec.split
    assert json.loads((folder / "comparison.json").read_text()) == document

    rows = {row["label"]: row for row in document["models"]}
    assert list(rows) == list(NAMES) and all(row["status"] == "ok" for row in rows.values())
    for name, checkpoint in registry.items():
        by_hand = run_upstream_by_hand(testbed, spec, tmp_path / name, checkpoint)
        pulled = {d: json.loads((folder / name / f"{d}_results.json").read_text()) for d in by_hand}
        assert pulled == by_hand, name  # no cross-talk: each model's own numbers, exactly
        for direction, result in by_hand.items():
            assert rows[name]["recall"][direction] == {key: result["scoreJson"][key] for key in METRICS}

    intervals = sorted(_interval(row) for row in rows.values())
    assert intervals[1][0] < intervals[0][1], "the runs did not overlap"

    assert document["baseline"] == "baseline"
    assert rows["baseline"]["delta"] is None and rows["team"]["delta"] is not None
    table = list(csv.DictReader((folder / "comparison.csv").open(encoding="utf-8")))
    assert [row["model"] for row in table] == list(NAMES)
    assert float(table[0]["t2i_r1"]) == rows["team"]["recall"]["text_to_image"]["r1"]
    markdown = (folder / "comparison.md").read_text(encoding="utf-8")
    assert markdown.count("\n| ") == 4 and "(±x.xx) against baseline" in markdown
    # the table is on stderr with --json (at 80 columns, one table per direction: "text→image recall (%)")
    assert "recall (%)" in run.stderr.lower()

    # The shell loop over the same checkpoints, one --model-path at a time: the same numbers.
    for checkpoint in registry.values():
        loop = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(checkpoint), "--json")
        assert loop.returncode == 0, loop.stderr
        [row] = json.loads(loop.stdout)["models"]
        label = {path: name for name, path in registry.items()}[checkpoint]
        assert row["recall"] == rows[label]["recall"]


def test_a_broken_checkpoint_among_good_ones_is_one_failed_row(testbed, registry):
    spec = DATASETS[0]
    missing = testbed.datapath / "experiments" / "huge_distill" / "checkpoints" / "epoch_latest.pt"
    testbed.write_config(models={"team": {"path": str(registry["team"])}, "huge": {"path": str(missing)}})
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model", "all")
    assert run.returncode == ComparisonIncomplete.exit_code, run.stderr
    assert "1 of 2 models failed: huge (exit 12)" in run.stderr
    assert f"huge failed (exit {MissingInput.exit_code}): checkpoint not found" in run.stdout
    document = json.loads((testbed.results_dir / spec.name / spec.split / "comparison.json").read_text())
    assert [(row["label"], row["status"]) for row in document["models"]] == [("team", "ok"), ("huge", "failed")]
    assert (testbed.results_dir / spec.name / spec.split / "team" / "summary.json").exists()
    assert not (testbed.results_dir / spec.name / spec.split / "huge").exists()


def test_results_shows_the_comparison_without_connecting(testbed, registry):
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model", "team", "--model", "baseline")
    assert run.returncode == 0, run.stderr
    shown = subprocess.run([sys.executable, "-m", "evalkit", "results", "--config", str(testbed.config),
                            "--format", "markdown"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "Recall (%) on Flickr30k-CN valid; (±x.xx) against baseline"
    assert "| team |" in shown.stdout and "| baseline |" in shown.stdout
