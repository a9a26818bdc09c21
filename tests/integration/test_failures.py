"""Real faults against the real server: each is one clear message, its exit code, no traceback,
and nothing under the results folder."""
from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from evalkit.errors import (AuthenticationError, ConfigError, ConnectError, EvaluationFailed,
                            HostKeyError, MissingInput, PreflightFailed, RemoteStepFailed)

from .conftest import texts_of

pytestmark = pytest.mark.integration

MODEL_ARGS = ("--vision-model", "RN50", "--text-model", "RBT3-chinese")


def _assert_clean_failure(run: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert run.returncode == code, run.stderr + run.stdout
    assert "\nTraceback" not in "\n" + run.stderr  # remote output is indented; ours would not be
    assert run.stderr.startswith("error: ")
    for phrase in phrases:
        assert phrase in run.stderr, run.stderr


def _no_results(bed) -> bool:
    """No result file was pulled (run records in runs/ and logs/ say what happened, and stay)."""
    return not any(p.is_file() and p.suffix == ".json" and p.relative_to(bed.results_dir).parts[0] != "runs"
                   for p in bed.results_dir.rglob("*"))


def _evaluate(bed, *extra: str) -> subprocess.CompletedProcess:
    return bed.evaluate("--model-path", str(bed.checkpoint), *MODEL_ARGS, *extra)


def test_unknown_host_key_is_refused_with_its_fingerprint(testbed):
    (testbed.ssh_dir / "known_hosts").write_text("")
    run = _evaluate(testbed)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", "-"], input=testbed.sshd.host_key_line(),
                                 capture_output=True, text=True).stdout.split()[1]
    _assert_clean_failure(run, HostKeyError.exit_code, "not in known_hosts", fingerprint,
                          f"[127.0.0.1]:{testbed.sshd.port}")
    assert (testbed.ssh_dir / "known_hosts").read_text() == ""  # never auto-added
    assert not testbed.results_dir.exists()


def test_changed_host_key_is_refused(testbed, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    (testbed.ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{testbed.sshd.port} {other}\n")
    run = _evaluate(testbed)
    _assert_clean_failure(run, HostKeyError.exit_code, "CHANGED", "ssh-keygen -R")
    assert not testbed.results_dir.exists()


def test_refused_authentication(testbed, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    config = testbed.ssh_dir / "config"
    config.write_text(config.read_text().replace(str(testbed.sshd.user_key), str(tmp_path / "stranger")))
    run = _evaluate(testbed)
    _assert_clean_failure(run, AuthenticationError.exit_code, "refused authentication")
    assert not testbed.results_dir.exists()


def test_closed_port(testbed):
    closed = testbed.point_at_a_closed_port()
    run = _evaluate(testbed)
    _assert_clean_failure(run, ConnectError.exit_code, f"127.0.0.1:{closed}")
    assert not testbed.results_dir.exists()


def test_missing_checkpoint_is_named_before_anything_runs(testbed):
    missing = testbed.datapath / "experiments" / "nope" / "checkpoints" / "epoch_latest.pt"
    run = testbed.evaluate("--model-path", str(missing), *MODEL_ARGS)
    _assert_clean_failure(run, MissingInput.exit_code, f"checkpoint not found on the server: {missing}",
                          "--model-path")
    assert not testbed.results_dir.exists()  # not even a log: nothing ran
    assert not testbed.server_outputs.joinpath("Flickr30k-CN").exists()


def test_a_step_that_fails_names_the_step_its_status_and_output(testbed):
    # Texts padded beyond RBT3's 512 positions: upstream's extraction fails inside the model.
    testbed.write_config(context_length=600)
    run = _evaluate(testbed)
    _assert_clean_failure(run, RemoteStepFailed.exit_code, "step 'extract'", "exited with status 1",
                          "extract_features.py", "--context-length 600")
    assert _no_results(testbed)
    assert "full remote log" in run.stdout
    # upstream's own output: not while it ran, but its last lines with the error (the log has all)
    assert "Params:" not in run.stdout and "context_length: 600" not in run.stdout
    assert "Error" in run.stderr.split("lines of its output:")[1], run.stderr


def test_a_file_that_is_not_a_checkpoint_is_refused_before_extraction(testbed):
    broken = testbed.datapath / "experiments" / "broken" / "checkpoints" / "epoch_latest.pt"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a checkpoint")
    run = testbed.evaluate("--model-path", str(broken), *MODEL_ARGS)
    _assert_clean_failure(run, MissingInput.exit_code, str(broken), "cannot be loaded")
    assert not testbed.results_dir.exists()  # refused before a log, let alone a result


def _append_text(datapath: Path, line: str) -> None:
    with texts_of(datapath).open("a", encoding="utf-8") as texts:
        texts.write(line)


@pytest.mark.parametrize("damage, phrase", [
    (lambda d: _append_text(d, '{"text_id": 999, "text": "半行\n'), "texts: "),
    (lambda d: _append_text(d, '{"text_id": 999, "text": "猫", "image_ids": [999999]}\n'), "image ids: "),
    (lambda d: texts_of(d).write_text(""), "is empty"),
], ids=["a line that is not JSON", "an image id not in the LMDB", "an empty texts file"])
def test_a_damaged_dataset_is_refused_before_extraction(testbed, own_datapath, damage, phrase):
    damage(own_datapath)
    run = _evaluate(testbed)
    _assert_clean_failure(run, PreflightFailed.exit_code, phrase)
    assert not testbed.results_dir.exists()
    assert not any(testbed.server_outputs.rglob("*.jsonl"))


def test_a_wrong_chinese_clip_dir_is_refused_before_extraction(testbed, tmp_path):
    testbed.write_config(chinese_clip_dir=str(tmp_path / "not-chinese-clip"))
    run = _evaluate(testbed)
    _assert_clean_failure(run, PreflightFailed.exit_code, "cn_clip: ", "chinese_clip_dir")
    assert not testbed.results_dir.exists()


def test_the_wrong_architecture_is_refused_before_extraction(testbed):
    run = testbed.evaluate("--model-path", str(testbed.checkpoint), "--vision-model", "ViT-B-16",
                           "--text-model", "RBT3-chinese")
    _assert_clean_failure(run, ConfigError.exit_code, "checkpoint looks like RN50 + RBT3-chinese",
                          "--vision-model ViT-B-16")
    assert not testbed.results_dir.exists()
    assert not any(testbed.server_outputs.rglob("*.jsonl"))  # nothing extracted


def test_upstream_success_false_is_a_failure_even_though_it_exits_0(testbed):
    # Upstream evaluation.py insists on 10 predictions per query; with top_k 5 it writes
    # {"success": false} and exits 0.
    testbed.write_config(top_k=5)
    run = _evaluate(testbed)
    _assert_clean_failure(run, EvaluationFailed.exit_code, "reported failure", "wrong number")
    assert _no_results(testbed)


HOSTILE = ["x; touch {m}", "$(touch {m})", "`touch {m}`", "it's \"quoted\"", "two\nlines; touch {m}",
           "空格 and 中文 $(touch {m})"]


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_values_reach_the_scripts_as_text_and_never_run(testbed, tmp_path, isolated_home, template):
    marker = tmp_path / "pwned"
    hostile = template.format(m=marker)
    # A dataset name is one directory name, so it carries a relative marker (no '/').
    relative = "evalkit-pwned"
    runs = [
        testbed.evaluate("--model-path", f"/tmp/{hostile}/epoch_latest.pt", *MODEL_ARGS),
        testbed.evaluate("--model-path", str(testbed.checkpoint), "--datapath", f"/tmp/{hostile}", *MODEL_ARGS),
        testbed.evaluate("--model-path", str(testbed.checkpoint), *MODEL_ARGS,
                         "--dataset-name", template.format(m=relative)),
    ]
    for run in runs:  # each reaches the server's file check as text, and is not found there
        assert run.returncode == MissingInput.exit_code, run.stderr
        assert "\nTraceback" not in "\n" + run.stderr
    assert f"checkpoint not found on the server: /tmp/{hostile}/epoch_latest.pt" in runs[0].stderr
    assert not marker.exists()
    server_home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # where the ssh session starts
    for where in (testbed.chinese_clip_dir, isolated_home, server_home, Path.cwd(), testbed.results_dir.parent):
        assert not (where / relative).exists()
    assert _no_results(testbed)


def test_an_unknown_dataset_is_named_before_anything_runs(testbed):
    run = _evaluate(testbed, "--dataset-name", "Flickr31k-CN")
    _assert_clean_failure(run, MissingInput.exit_code, "dataset 'Flickr31k-CN' is not on the server",
                          "--dataset-name")
    assert not testbed.results_dir.exists()


def test_an_activate_command_that_fails_is_named(testbed):
    testbed.write_config(activate="source /nonexistent/conda.sh && conda activate training")
    run = _evaluate(testbed)
    _assert_clean_failure(run, RemoteStepFailed.exit_code, "starting evalkit on the server failed",
                          "/nonexistent/conda.sh", "`activate`")
    assert not testbed.results_dir.exists()
