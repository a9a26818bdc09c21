"""Sweeps and matrices from the command line: the cells of a dry run, the flags that make no
sense with a sweep, and `results` across epochs (--best, --model, the trend)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalkit.cli import evaluate_command, main
from evalkit.errors import NothingEvaluated
from test_compare_cli import write_summary  # tests/cli is on sys.path, as for every test module there


@pytest.fixture(autouse=True)
def wide_console(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


def evaluate(*args: str):
    return CliRunner().invoke(evaluate_command, list(args), prog_name="distillation_model_evaluation.py")


def results_command(*args: str):
    return CliRunner().invoke(main, ["results", *args], prog_name="evalkit")


def test_a_matrix_dry_run_lists_its_cells_then_their_commands():
    result = evaluate("--dry-run", "--model-path", "/e/team/checkpoints/epoch_3.pt", "--dataset-name", "Flickr30k-CN",
                      "--dataset-name", "MUGE", "--split", "valid", "--split", "test", "--split", "valid")
    assert result.exit_code == 0, result.stderr
    assert "4 cells" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "team@epoch_3" in line and "/e/team" in line]
    assert [[part.strip() for part in row.split("│")[3:5]] for row in rows] == [["Flickr30k-CN", "valid"], ["Flickr30k-CN", "test"],
                                                  ["MUGE", "valid"], ["MUGE", "test"]]
    assert result.stdout.count("extract_features.py") == 4
    assert "/datasets/MUGE/lmdb/test/imgs" in result.stdout


def test_one_cell_dry_run_has_no_cell_table():
    result = evaluate("--dry-run", "--model-path", "/e/team/checkpoints/epoch_3.pt")
    assert result.exit_code == 0 and "cells" not in result.stdout


def test_label_with_a_directory_is_a_usage_error_before_connecting():
    result = evaluate("--dry-run", "--model-path", "experiments/team/checkpoints", "--label", "x",
                      "--host", "no-such-host-evalkit.invalid")
    assert result.exit_code == 2
    assert "--label names one checkpoint; each checkpoint of a directory or glob is labelled" in result.stderr


@pytest.fixture
def epochs_results(tmp_path) -> Path:
    results = tmp_path / "results"
    for label, r1 in (("team@epoch_10", 50.0), ("team@epoch_2", 40.0), ("team", 45.0), ("team@epoch_1", 30.0),
                      ("large@epoch_1", 20.0), ("large@epoch_2", 10.0)):
        write_summary(results, "Flickr30k-CN", "valid", label, r1)
    write_summary(results, "MUGE", "test", "team@epoch_1", 33.0)
    return results


def test_results_orders_epochs_marks_the_best_and_draws_the_trend(epochs_results):
    shown = results_command("--results-dir", str(epochs_results), "--format", "json")
    assert shown.exit_code == 0, shown.stderr
    flickr, muge = json.loads(shown.stdout)
    assert [(r["label"], r["experiment"], r["epoch"], r["best"]) for r in flickr["models"]] == [
        ("large@epoch_1", "large", 1, True), ("large@epoch_2", "large", 2, False),
        ("team@epoch_1", "team", 1, False), ("team@epoch_2", "team", 2, False),
        ("team@epoch_10", "team", 10, True), ("team", "team", None, False)]
    assert [(r["label"], r["best"]) for r in muge["models"]] == [("team@epoch_1", True)]
    table = results_command("--results-dir", str(epochs_results), "--dataset-name", "Flickr30k-CN")
    trend_lines = [line for line in table.stdout.splitlines() if "over" in line and "checkpoints" in line]
    assert trend_lines == ["large  █▁  63.33 → 60.00 over 2 checkpoints; best: large@epoch_1",
                           "team  ▁▅█▆  66.67 → 71.67 over 4 checkpoints; best: team@epoch_10"]


@pytest.mark.parametrize("args, labels", [
    (("--best",), [["large@epoch_1", "team@epoch_10"], ["team@epoch_1"]]),
    (("--model", "large"), [["large@epoch_1", "large@epoch_2"]]),
    (("--best", "--model", "team", "--split", "valid"), [["team@epoch_10"]]),
    (("--model", "team@epoch_2", "--model", "large@epoch_2"), [["large@epoch_2", "team@epoch_2"]]),
])
def test_results_best_and_model_filters(epochs_results, args, labels):
    shown = results_command("--results-dir", str(epochs_results), "--format", "json", *args)
    assert shown.exit_code == 0, shown.stderr
    assert [[row["label"] for row in document["models"]] for document in json.loads(shown.stdout)] == labels


@pytest.fixture
def training_folder_results(tmp_path) -> Path:
    """What a sweep of Chinese-CLIP's own folder keeps: epoch1 ... epoch11 and, when evaluated,
    epoch_latest.pt (label `team`) holding epoch 11's state and numbers; written in an order that
    puts epoch_latest.pt first."""
    results = tmp_path / "results"
    write_summary(results, "Flickr30k-CN", "valid", "team", 60.0, experiment="team", epoch=11, step=1100)
    for epoch in (10, 2, 11, 1, 9):
        write_summary(results, "Flickr30k-CN", "valid", f"team@epoch{epoch}", 60.0 if epoch == 11 else 10.0 + epoch,
                      experiment="team", epoch=epoch, step=epoch * 100)
    return results


def test_results_of_training_names_in_epoch_order_and_the_best_is_the_numbered_epoch(training_folder_results):
    shown = results_command("--results-dir", str(training_folder_results), "--format", "json")
    assert shown.exit_code == 0, shown.stderr
    assert [(r["label"], r["epoch"], r["step"], r["best"]) for r in json.loads(shown.stdout)[0]["models"]] == [
        ("team@epoch1", 1, 100, False), ("team@epoch2", 2, 200, False), ("team@epoch9", 9, 900, False),
        ("team@epoch10", 10, 1000, False), ("team@epoch11", 11, 1100, True), ("team", 11, 1100, False)]
    best = results_command("--results-dir", str(training_folder_results), "--format", "json", "--best")
    assert [row["label"] for row in json.loads(best.stdout)[0]["models"]] == ["team@epoch11"]


def test_results_for_an_unknown_model_says_so(epochs_results):
    shown = results_command("--results-dir", str(epochs_results), "--model", "nobody")
    assert shown.exit_code == NothingEvaluated.exit_code and "for nobody" in shown.stderr


@pytest.mark.parametrize("args, says", [
    (("--model-path", "/e/t/checkpoints", "--until-epoch", "3"), "--until-epoch ends a --watch: add --watch"),
    (("--model-path", "/e/t/checkpoints/epoch_1.pt", "--watch"), "--watch needs a checkpoints directory or a quoted glob"),
    (("--model-path", "/e/t/checkpoints", "--watch", "--dry-run"), "--watch runs until stopped: drop --dry-run"),
])
def test_watch_usage_errors_come_before_connecting(args, says):
    result = evaluate("--host", "no-such-host-evalkit.invalid", *args)
    assert result.exit_code == 2 and says in result.stderr, result.stderr
