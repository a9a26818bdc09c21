"""quick_evaluation.py: the seed's step-by-step command line, sharing the one-shot's options."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalkit.cli import evaluate_command, quick_command

REPO = Path(__file__).resolve().parents[2]
SEED_CHECKPOINT = ("/root/autodl-tmp/datapath/experiments/muge_finetune_vit-b-16_roberta-base_bs512_4gpu_"
                   "team_distill/checkpoints/epoch_latest.pt")


@pytest.fixture(autouse=True)
def wide_console(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


def quick(*args: str):
    return CliRunner().invoke(quick_command, list(args), prog_name="quick_evaluation.py")


def test_help_teaches_the_three_steps_and_every_option():
    result = quick("--help")
    assert result.exit_code == 0
    for param in quick_command.params:
        for opt in param.opts:
            assert opt in result.stdout, f"{opt} missing from --help"
    for step in ("--step extract", "--step knn", "--step recall", "last extract step",
                 "most recent extraction"):
        assert step in " ".join(result.stdout.split())


def test_both_scripts_share_their_options():
    shared = {param.name for param in evaluate_command.params} - {"skip_extraction", "watch", "until_epoch", "reevaluate"}  # the one-shot run alone
    assert shared == {param.name for param in quick_command.params} - {"step"}


def test_the_documented_script_runs():
    done = subprocess.run([sys.executable, "quick_evaluation.py", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--step" in done.stdout


@pytest.mark.parametrize("args, named", [
    ((), "--step"),
    (("--step", "train"), "--step"),
    (("--step", "extract"), "--model-path"),
    (("--step", "knn", "--dry-run"), "--model-path"),
    (("--step", "extract", "--model-path", "x.pt", "--skip-text-to-image", "--skip-image-to-text"),
     "nothing to evaluate"),
])
def test_usage_errors_exit_2_naming_the_option(args, named):
    result = quick(*args)
    assert result.exit_code == 2
    assert named in result.stderr


def test_one_shot_refuses_skip_and_force_extraction_together():
    result = CliRunner().invoke(evaluate_command, ["--model-path", "x.pt", "--skip-extraction",
                                                   "--force-extraction"])
    assert result.exit_code == 2 and "contradict" in result.stderr


@pytest.mark.parametrize("step, scripts", [
    ("extract", ["extract_features.py"]),
    ("knn", ["make_topk_predictions.py", "make_topk_predictions_tr.py"]),
    ("recall", ["evaluation.py", "transform_ir_annotation_to_tr.py", "evaluation_tr.py"]),
])
def test_dry_run_of_a_step_shows_only_its_upstream_scripts(step, scripts):
    result = quick("--step", step, "--dry-run", "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == 0, result.stderr
    shown = [line.split("cn_clip/eval/")[1].split()[0] for line in result.stdout.splitlines()
             if "cn_clip/eval/" in line]
    assert shown == scripts
    assert list(Path.cwd().iterdir()) == []  # nothing connected to, nothing written
