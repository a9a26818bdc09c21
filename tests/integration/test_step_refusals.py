"""Step sequences that cannot give honest numbers are refused with one sentence and exit 13 (or
12 for a split that is not there): KNN before extraction, recall before KNN, damaged or mixed
feature files, --skip-extraction without features. Split from test_step_by_step.py so that the
parallel suite spreads its runs."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from evalkit.errors import MissingInput, OutputsNotReady

from .conftest import DATASETS
from .step_runs import assert_clean_failure, no_results, server_dir_of

pytestmark = pytest.mark.integration


def test_knn_before_any_extraction_is_refused(testbed):
    run = testbed.quick("--step", "knn", "--datapath", str(testbed.datapath))
    assert_clean_failure(run, OutputsNotReady.exit_code, "no extraction found for dataset 'Flickr30k-CN'",
                          "--step extract --model-path")
    named = testbed.quick("--step", "knn", "--datapath", str(testbed.datapath),
                          "--model-path", str(testbed.checkpoint))
    assert_clean_failure(named, OutputsNotReady.exit_code, f"no complete features for {testbed.checkpoint}",
                          "nothing has been extracted")
    assert not testbed.results_dir.exists()


def test_recall_before_knn_is_refused(testbed):
    extract = testbed.quick("--step", "extract", "--datapath", str(testbed.datapath),
                            "--model-path", str(testbed.checkpoint))
    assert extract.returncode == 0, extract.stderr
    run = testbed.quick("--step", "recall", "--datapath", str(testbed.datapath))
    assert_clean_failure(run, OutputsNotReady.exit_code, "no text→image KNN predictions", "--step knn")
    assert no_results(testbed)


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
    directory = server_dir_of(testbed, spec)
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
    assert_clean_failure(run, OutputsNotReady.exit_code, phrase)
    skip = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                            "--skip-extraction")
    assert_clean_failure(skip, OutputsNotReady.exit_code, "drop --skip-extraction")
    assert no_results(testbed)


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
        assert_clean_failure(run, OutputsNotReady.exit_code,
                              "the image feature file changed after evalkit extracted it",
                              "different checkpoints")
    assert no_results(testbed)


def test_a_split_that_is_not_on_the_server_is_named(testbed):
    for step in ("extract", "knn", "recall"):
        run = testbed.quick("--step", step, "--datapath", str(testbed.datapath), "--split", "test",
                            "--model-path", str(testbed.checkpoint))
        assert_clean_failure(run, MissingInput.exit_code,
                              "split 'test' of dataset 'Flickr30k-CN' is not on the server",
                              "lmdb/test/imgs", "--split")
    assert not testbed.results_dir.exists()


def test_skip_extraction_without_features_is_refused(testbed):
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                           "--skip-extraction")
    assert_clean_failure(run, OutputsNotReady.exit_code, "nothing has been extracted", "drop --skip-extraction")
    assert not testbed.results_dir.exists()
