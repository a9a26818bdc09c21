"""The command line as a user meets it: options, dry runs, and errors that say what to fix."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalkit.cli import evaluate_command
from evalkit.errors import ConfigError, ConnectError

REPO = Path(__file__).resolve().parents[2]
SEED_CHECKPOINT = "/root/autodl-tmp/datapath/experiments/X/checkpoints/epoch_latest.pt"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """rich wraps at $COLUMNS: make it wide and fixed so assertions see whole messages."""
    monkeypatch.setenv("COLUMNS", "200")
    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run the command in a fresh working directory; stdout and stderr kept apart."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    def invoke(*args: str):
        return CliRunner().invoke(evaluate_command, list(args), prog_name="distillation_model_evaluation.py")
    return invoke


def flat(text: str) -> str:
    return " ".join(text.split())


def config_file(tmp_path: Path, text: str, name: str = "evalkit.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- help and option declarations ---------------------------------------------------------------

def test_help_exits_0_and_mentions_every_option(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for param in evaluate_command.params:
        for opt in param.opts:
            assert opt in result.stdout, f"{opt} missing from --help"
    assert "Flickr30k-CN" in result.stdout


def test_short_help_flag_works(cli):
    result = cli("-h")
    assert result.exit_code == 0 and "--model-path" in result.stdout


def test_no_option_is_declared_twice():
    opts = [opt for param in evaluate_command.params for opt in (*param.opts, *param.secondary_opts)]
    assert len(opts) == len(set(opts)), sorted(o for o in opts if opts.count(o) > 1)
    names = [param.name for param in evaluate_command.params]
    assert len(names) == len(set(names))


def test_the_documented_script_runs():
    done = subprocess.run([sys.executable, "distillation_model_evaluation.py", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--model-path" in done.stdout


# --- dry run ------------------------------------------------------------------------------------

def test_dry_run_prints_the_seed_commands_without_connecting(cli, tmp_path):
    result = cli("--dry-run", "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    [extract] = [line for line in out.splitlines() if "cn_clip/eval/extract_features.py" in line]
    assert extract.startswith("cd /root/autodl-tmp/Chinese-CLIP && source /root/miniconda3/etc/profile.d/"
                              "conda.sh && conda activate training && "), "one copy-pasteable line"
    for expected in ("--image-data /root/autodl-tmp/datapath/datasets/Flickr30k-CN/lmdb/valid/imgs",
                     "--vision-model ViT-B-16", "--text-model RoBERTa-wwm-ext-base-chinese",
                     f"--resume {SEED_CHECKPOINT}", "CUDA_VISIBLE_DEVICES=0"):
        assert expected in extract
    assert "seetacloud-v800" in out
    for script in ("make_topk_predictions.py", "make_topk_predictions_tr.py", "evaluation.py",
                   "transform_ir_annotation_to_tr.py", "evaluation_tr.py"):
        assert f"cn_clip/eval/{script}" in out
    # nothing was connected to or written: no results folder, no log
    assert list(Path.cwd().iterdir()) == []


def test_dry_run_never_connects_even_to_an_unreachable_host(cli, tmp_path):
    empty = config_file(tmp_path, "", "ssh_config")
    config = config_file(tmp_path, f"ssh_config: {empty}\n")
    result = cli("--dry-run", "--config", str(config), "--host", "no-such-host-evalkit.invalid",
                 "--model-path", "m.pt")
    assert result.exit_code == 0, result.stderr
    assert "no-such-host-evalkit.invalid" in result.stdout


def test_dry_run_uses_the_config_file_and_flags_override_it(cli, tmp_path):
    config = config_file(tmp_path, "datapath: /cfg/data\nchinese_clip_dir: /opt/Chinese-CLIP\n")
    from_config = cli("--dry-run", "--config", str(config), "--model-path", "experiments/e/checkpoints/a.pt")
    assert from_config.exit_code == 0, from_config.stderr
    assert "--image-data /cfg/data/datasets/Flickr30k-CN/lmdb/valid/imgs" in from_config.stdout
    assert "--resume /cfg/data/experiments/e/checkpoints/a.pt" in from_config.stdout
    assert "cd /opt/Chinese-CLIP && " in from_config.stdout

    flagged = cli("--dry-run", "--config", str(config), "--datapath", "/flag/data",
                  "--model-path", "experiments/e/checkpoints/a.pt")
    assert flagged.exit_code == 0, flagged.stderr
    assert "--image-data /flag/data/datasets/Flickr30k-CN/lmdb/valid/imgs" in flagged.stdout
    assert "/cfg/data" not in flagged.stdout
    assert "cd /opt/Chinese-CLIP && " in flagged.stdout, "keys the flags do not set still come from the file"


def test_dry_run_cpu_says_it_uploads_the_launcher(cli):
    result = cli("--dry-run", "--device", "cpu", "--gpu", "1", "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == 0, result.stderr
    assert "cpu_launch.py" in result.stdout
    assert "--precision fp32" in result.stdout
    assert "CUDA_VISIBLE_DEVICES=1" in result.stdout


def test_dry_run_with_skip_flag_omits_that_direction(cli):
    result = cli("--dry-run", "--skip-image-to-text", "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == 0, result.stderr
    assert "evaluation_tr.py" not in result.stdout
    assert "cn_clip/eval/evaluation.py" in result.stdout


@pytest.mark.parametrize("how", ["flag", "config"])
def test_dry_run_with_image_to_image_adds_its_step_by_flag_or_config(cli, tmp_path, how):
    args = ["--image-to-image"] if how == "flag" else ["--config", str(config_file(tmp_path, "image_to_image: true\n"))]
    result = cli("--dry-run", *args, "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == 0, result.stderr
    assert "# knn_i2i: KNN + recall image→image" in result.stdout
    assert "/.evalkit/image_to_image.py --image-feats" in flat(result.stdout)
    assert "image_to_image.py" not in cli("--dry-run", "--model-path", SEED_CHECKPOINT).stdout


# --- usage errors: exit 2 -----------------------------------------------------------------------

def test_missing_model_path_is_a_usage_error(cli):
    result = cli("--dry-run")
    assert result.exit_code == 2
    assert "--model-path" in result.stderr
    assert "unexpected" not in result.stderr


def test_both_skip_flags_is_a_usage_error(cli):
    result = cli("--dry-run", "--model-path", SEED_CHECKPOINT, "--skip-text-to-image", "--skip-image-to-text")
    assert result.exit_code == 2
    assert "--skip-text-to-image" in result.stderr and "--skip-image-to-text" in result.stderr
    assert "unexpected" not in result.stderr


def test_missing_model_path_message_names_the_option(cli):
    result = cli("--dry-run")
    assert result.exit_code != 0
    assert "--model-path" in flat(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize("args, named", [
    (["--split", "train"], "--split"),
    (["--dataset-name", "../x"], "--dataset-name"),
    (["--dataset-name", ".."], "--dataset-name"),
    (["--dataset-name", "a/b"], "--dataset-name"),
    (["--dataset-name", ""], "--dataset-name"),
    (["--vision-model", "ViT-Z-99"], "--vision-model"),
    (["--device", "tpu"], "--device"),
    (["--gpu", "-1"], "--gpu"),
    (["--gpu", "zero"], "--gpu"),
    (["--no-such-option"], "--no-such-option"),
])
def test_bad_option_values_exit_2_naming_the_option(cli, args, named):
    result = cli("--dry-run", "--model-path", SEED_CHECKPOINT, *args)
    assert result.exit_code == 2
    assert named in result.stderr
    assert result.stdout == ""


# --- config errors: exit 3 ----------------------------------------------------------------------

def test_unknown_config_key_exits_3_naming_key_and_file(cli, tmp_path):
    config = config_file(tmp_path, "host: a\nhots: b\n")
    result = cli("--dry-run", "--config", str(config), "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == ConfigError.exit_code == 3
    assert result.stdout == ""
    err = flat(result.stderr)
    assert err.startswith("error:")
    assert "hots" in err and str(config) in err
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("text, shown", [
    ("gpu: '0'\n", "'gpu'"),
    ("top_k: 0\n", "'top_k'"),
    ("device: tpu\n", "'device'"),
    ("- a list\n", "mapping"),
])
def test_bad_config_values_exit_3(cli, tmp_path, text, shown):
    config = config_file(tmp_path, text)
    result = cli("--dry-run", "--config", str(config), "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == 3
    assert shown in result.stderr and str(config) in flat(result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_malformed_yaml_exits_3_with_file_and_line(cli, tmp_path):
    config = config_file(tmp_path, "host: a\ngpu: 0\n  oops: indented\n")
    result = cli("--dry-run", "--config", str(config), "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == 3
    assert f"{config}:3" in flat(result.stderr)
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_3_naming_it(cli, tmp_path):
    missing = tmp_path / "nope.yaml"
    result = cli("--dry-run", "--config", str(missing), "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == ConfigError.exit_code == 3, result.stderr
    err = flat(result.stderr)
    assert err.startswith("error:") and str(missing) in err
    assert "--config" in err, "the hint names the option to fix"
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_debug_shows_the_traceback_of_a_config_error(cli, tmp_path):
    config = config_file(tmp_path, "hots: b\n")
    result = cli("--dry-run", "--debug", "--config", str(config), "--model-path", SEED_CHECKPOINT)
    assert result.exit_code == 3
    assert "Traceback" in result.stderr
    assert "hots" in result.stderr


# --- connection errors: exit 4 ------------------------------------------------------------------

def test_unresolvable_host_exits_4_at_name_resolution_and_writes_nothing(cli, tmp_path):
    empty = config_file(tmp_path, "", "ssh_config")
    config = config_file(tmp_path, f"ssh_config: {empty}\n")
    results = tmp_path / "results"
    result = cli("--config", str(config), "--host", "no-such-host-evalkit.invalid",
                 "--model-path", SEED_CHECKPOINT, "--results-dir", str(results))
    assert result.exit_code == ConnectError.exit_code == 4, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    # it failed on the name lookup itself, not by waiting out a connect timeout
    assert "cannot resolve host name 'no-such-host-evalkit.invalid'" in error_lines[0]
    assert "timed out" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not results.exists()
    assert list(Path.cwd().iterdir()) == []


def test_error_message_is_one_line_even_on_a_narrow_console(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    empty = config_file(tmp_path, "", "ssh_config")
    config = config_file(tmp_path, f"ssh_config: {empty}\n")
    result = cli("--config", str(config), "--host", "no-such-host-evalkit.invalid",
                 "--model-path", SEED_CHECKPOINT, "--results-dir", str(tmp_path / "results"))
    assert result.exit_code == 4
    first = result.stderr.splitlines()[0]
    assert first.startswith("error:") and first.rstrip().endswith("no-such-host-evalkit.invalid")
