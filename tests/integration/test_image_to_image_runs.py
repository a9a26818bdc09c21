"""--image-to-image through evalkit on the real test bed: computed on the server from the image
features already extracted, equal to a brute-force computation over those features, shown as a
third row and a comparison column group, reused with the features, skipped with one sentence
on a split with one image per caption; upstream's two directions unchanged."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .conftest import DATASETS
from .test_image_to_image import brute_force

pytestmark = pytest.mark.integration

MUGE = DATASETS[1]     # "MUGE 小样": every 7th text lists two images
FLICKR = DATASETS[0]
I2I = "image_to_image_results.json"
UPSTREAM_RESULTS = ("text_to_image_results.json", "image_to_text_results.json")


def _server_dir(bed, spec) -> Path:
    [directory] = (bed.server_outputs / spec.name / spec.split).iterdir()
    return directory


def _local(bed, spec, label: str) -> Path:
    return bed.results_dir / spec.name / spec.split / label


def _expected(datapath: Path, server_dir: Path, spec) -> dict:
    data = datapath / "datasets" / spec.name
    return brute_force(server_dir / f"{spec.split}_imgs.img_feat.jsonl", data / f"{spec.split}_texts.jsonl",
                       data / f"{spec.split}_imgs_labels.jsonl")


def _assert_equal_scores(result: dict, expected: dict) -> None:
    assert result["scoreJson"]["num_queries"] == expected["num_queries"] > 0
    for metric in ("r1", "r5", "r10", "mean_recall", "map10"):
        assert result["scoreJson"][metric] == pytest.approx(expected[metric], abs=1e-9), metric


def _copy_dataset(source: Path, spec, target: Path) -> Path:
    shutil.copytree(source / "datasets" / spec.name, target / "datasets" / spec.name)
    return target / "datasets" / spec.name


def test_one_shot_run_adds_image_to_image_and_reuses_it_with_the_features(testbed):
    common = ("--datapath", str(testbed.datapath), "--dataset-name", MUGE.name, "--split", MUGE.split,
              "--model-path", str(testbed.checkpoint))
    label = testbed.checkpoint.parents[1].name
    first = testbed.evaluate(*common, "--image-to-image", "--knn", "fast")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "│ image→image │" in first.stdout and "mAP@10" in first.stdout
    server_dir, local = _server_dir(testbed, MUGE), _local(testbed, MUGE, label)
    pulled = (local / I2I).read_bytes()
    assert pulled == (server_dir / I2I).read_bytes()
    result = json.loads(pulled)
    _assert_equal_scores(result, _expected(testbed.datapath, server_dir, MUGE))
    assert result["relevance"] == "shared_text"
    summary = json.loads((local / "summary.json").read_text())
    assert summary["recall"]["image_to_image"] == {key: result["scoreJson"][key] for key in (
        "r1", "r5", "r10", "mean_recall", "map10", "num_queries")}
    upstream = {name: (local / name).read_bytes() for name in UPSTREAM_RESULTS}

    without = testbed.evaluate(*common, "--knn", "fast")  # features and predictions reused
    assert without.returncode == 0, without.stderr + without.stdout
    assert "image→image" not in without.stdout and not (local / I2I).exists()
    assert {name: (local / name).read_bytes() for name in UPSTREAM_RESULTS} == upstream
    assert "image_to_image" not in json.loads((local / "summary.json").read_text())["recall"]

    again = testbed.evaluate(*common, "--image-to-image", "--knn", "fast")
    assert again.returncode == 0, again.stderr + again.stdout
    assert "reusing the KNN predictions made from these features" in again.stdout
    assert "KNN + recall image→image" not in again.stdout
    assert (local / I2I).read_bytes() == pulled


def test_step_by_step_with_a_labels_file_and_upstream_knn(testbed, tmp_path):
    datapath = tmp_path / "labelled"
    data = _copy_dataset(testbed.datapath, MUGE, datapath)
    ids = [json.loads(line)["image_ids"][0] for line in (data / f"{MUGE.split}_texts.jsonl").read_text().splitlines()]
    with open(data / f"{MUGE.split}_imgs_labels.jsonl", "w") as labels:
        for image_id in sorted(set(ids)):
            labels.write(json.dumps({"image_id": image_id, "label": f"类{image_id % 4}"}, ensure_ascii=False) + "\n")
    testbed.write_config(datapath=str(datapath), image_to_image=True)  # the config key, not the flag
    common = ("--dataset-name", MUGE.name, "--split", MUGE.split)
    steps = [testbed.quick("--step", "extract", *common, "--model-path", str(testbed.checkpoint)),
             testbed.quick("--step", "knn", *common), testbed.quick("--step", "recall", *common)]
    for step in steps:
        assert step.returncode == 0, step.stderr + step.stdout
    assert "│ image→image │" in steps[2].stdout
    server_dir = _server_dir(testbed, MUGE)
    result = json.loads((_local(testbed, MUGE, testbed.checkpoint.parents[1].name) / I2I).read_text())
    assert result["relevance"] == "same_label"
    _assert_equal_scores(result, _expected(datapath, server_dir, MUGE))


def test_a_split_with_one_image_per_caption_is_skipped_with_its_sentence(testbed, own_datapath):
    texts = own_datapath / "datasets" / FLICKR.name / f"{FLICKR.split}_texts.jsonl"
    lines = [json.loads(line) for line in texts.read_text().splitlines()]
    texts.write_text("".join(json.dumps(dict(line, image_ids=line["image_ids"][:1]), ensure_ascii=False) + "\n"
                             for line in lines))
    run = testbed.evaluate("--datapath", str(own_datapath), "--model-path", str(testbed.checkpoint),
                           "--image-to-image")
    assert run.returncode == 0, run.stderr + run.stdout
    sentence = f"image→image skipped: no text of {texts} lists two images of the split"
    assert sentence in run.stdout.replace("\n", "")
    assert "│ image→image │" not in run.stdout and "│ text→image │" in run.stdout
    summary = json.loads((_local(testbed, FLICKR, testbed.checkpoint.parents[1].name) / "summary.json").read_text())
    assert summary["skipped"]["image_to_image"].startswith(sentence)
    assert set(summary["recall"]) == {"text_to_image", "image_to_text"}


def test_a_comparison_gets_an_image_to_image_column_group(testbed, second_checkpoint):
    testbed.write_config(models={"team": {"path": str(testbed.checkpoint)}, "baseline": {"path": str(second_checkpoint)}})
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--dataset-name", MUGE.name, "--split", MUGE.split,
                           "--model", "team", "--model", "baseline", "--image-to-image", "--knn", "fast", timeout=600)
    assert run.returncode == 0, run.stderr + run.stdout
    folder = testbed.results_dir / MUGE.name / MUGE.split
    document = json.loads((folder / "comparison.json").read_text())
    for row in document["models"]:
        pulled = json.loads((folder / row["label"] / I2I).read_text())
        assert row["recall"]["image_to_image"]["map10"] == pulled["scoreJson"]["map10"]
    team = document["models"][0]
    assert team["delta"]["image_to_image"]["map10"] == pytest.approx(
        team["recall"]["image_to_image"]["map10"] - document["models"][1]["recall"]["image_to_image"]["map10"])
    assert "image→image mAP@10" in (folder / "comparison.md").read_text()
    assert "i2i_map10" in (folder / "comparison.csv").read_text().splitlines()[0].split(",")


def test_a_sweep_evaluates_image_to_image_in_every_cell(testbed, second_checkpoint, tmp_path):
    folder = tmp_path / "i2i sweep" / "experiments" / "i2i_exp" / "checkpoints"
    folder.mkdir(parents=True)
    os.link(testbed.checkpoint, folder / "epoch_1.pt")
    os.link(second_checkpoint, folder / "epoch_2.pt")
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--dataset-name", MUGE.name, "--split", MUGE.split,
                           "--model-path", str(folder), "--image-to-image", "--knn", "fast", "--json", timeout=600)
    assert run.returncode == 0, run.stderr + run.stdout
    document = json.loads(run.stdout)  # one dataset split: one comparison
    assert [(row["label"], row["epoch"]) for row in document["models"]] == [("i2i_exp@epoch_1", 1),
                                                                             ("i2i_exp@epoch_2", 2)]
    maps = set()
    for row in document["models"]:
        local = _local(testbed, MUGE, row["label"])
        pulled = json.loads((local / I2I).read_text())
        assert row["recall"]["image_to_image"]["map10"] == pulled["scoreJson"]["map10"]
        server_dir = Path(json.loads((local / "summary.json").read_text())["server_output_dir"])
        _assert_equal_scores(pulled, _expected(testbed.datapath, server_dir, MUGE))
        maps.add(pulled["scoreJson"]["map10"])
    assert len(maps) == 2  # two checkpoints, two sets of features, two answers
