"""`--executor slurm` at the command line: the dry run prints the job script, a bad slurm
section is one sentence and exit 3; nothing connects."""
from __future__ import annotations

from click.testing import CliRunner

from evalkit.cli import evaluate_command
from evalkit.errors import ConfigError


def invoke(tmp_path, monkeypatch, *args: str):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(evaluate_command, list(args), prog_name="distillation_model_evaluation.py")


def test_a_slurm_dry_run_prints_the_job_script_and_no_gpu_choice(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("slurm:\n  partition: a100\n  setup: ['module load cuda']\n", encoding="utf-8")
    result = invoke(tmp_path, monkeypatch, "--dry-run", "--config", str(config), "--executor", "slurm",
                    "--host", "no-such-login.invalid", "--model-path", "/d/team.pt", "--label", "team")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "#!/bin/bash -l" in lines and "#SBATCH --job-name=evalkit-RUN_ID-team" in lines
    assert "#SBATCH --partition=a100" in lines and "module load cuda" in lines
    assert "CUDA_VISIBLE_DEVICES" not in result.stdout  # Slurm's choice, never overridden

    plain = invoke(tmp_path, monkeypatch, "--dry-run", "--model-path", "/d/team.pt")
    assert plain.exit_code == 0 and "#SBATCH" not in plain.stdout and "CUDA_VISIBLE_DEVICES=0" in plain.stdout


def test_a_wrong_slurm_section_is_a_config_error(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("executor: slurm\nslurm:\n  time: soon\n", encoding="utf-8")
    result = invoke(tmp_path, monkeypatch, "--dry-run", "--config", str(config), "--model-path", "/d/team.pt")
    assert result.exit_code == ConfigError.exit_code
    assert "slurm 'time'" in result.stderr and "not a Slurm time limit" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_executor_is_refused_by_the_flag(tmp_path, monkeypatch):
    result = invoke(tmp_path, monkeypatch, "--dry-run", "--executor", "pbs", "--model-path", "/d/team.pt")
    assert result.exit_code == 2 and "'pbs' is not one of 'ssh', 'slurm'" in result.stderr
