"""quick_evaluation.py --step extract|knn|recall, as the seed types it, on the real test bed:
the same results as the one-shot run, features reused only when they are provably the same,
and no sequence of steps that can mix two checkpoints' files."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from evalkit.errors import OutputsNotReady

from .conftest import DATASETS, DatasetSpec
from .step_runs import TEAM_LABEL, assert_clean_failure, manifest_of, results_of, server_dir_of

pytestmark = pytest.mark.integration


def _seed_steps(bed, spec: DatasetSpec, checkpoint: Path) -> list[subprocess.CompletedProcess]:
    """The seed's quick reference, verbatim apart from --config (and the test bed's paths)."""
    common = ["--datapath", str(bed.datapath), "--dataset-name", spec.name, "--split", spec.split]
    return [bed.quick("--step", "extract", *common, "--model-path", str(checkpoint)),
            bed.quick("--step", "knn", *common),
            bed.quick("--step", "recall", *common)]


@pytest.mark.parametrize("spec", DATASETS, ids=lambda s: f"{s.name}-{s.split}")
def test_seed_step_commands_give_the_one_shot_results(testbed, spec: DatasetSpec, tmp_path):
    extract, knn, recall = _seed_steps(testbed, spec, testbed.checkpoint)
    for run in (extract, knn, recall):
        assert run.returncode == 0, run.stderr + run.stdout
    assert "features ready" in extract.stdout and "next: --step knn" in extract.stdout
    assert f"using the checkpoint of your last extract step: {testbed.checkpoint}" in knn.stdout
    stepwise = results_of(testbed, spec, TEAM_LABEL)

    # The one-shot command, into a fresh results folder and server output root.
    testbed.results_dir, testbed.server_outputs = tmp_path / "one-shot", tmp_path / "one-shot server"
    testbed.write_config()
    one_shot = testbed.evaluate("--datapath", str(testbed.datapath), "--dataset-name", spec.name,
                                "--split", spec.split, "--model-path", str(testbed.checkpoint))
    assert one_shot.returncode == 0, one_shot.stderr
    assert stepwise == results_of(testbed, spec, TEAM_LABEL)  # every number, both directions
    for direction in ("text→image", "image→text"):
        assert direction in recall.stdout  # the same table


def test_manifest_records_what_the_features_were_made_from(testbed):
    spec = DATASETS[0]
    run = _seed_steps(testbed, spec, testbed.checkpoint)[0]
    assert run.returncode == 0, run.stderr
    manifest = manifest_of(server_dir_of(testbed, spec))
    stat = testbed.checkpoint.stat()
    assert manifest["checkpoint"] == {"path": str(testbed.checkpoint), "size": stat.st_size,
                                      "mtime_ns": stat.st_mtime_ns, "inode": f"{stat.st_dev}:{stat.st_ino}"}
    assert (manifest["vision_model"], manifest["text_model"], manifest["context_length"]) == \
        ("RN50", "RBT3-chinese", 52)
    assert (manifest["dataset"], manifest["split"]) == (spec.name, spec.split)
    assert (manifest["num_images"], manifest["num_texts"]) == \
        (spec.images, spec.images * spec.texts_per_image)
    dataset = testbed.datapath / "datasets" / spec.name
    assert manifest["dataset_files"] == {
        name: {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns} for name, path in (
            ("images", dataset / "lmdb" / spec.split / "imgs" / "data.mdb"),
            ("texts", dataset / f"{spec.split}_texts.jsonl"))}
    assert "extract_features.py" in manifest["commands"]["extract"]
    assert manifest["extracted_at"]


def test_unchanged_checkpoint_is_not_extracted_twice_unless_forced(testbed):
    spec = DATASETS[0]
    args = ("--step", "extract", "--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    first = testbed.quick(*args)
    assert first.returncode == 0, first.stderr
    extracted_at = manifest_of(server_dir_of(testbed, spec))["extracted_at"]

    second = testbed.quick(*args)
    assert second.returncode == 0, second.stderr
    assert "reusing the features extracted" in second.stdout
    assert "extract image + text features" not in second.stdout  # the step did not run
    assert manifest_of(server_dir_of(testbed, spec))["extracted_at"] == extracted_at

    one_shot = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert one_shot.returncode == 0, one_shot.stderr
    assert "reusing the features extracted" in one_shot.stdout
    summary_path = testbed.results_dir / spec.name / spec.split / TEAM_LABEL / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert [step["name"] for step in summary["steps"]][:3] == ["prepare", "knn_t2i", "knn_i2t"]
    results = results_of(testbed, spec, TEAM_LABEL)

    again = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert again.returncode == 0, again.stderr
    assert "reusing the KNN predictions" in again.stdout  # same features, same commands
    assert not any(step["name"].startswith("knn") for step in json.loads(summary_path.read_text())["steps"])
    assert results_of(testbed, spec, TEAM_LABEL) == results

    forced = testbed.quick(*args, "--force-extraction")
    assert forced.returncode == 0, forced.stderr
    assert "extract image + text features" in forced.stdout
    assert manifest_of(server_dir_of(testbed, spec))["extracted_at"] > extracted_at


def test_a_changed_checkpoint_is_extracted_again(testbed, tmp_path):
    copy = testbed.datapath / "experiments" / f"copy-{tmp_path.name}" / "checkpoints" / "epoch_latest.pt"
    copy.parent.mkdir(parents=True)
    shutil.copy(testbed.checkpoint, copy)
    args = ("--step", "extract", "--datapath", str(testbed.datapath), "--model-path", str(copy))
    assert testbed.quick(*args).returncode == 0
    with copy.open("ab") as handle:  # as when training overwrites epoch_latest.pt
        handle.write(b"\0")
    knn = testbed.quick("--step", "knn", "--datapath", str(testbed.datapath), "--model-path", str(copy))
    assert_clean_failure(knn, OutputsNotReady.exit_code, f"the checkpoint {copy} changed after")
    again = testbed.quick(*args)
    assert again.returncode == 0, again.stderr
    assert "extracting again: the checkpoint changed since the last extraction" in again.stdout


def test_a_split_rewritten_in_place_is_extracted_again(testbed, own_datapath):
    """Same counts, other contents (the texts edited, the images re-encoded): features made
    before are of other inputs, so KNN refuses them and the next extraction does not reuse them."""
    spec = DATASETS[0]
    extract = ("--step", "extract", "--datapath", str(own_datapath), "--model-path", str(testbed.checkpoint))
    first = testbed.quick(*extract)
    assert first.returncode == 0, first.stderr
    texts = own_datapath / "datasets" / spec.name / f"{spec.split}_texts.jsonl"
    lines = [json.loads(line) for line in texts.read_text().splitlines()]
    texts.write_text("".join(json.dumps(dict(line, text=line["text"] + "。"), ensure_ascii=False) + "\n"
                             for line in lines))
    knn = testbed.quick("--step", "knn", "--datapath", str(own_datapath), "--model-path", str(testbed.checkpoint))
    assert_clean_failure(knn, OutputsNotReady.exit_code, "the dataset's texts file changed since the extraction")
    again = testbed.quick(*extract)
    assert again.returncode == 0, again.stderr
    assert "extracting again: the dataset's texts file changed since the extraction" in again.stdout
