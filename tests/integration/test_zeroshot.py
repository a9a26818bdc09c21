"""Zero-shot image classification on the test bed: a dataset in upstream's layout (label_cn.txt,
test/<3-digit id>/ images, 12 classes), the random RN50 + RBT3 checkpoints, numpy >= 2.4 in the
server env, evaluated through SSH exactly as a user runs it.

The dataset is named country211 so that upstream picks its 4 templates by the folder name, as
zeroshot_evaluation.py does (the generic set is 183 templates: minutes per class on a shared CPU).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.testbed.builders import build_classification_dataset

pytestmark = pytest.mark.integration

MODEL_ARGS = ("--vision-model", "RN50", "--text-model", "RBT3-chinese")
NAME = "country211"
LABEL = "muge_finetune_rn50_rbt3_team_distill"


@pytest.fixture(scope="session")
def classification(datapath, server_python) -> Path:
    return build_classification_dataset(server_python, datapath, NAME, classes=12)


def test_one_shot_classifies_a_dataset_laid_out_for_it(testbed, classification):
    run = testbed.evaluate("--dataset-name", NAME, "--model-path", str(testbed.checkpoint), *MODEL_ARGS)
    assert run.returncode == 0, run.stderr + run.stdout
    first = run.stderr.splitlines()[0]
    assert first == (f"· {NAME}: zero-shot image classification (label_cn.txt + test/ class folders), split test "
                     "(there is no valid/ folder)")
    local = testbed.results_dir / NAME / "test" / LABEL
    result = json.loads((local / "zeroshot_classification_results.json").read_text())
    assert {key: result[key] for key in ("num_images", "num_classes", "templates")} == \
        {"num_images": 36, "num_classes": 12, "templates": "country211"}
    assert 0 <= result["top1"] <= result["top5"] <= 100
    summary = json.loads((local / "summary.json").read_text())
    assert summary["task"] == "zeroshot_classification" and summary["split"] == "test"
    assert summary["recall"]["zeroshot_classification"]["top1"] == result["top1"]
    assert summary["provenance"]["dataset"]["num_classes"] == 12
    assert summary["provenance"]["upstream_scripts_sha256"]["zeroshot_evaluation.py"]
    assert set(summary["ci95"]["zeroshot_classification"]) == {"top1", "top5", "mean_per_class_recall"}
    assert "Zero-shot classification (%)" in run.stdout and "36 images, 12 classes" in run.stdout
