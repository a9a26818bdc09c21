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
    # nothing large came back: each image's top-5 stays on the server; here, its hit bits and class
    [top5] = [path for path in testbed.server_outputs.rglob("zeroshot_top5.jsonl") if NAME in path.parts]
    assert len(top5.read_text().splitlines()) == 36
    assert not [path.name for path in local.rglob("*") if "top5" in path.name or path.suffix == ".jsonl"]
    kept = json.loads((local / "query_hits.json").read_text())["zeroshot_classification"]
    assert [len(kept["hits"]["top1"]), len(kept["hits"]["top5"]), len(kept["targets"])] == [36, 36, 36]
    assert set(kept["hits"]["top1"] + kept["hits"]["top5"]) <= {"0", "1"}


@pytest.fixture(scope="session")
def numpy_before_2_4(server_python) -> Path:
    """numpy 2.3.5 in a folder of its own (pip install --target), put first on PYTHONPATH: the
    numpy upstream's accuracy() still runs with. Installed once per checkout."""
    import fcntl
    import subprocess
    from .conftest import REPO, _unavailable
    target = REPO / ".testbed" / "numpy-2.3.5"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "numpy").is_dir():
            done = subprocess.run([str(server_python), "-m", "pip", "install", "-q", "--target", str(target),
                                   "numpy==2.3.5"], capture_output=True, text=True)
            if done.returncode != 0:
                _unavailable(f"pip install numpy==2.3.5 failed: {done.stderr.strip()[-300:]}")
    return target


def run_zeroshot_by_hand(bed, dataset: Path, numpy_dir: Path, workdir: Path, checkpoint: Path) -> tuple[float, list]:
    """zeroshot_evaluation.py as the seed's user runs it (run_scripts/zeroshot_eval.sh's
    arguments), with numpy < 2.4 first on PYTHONPATH and, on the CPU, only the CPU launcher
    between python and the script. Returns (its printed zeroshot-top1, its predictions [N][C])."""
    import os
    import subprocess
    from .conftest import CPU_LAUNCHER, DEVICE
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{numpy_dir}:{bed.chinese_clip_dir}"}
    launcher = [str(CPU_LAUNCHER)] if DEVICE == "cpu" else []
    done = subprocess.run([str(bed.server_python), *launcher, "cn_clip/eval/zeroshot_evaluation.py",
                           "--datapath", str(dataset / "test"), "--label-file", str(dataset / "label_cn.txt"),
                           "--dataset", dataset.name, "--save-dir", str(workdir), "--img-batch-size", "32",
                           "--context-length", "52", "--resume", str(checkpoint), "--vision-model", "RN50",
                           "--text-model", "RBT3-chinese", "--num-workers", "0",
                           *(["--precision", "fp32"] if DEVICE == "cpu" else [])],
                          cwd=bed.chinese_clip_dir, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("zeroshot-top1: ")]
    predictions = json.loads((workdir / f"{dataset.name}.json").read_text())["predictions"]
    return float(printed[-1].split(": ")[1]), predictions[0]


def _targets(dataset: Path) -> list[int]:
    """ImageFolder's targets, worked out here: class folders sorted, each folder's images sorted."""
    folders = sorted(p for p in (dataset / "test").iterdir() if p.is_dir())
    return [index for index, folder in enumerate(folders) for _ in sorted(folder.glob("*.jpg"))]


def test_numbers_equal_upstream_s_script_run_by_hand_with_older_numpy(testbed, classification, numpy_before_2_4,
                                                                       tmp_path):
    run = testbed.evaluate("--dataset-name", NAME, "--model-path", str(testbed.checkpoint), *MODEL_ARGS)
    assert run.returncode == 0, run.stderr + run.stdout
    result = json.loads((testbed.results_dir / NAME / "test" / LABEL /
                         "zeroshot_classification_results.json").read_text())
    assert "numpy >= 2.4: upstream's accuracy() counted with .item() instead of float() of an array" in result["changes"]

    top1, predictions = run_zeroshot_by_hand(testbed, classification, numpy_before_2_4, tmp_path / "by-hand",
                                             testbed.checkpoint)
    assert result["top1"] == top1 * 100
    targets = _targets(classification)
    ranked = [sorted(range(len(row)), key=lambda c: -row[c])[:5] for row in predictions]
    assert result["top5"] == pytest.approx(100 * sum(t in r for t, r in zip(targets, ranked)) / len(targets), abs=1e-9)
    per_class: dict[int, list[bool]] = {}
    for target, row in zip(targets, ranked):
        per_class.setdefault(target, []).append(row[0] == target)
    mean = 100 * sum(sum(hits) / len(hits) for hits in per_class.values()) / len(per_class)
    assert result["mean_per_class_recall"] == pytest.approx(mean, abs=1e-9)


def test_a_label_file_one_line_short_is_refused_before_anything_runs(testbed, classification, tmp_path):
    import shutil
    copy = tmp_path / "数据 copy"
    shutil.copytree(classification, copy / "datasets" / NAME)
    labels = copy / "datasets" / NAME / "label_cn.txt"
    labels.write_text("".join(labels.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8")
    testbed.write_config(datapath=str(copy))
    run = testbed.evaluate("--dataset-name", NAME, "--model-path", str(testbed.checkpoint), *MODEL_ARGS)
    assert run.returncode == 17, run.stderr + run.stdout
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert error == [f"error: {labels} has 11 class names but {copy}/datasets/{NAME}/test has 12 class folders"]
    assert "write one line per class folder" in run.stderr
    assert not (testbed.results_dir / NAME).exists()
    assert not (testbed.server_outputs / NAME).exists()  # no step ran: not even the output directory


def test_two_checkpoints_compared_with_intervals_and_mcnemar_p_values(testbed, classification, second_checkpoint):
    testbed.write_config(models={"baseline": {"path": str(testbed.checkpoint)},
                                 "student": {"path": str(second_checkpoint)}})
    run = testbed.evaluate("--dataset-name", NAME, "--model", "baseline", "--model", "student", "--json",
                           timeout=600)
    assert run.returncode == 0, run.stderr + run.stdout
    document = json.loads(run.stdout)
    assert (document["dataset"], document["split"], document["baseline"]) == (NAME, "test", "baseline")
    rows = {row["label"]: row for row in document["models"]}
    for row in rows.values():
        assert set(row["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
        assert row["metrics"]["acc1"] == round(row["recall"]["zeroshot_classification"]["top1"] / 100, 10)
        low, high = row["ci95"]["zeroshot_classification"]["top1"]
        assert low <= row["recall"]["zeroshot_classification"]["top1"] <= high
    tests = rows["student"]["significance"]["zeroshot_classification"]
    assert set(tests) == {"top1", "top5", "mean_per_class_recall"}
    assert all(0 < test["p_value"] <= 1 for test in tests.values())
    assert tests["top1"]["delta"] == pytest.approx(rows["student"]["delta"]["zeroshot_classification"]["top1"])
    markdown = (testbed.results_dir / NAME / "test" / "comparison.md").read_text(encoding="utf-8")
    assert markdown.splitlines()[0] == f"Zero-shot classification (%) on {NAME} test; (±x.xx) against baseline"


def test_a_matrix_of_a_retrieval_and_a_classification_dataset_runs_in_one_command(testbed, classification):
    run = testbed.evaluate("--dataset-name", "Flickr30k-CN", "--dataset-name", NAME,
                           "--model-path", str(testbed.checkpoint), *MODEL_ARGS, "--json", timeout=600)
    assert run.returncode == 0, run.stderr + run.stdout
    retrieval, classified = json.loads(run.stdout)
    assert (retrieval["dataset"], retrieval["split"], classified["dataset"], classified["split"]) == \
        ("Flickr30k-CN", "valid", NAME, "test")
    assert set(retrieval["models"][0]["recall"]) == {"text_to_image", "image_to_text"}
    assert set(classified["models"][0]["recall"]) == {"zeroshot_classification"}
    assert (testbed.results_dir / NAME / "test" / LABEL / "zeroshot_classification_results.json").is_file()
    assert (testbed.results_dir / "Flickr30k-CN" / "valid" / LABEL / "text_to_image_results.json").is_file()


def test_a_sweep_and_a_watch_of_a_training_folder_on_a_classification_dataset(testbed, classification, tmp_path):
    """epoch1.pt … epoch4.pt and epoch_latest.pt as Chinese-CLIP's training writes them. A sweep of
    epoch[1-3].pt: a row per epoch, the best its highest top-1 (ties: the lower epoch), `results
    --best` the same row. A watch of the folder up to epoch 4 then evaluates only epoch4.pt (its
    alias epoch_latest.pt never), shows the four epochs' table, and ends by itself."""
    import subprocess
    import sys
    from .conftest import REPO
    from .test_training_folders import WRITE_TRAINING_FOLDER
    folder = tmp_path / "training runs" / "experiments" / "team_distill" / "checkpoints"
    folder.mkdir(parents=True)
    subprocess.run([str(testbed.server_python), "-c", WRITE_TRAINING_FOLDER, str(testbed.checkpoint), str(folder),
                    "4"], check=True, capture_output=True, timeout=600)

    swept = folder / "epoch[1-3].pt"
    run = testbed.evaluate("--dataset-name", NAME, "--model-path", str(swept), *MODEL_ARGS, "--json", timeout=1800)
    assert run.returncode == 0, run.stderr + run.stdout
    assert f"{swept}: 3 checkpoints" in " ".join(run.stderr.split()), run.stderr  # a long path wraps
    document = json.loads(run.stdout)
    assert (document["dataset"], document["split"]) == (NAME, "test")
    rows = document["models"]
    assert [(r["label"], r["epoch"], r["step"], r["status"]) for r in rows] == [
        (f"team_distill@epoch{n}", n, n * 100, "ok") for n in (1, 2, 3)]
    assert all(set(r["recall"]) == {"zeroshot_classification"} for r in rows)
    assert [r["epoch"] for r in rows if r["best"]] == [highest_top1(rows)]

    results = subprocess.run([sys.executable, "-m", "evalkit", "results", "--config", str(testbed.config), "--best",
                              "--dataset-name", NAME, "--split", "test", "--format", "json"],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
    assert results.returncode == 0, results.stderr
    [kept] = [found for found in json.loads(results.stdout) if found["dataset"] == NAME]
    assert [(r["label"], r["recall"]) for r in kept["models"]] == \
        [(r["label"], r["recall"]) for r in rows if r["best"]]

    logs = sorted((testbed.results_dir / "logs").iterdir())
    testbed.write_config(watch_settle=1, watch_interval=1)
    watched = testbed.evaluate("--dataset-name", NAME, "--model-path", str(folder), *MODEL_ARGS, "--watch",
                               "--until-epoch", "4", timeout=600)
    assert watched.returncode == 0, watched.stderr + watched.stdout
    assert len(sorted((testbed.results_dir / "logs").iterdir())) == len(logs) + 1  # epoch4.pt only
    assert "failed" not in watched.stderr and "Zero-shot classification (%)" in watched.stdout
    comparison = json.loads((testbed.results_dir / NAME / "test" / "comparison.json").read_text())
    assert [(r["label"], r["epoch"]) for r in comparison["models"]] == [(f"team_distill@epoch{n}", n) for n in (1, 2, 3, 4)]
    assert [r["epoch"] for r in comparison["models"] if r["best"]] == [highest_top1(comparison["models"])]


def highest_top1(rows: list[dict]) -> int:
    """The epoch of the highest top-1; of a tie, the lower epoch."""
    return min((r for r in rows), key=lambda r: (-r["recall"]["zeroshot_classification"]["top1"], r["epoch"]))["epoch"]
