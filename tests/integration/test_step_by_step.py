"""quick_evaluation.py --step extract|knn|recall, as the seed types it, on the real test bed:
the same results as the one-shot run, features reused only when they are provably the same,
and no sequence of steps that can mix two checkpoints' files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.errors import MissingInput, OutputsNotReady

from .conftest import DATASETS, QUICK_SCRIPT, DatasetSpec, run_upstream_by_hand

pytestmark = pytest.mark.integration

TEAM_LABEL = "muge_finetune_rn50_rbt3_team_distill"
RESULT_FILES = ("text_to_image_results.json", "image_to_text_results.json")


def _seed_steps(bed, spec: DatasetSpec, checkpoint: Path) -> list[subprocess.CompletedProcess]:
    """The seed's quick reference, verbatim apart from --config (and the test bed's paths)."""
    common = ["--datapath", str(bed.datapath), "--dataset-name", spec.name, "--split", spec.split]
    return [bed.quick("--step", "extract", *common, "--model-path", str(checkpoint)),
            bed.quick("--step", "knn", *common),
            bed.quick("--step", "recall", *common)]


def _assert_clean_failure(run: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert run.returncode == code, run.stderr + run.stdout
    assert "\nTraceback" not in "\n" + run.stderr
    assert run.stderr.startswith("error: ") and "\nfix: " in run.stderr
    for phrase in phrases:
        assert phrase in run.stderr, run.stderr


def _results(bed, spec: DatasetSpec, label: str) -> dict[str, dict]:
    local = bed.results_dir / spec.name / spec.split / label
    return {name: json.loads((local / name).read_text()) for name in RESULT_FILES}


def _server_dir(bed, spec: DatasetSpec) -> Path:
    [directory] = (bed.server_outputs / spec.name / spec.split).iterdir()
    return directory


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _no_results(bed) -> bool:
    """No result file was pulled (run records in runs/ and logs/ say what happened, and stay)."""
    return not any(p.is_file() and p.suffix == ".json" and p.relative_to(bed.results_dir).parts[0] != "runs"
                   for p in bed.results_dir.rglob("*"))


@pytest.mark.parametrize("spec", DATASETS, ids=lambda s: f"{s.name}-{s.split}")
def test_seed_step_commands_give_the_one_shot_results(testbed, spec: DatasetSpec, tmp_path):
    extract, knn, recall = _seed_steps(testbed, spec, testbed.checkpoint)
    for run in (extract, knn, recall):
        assert run.returncode == 0, run.stderr + run.stdout
    assert "features ready" in extract.stdout and "next: --step knn" in extract.stdout
    assert f"using the checkpoint of your last extract step: {testbed.checkpoint}" in knn.stdout
    stepwise = _results(testbed, spec, TEAM_LABEL)

    # The one-shot command, into a fresh results folder and server output root.
    testbed.results_dir, testbed.server_outputs = tmp_path / "one-shot", tmp_path / "one-shot server"
    testbed.write_config()
    one_shot = testbed.evaluate("--datapath", str(testbed.datapath), "--dataset-name", spec.name,
                                "--split", spec.split, "--model-path", str(testbed.checkpoint))
    assert one_shot.returncode == 0, one_shot.stderr
    assert stepwise == _results(testbed, spec, TEAM_LABEL)  # every number, both directions
    for direction in ("text→image", "image→text"):
        assert direction in recall.stdout  # the same table


def test_manifest_records_what_the_features_were_made_from(testbed):
    spec = DATASETS[0]
    run = _seed_steps(testbed, spec, testbed.checkpoint)[0]
    assert run.returncode == 0, run.stderr
    manifest = _manifest(_server_dir(testbed, spec))
    stat = testbed.checkpoint.stat()
    assert manifest["checkpoint"] == {"path": str(testbed.checkpoint), "size": stat.st_size,
                                      "mtime_ns": stat.st_mtime_ns}
    assert (manifest["vision_model"], manifest["text_model"], manifest["context_length"]) == \
        ("RN50", "RBT3-chinese", 52)
    assert (manifest["dataset"], manifest["split"]) == (spec.name, spec.split)
    assert (manifest["num_images"], manifest["num_texts"]) == \
        (spec.images, spec.images * spec.texts_per_image)
    assert "extract_features.py" in manifest["commands"]["extract"]
    assert manifest["extracted_at"]


def test_unchanged_checkpoint_is_not_extracted_twice_unless_forced(testbed):
    spec = DATASETS[0]
    args = ("--step", "extract", "--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    first = testbed.quick(*args)
    assert first.returncode == 0, first.stderr
    extracted_at = _manifest(_server_dir(testbed, spec))["extracted_at"]

    second = testbed.quick(*args)
    assert second.returncode == 0, second.stderr
    assert "reusing the features extracted" in second.stdout
    assert "extract image + text features" not in second.stdout  # the step did not run
    assert _manifest(_server_dir(testbed, spec))["extracted_at"] == extracted_at

    one_shot = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert one_shot.returncode == 0, one_shot.stderr
    assert "reusing the features extracted" in one_shot.stdout
    summary_path = testbed.results_dir / spec.name / spec.split / TEAM_LABEL / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert [step["name"] for step in summary["steps"]][:3] == ["prepare", "knn_t2i", "knn_i2t"]
    results = _results(testbed, spec, TEAM_LABEL)

    again = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert again.returncode == 0, again.stderr
    assert "reusing the KNN predictions" in again.stdout  # same features, same commands
    assert not any(step["name"].startswith("knn") for step in json.loads(summary_path.read_text())["steps"])
    assert _results(testbed, spec, TEAM_LABEL) == results

    forced = testbed.quick(*args, "--force-extraction")
    assert forced.returncode == 0, forced.stderr
    assert "extract image + text features" in forced.stdout
    assert _manifest(_server_dir(testbed, spec))["extracted_at"] > extracted_at


def test_a_changed_checkpoint_is_extracted_again(testbed, tmp_path):
    copy = testbed.datapath / "experiments" / f"copy-{tmp_path.name}" / "checkpoints" / "epoch_latest.pt"
    copy.parent.mkdir(parents=True)
    shutil.copy(testbed.checkpoint, copy)
    args = ("--step", "extract", "--datapath", str(testbed.datapath), "--model-path", str(copy))
    assert testbed.quick(*args).returncode == 0
    with copy.open("ab") as handle:  # as when training overwrites epoch_latest.pt
        handle.write(b"\0")
    knn = testbed.quick("--step", "knn", "--datapath", str(testbed.datapath), "--model-path", str(copy))
    _assert_clean_failure(knn, OutputsNotReady.exit_code, f"the checkpoint {copy} changed after")
    again = testbed.quick(*args)
    assert again.returncode == 0, again.stderr
    assert "extracting again: the checkpoint changed since the last extraction" in again.stdout


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
    pulled = {name.removesuffix("_results.json"): result for name, result in _results(testbed, spec, TEAM_LABEL).items()}
    assert pulled == by_hand  # A's numbers, as upstream computes them
    for other in ("large_distill", "baseline_rn50"):
        assert not (testbed.results_dir / spec.name / spec.split / other).exists()


def test_without_an_extract_step_of_yours_the_servers_latest_is_used_and_the_table_says_so(
        testbed, second_checkpoint, tmp_path):
    spec = DATASETS[0]
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
    _assert_clean_failure(named, OutputsNotReady.exit_code, "no text→image KNN predictions", "--step knn")


def test_knn_before_any_extraction_is_refused(testbed):
    run = testbed.quick("--step", "knn", "--datapath", str(testbed.datapath))
    _assert_clean_failure(run, OutputsNotReady.exit_code, "no extraction found for dataset 'Flickr30k-CN'",
                          "--step extract --model-path")
    named = testbed.quick("--step", "knn", "--datapath", str(testbed.datapath),
                          "--model-path", str(testbed.checkpoint))
    _assert_clean_failure(named, OutputsNotReady.exit_code, f"no complete features for {testbed.checkpoint}",
                          "nothing has been extracted")
    assert not testbed.results_dir.exists()


def test_recall_before_knn_is_refused(testbed):
    extract = testbed.quick("--step", "extract", "--datapath", str(testbed.datapath),
                            "--model-path", str(testbed.checkpoint))
    assert extract.returncode == 0, extract.stderr
    run = testbed.quick("--step", "recall", "--datapath", str(testbed.datapath))
    _assert_clean_failure(run, OutputsNotReady.exit_code, "no text→image KNN predictions", "--step knn")
    assert _no_results(testbed)


@pytest.mark.parametrize("damage, phrase", [
    ("truncate", "the image feature file is truncated: 7 complete lines for 20 images"),
    ("cut mid-line", "the image feature file is truncated"),
    ("no manifest", "its feature files have no manifest"),
])
def test_damaged_features_are_refused(testbed, damage, phrase):
    spec = DATASETS[0]
    extract = testbed.quick("--step", "extract", "--datapath", str(testbed.datapath),
                            "--model-path", str(testbed.checkpoint))
    assert extract.returncode == 0, extract.stderr
    directory = _server_dir(testbed, spec)
    features = directory / f"{spec.split}_imgs.img_feat.jsonl"
    lines = features.read_bytes().splitlines(keepends=True)
    if damage == "truncate":
        features.write_bytes(b"".join(lines[:7]))
    elif damage == "cut mid-line":
        features.write_bytes(b"".join(lines[:-1]) + lines[-1][:50])
    else:  # an extraction killed before it finished leaves feature files and no manifest
        (directory / "manifest.json").unlink()
    run = testbed.quick("--step", "knn", "--datapath", str(testbed.datapath),
                        "--model-path", str(testbed.checkpoint))
    _assert_clean_failure(run, OutputsNotReady.exit_code, phrase)
    skip = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                            "--skip-extraction")
    _assert_clean_failure(skip, OutputsNotReady.exit_code, "drop --skip-extraction")
    assert _no_results(testbed)


def test_features_of_two_checkpoints_are_never_mixed(testbed, second_checkpoint):
    spec = DATASETS[0]
    dirs = []
    for checkpoint in (testbed.checkpoint, second_checkpoint):
        run = testbed.quick("--step", "extract", "--datapath", str(testbed.datapath),
                            "--model-path", str(checkpoint))
        assert run.returncode == 0, run.stderr
        dirs.append(Path(run.stdout.split("server files: ")[1].split("\n")[0]))
    name = f"{spec.split}_imgs.img_feat.jsonl"
    shutil.copy(dirs[1] / name, dirs[0] / name)  # B's image features beside A's text features
    for step in ("knn", "recall"):
        run = testbed.quick("--step", step, "--datapath", str(testbed.datapath),
                            "--model-path", str(testbed.checkpoint))
        _assert_clean_failure(run, OutputsNotReady.exit_code,
                              "the image feature file changed after evalkit extracted it",
                              "different checkpoints")
    assert _no_results(testbed)


def test_a_split_that_is_not_on_the_server_is_named(testbed):
    for step in ("extract", "knn", "recall"):
        run = testbed.quick("--step", step, "--datapath", str(testbed.datapath), "--split", "test",
                            "--model-path", str(testbed.checkpoint))
        _assert_clean_failure(run, MissingInput.exit_code,
                              "split 'test' of dataset 'Flickr30k-CN' is not on the server",
                              "lmdb/test/imgs", "--split")
    assert not testbed.results_dir.exists()


def test_skip_extraction_without_features_is_refused(testbed):
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                           "--skip-extraction")
    _assert_clean_failure(run, OutputsNotReady.exit_code, "nothing has been extracted", "drop --skip-extraction")
    assert not testbed.results_dir.exists()
