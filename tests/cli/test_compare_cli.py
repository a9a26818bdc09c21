"""Several models from the command line: the registry, --model, --gpus, and `evalkit results`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalkit.cli import evaluate_command, main, quick_command
from evalkit.errors import ConfigError, NothingEvaluated

REGISTRY = """\
models:
  team: {path: experiments/team/checkpoints/epoch_latest.pt}
  large: {path: experiments/large/checkpoints/epoch_latest.pt, vision_model: ViT-L-14}
  baseline: {path: /abs/baseline.pt}
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "evalkit.yaml"
    path.write_text(REGISTRY, encoding="utf-8")
    return path


def evaluate(*args: str):
    return CliRunner().invoke(evaluate_command, list(args), prog_name="distillation_model_evaluation.py")


def extract_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "extract_features.py" in line]


def test_model_all_plans_every_registered_checkpoint_with_its_own_models(config):
    result = evaluate("--config", str(config), "--model", "all", "--dry-run")
    assert result.exit_code == 0, result.stderr
    team, large, baseline = extract_lines(result.stdout)
    assert "--resume /root/autodl-tmp/datapath/experiments/team/checkpoints/epoch_latest.pt" in team
    assert "--vision-model ViT-L-14" in large and "--vision-model ViT-B-16" in team
    assert "--resume /abs/baseline.pt" in baseline


def test_a_flag_overrides_the_registry_entry(config):
    result = evaluate("--config", str(config), "--model", "large", "--vision-model", "ViT-H-14", "--dry-run")
    assert "--vision-model ViT-H-14" in extract_lines(result.stdout)[0]


def test_model_and_model_path_together_evaluate_both(config):
    result = evaluate("--config", str(config), "--model", "team", "--model-path", "/x/other.pt", "--dry-run")
    assert [line.split("--resume ")[1].split()[0] for line in extract_lines(result.stdout)] == [
        "/root/autodl-tmp/datapath/experiments/team/checkpoints/epoch_latest.pt", "/x/other.pt"]


@pytest.mark.parametrize("command", [evaluate_command, quick_command])
def test_an_unknown_model_name_lists_the_registered_ones(config, command):
    args = ["--config", str(config), "--model", "tema"] + (["--step", "extract"] if command is quick_command else [])
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2
    assert "unknown model 'tema'" in result.stderr and "team, large, baseline" in result.stderr


def test_model_all_without_a_registry_says_how_to_make_one():
    result = evaluate("--model", "all", "--dry-run")
    assert result.exit_code == 2 and "models:" in result.stderr


def test_two_names_for_one_checkpoint_are_refused(config):
    result = evaluate("--config", str(config), "--model", "baseline", "--model-path", "/abs/baseline.pt", "--dry-run")
    assert result.exit_code == ConfigError.exit_code
    assert "'baseline' and 'baseline' are the same checkpoint" in result.stderr


@pytest.mark.parametrize("value", ["0,,1", "a", "-1", "0,0"])
def test_bad_gpus_exit_2_naming_the_option(value):
    result = evaluate("--gpus", value, "--model-path", "x.pt", "--dry-run")
    assert result.exit_code == 2 and "--gpus" in result.stderr


# --- python -m evalkit results ------------------------------------------------------------------

def write_summary(results: Path, dataset: str, split: str, label: str, r1: float, **placed) -> None:
    """LABEL's summary.json as an evaluation writes it: EXP@STEM is EXP's STEM.pt, EXP its
    epoch_latest.pt; PLACED (experiment, epoch, step) as the evaluation records them (left out:
    a summary kept before they were recorded)."""
    folder = results / dataset / split / label
    folder.mkdir(parents=True)
    experiment, _, stem = label.partition("@")
    recall = {"r1": r1, "r5": 80.0, "r10": 90.0, "mean_recall": (r1 + 170) / 3}
    (folder / "summary.json").write_text(json.dumps({
        "label": label, "checkpoint": f"/d/experiments/{experiment}/checkpoints/{stem or 'epoch_latest'}.pt",
        "recall": {"text_to_image": recall, "image_to_text": recall}, **placed,
        "server_output_dir": f"/out/{label}", "timestamp": "2026-11-27T00:00:00+00:00"}))


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    for label, r1 in (("zeta", 40.0), ("baseline", 45.0), ("team", 50.0)):
        write_summary(root, "Flickr30k-CN", "valid", label, r1)
    write_summary(root, "MUGE", "test", "team", 30.0)
    return root


def results_command(*args: str):
    return CliRunner().invoke(main, ["results", *args])


def test_results_compares_everything_evaluated_so_far_without_connecting(results):
    shown = results_command("--results-dir", str(results))
    assert shown.exit_code == 0, shown.stderr
    assert "Flickr30k-CN valid" in shown.stdout and "MUGE test" in shown.stdout
    assert "50.00 (+5.00)" in shown.stdout  # team against baseline


def test_results_lists_registered_models_first_in_registry_order(results, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("models:\n  team: {path: a.pt}\n  baseline: {path: b.pt}\n")
    shown = results_command("--config", str(config), "--results-dir", str(results), "--dataset-name",
                            "Flickr30k-CN", "--format", "json")
    [document] = json.loads(shown.stdout)
    assert [row["label"] for row in document["models"]] == ["team", "baseline", "zeta"]


@pytest.mark.parametrize("output_format, expected", [
    ("markdown", "| team | **50.00** (+5.00) |"),
    ("csv", "team,ok,50.0,"),
])
def test_results_formats_paste_as_they_are(results, output_format, expected):
    shown = results_command("--results-dir", str(results), "--split", "valid", "--format", output_format)
    assert shown.exit_code == 0
    assert expected in shown.stdout and "MUGE" not in shown.stdout


def test_results_with_nothing_evaluated_says_where_it_looked(tmp_path):
    shown = results_command("--results-dir", str(tmp_path / "empty"), "--dataset-name", "X")
    assert shown.exit_code == NothingEvaluated.exit_code
    assert "no results under" in shown.stderr and "for X" in shown.stderr
