"""The seed's one-shot command, pointed at the real test bed, gives upstream's exact recall."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import DATASETS, DatasetSpec, run_upstream_by_hand

pytestmark = pytest.mark.integration

MODEL_ARGS = ("--vision-model", "RN50", "--text-model", "RBT3-chinese")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _recall(truth: dict[int, set[int]], predictions: dict[int, list[int]]) -> dict[str, float]:
    """Recall@k computed here, independently of upstream: a query hits if any truth is in top k."""
    hits = {k: sum(bool(truth[q] & set(predictions[q][:k])) for q in truth) for k in (1, 5, 10)}
    r = {f"r{k}": 100.0 * hits[k] / len(truth) for k in hits}
    r["mean_recall"] = (r["r1"] + r["r5"] + r["r10"]) / 3
    return r


def _independent_recalls(texts: Path, server_dir: Path, split: str) -> dict[str, dict[str, float]]:
    annotations = _read_jsonl(texts)
    text_truth = {a["text_id"]: set(a["image_ids"]) for a in annotations}
    image_truth: dict[int, set[int]] = {}
    for a in annotations:
        for image_id in a["image_ids"]:
            image_truth.setdefault(image_id, set()).add(a["text_id"])
    t2i = {p["text_id"]: p["image_ids"] for p in _read_jsonl(server_dir / f"{split}_predictions.jsonl")}
    i2t = {p["image_id"]: p["text_ids"] for p in _read_jsonl(server_dir / f"{split}_tr_predictions.jsonl")}
    return {"text_to_image": _recall(text_truth, t2i), "image_to_text": _recall(image_truth, i2t)}


def _independent_top10(server_dir: Path, split: str) -> dict[int, list[int]]:
    """Text→image KNN by brute force over the feature files, in plain Python."""
    images = [(o["image_id"], o["feature"]) for o in _read_jsonl(server_dir / f"{split}_imgs.img_feat.jsonl")]
    ranked = {}
    for text in _read_jsonl(server_dir / f"{split}_texts.txt_feat.jsonl"):
        scores = [(image_id, sum(a * b for a, b in zip(text["feature"], feature)))
                  for image_id, feature in images]
        ranked[text["text_id"]] = [i for i, _ in sorted(scores, key=lambda s: s[1], reverse=True)[:10]]
    return ranked


@pytest.mark.parametrize("spec", DATASETS, ids=lambda s: f"{s.name}-{s.split}")
def test_one_shot_recall_equals_upstream_run_by_hand(testbed, spec: DatasetSpec, tmp_path):
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--dataset-name", spec.name,
                           "--model-path", str(testbed.checkpoint), "--split", spec.split, *MODEL_ARGS)
    assert run.returncode == 0, run.stderr + run.stdout

    label = "muge_finetune_rn50_rbt3_team_distill"
    local = testbed.results_dir / spec.name / spec.split / label
    pulled = {d: json.loads((local / f"{d}_results.json").read_text()) for d in ("text_to_image", "image_to_text")}
    by_hand = run_upstream_by_hand(testbed, spec, tmp_path / "by-hand")
    assert pulled == by_hand  # every number, both directions, exactly

    summary = json.loads((local / "summary.json").read_text())
    server_dir = Path(summary["server_output_dir"])
    texts = testbed.datapath / "datasets" / spec.name / f"{spec.split}_texts.jsonl"
    independent = _independent_recalls(texts, server_dir, spec.split)
    for direction, recall in independent.items():
        for key, value in recall.items():
            assert summary["recall"][direction][key] == pytest.approx(value, abs=1e-9), (direction, key)

    predicted = {p["text_id"]: p["image_ids"] for p in _read_jsonl(server_dir / f"{spec.split}_predictions.jsonl")}
    assert predicted == _independent_top10(server_dir, spec.split)

    # The table a user reads: both rows, percent with 2 decimals, from the pulled JSON.
    t2i = pulled["text_to_image"]["scoreJson"]
    assert f"{t2i['r1']:.2f}" in run.stdout and f"{t2i['mean_recall']:.2f}" in run.stdout
    assert "text→image" in run.stdout and "image→text" in run.stdout


def test_one_shot_files_stay_out_of_the_dataset_and_apart_per_checkpoint(testbed, second_checkpoint):
    dataset_dir = testbed.datapath / "datasets" / "Flickr30k-CN"
    before = sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*"))
    other = second_checkpoint
    runs = [testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(path), *MODEL_ARGS)
            for path in (testbed.checkpoint, other)]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr
    assert sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*")) == before

    summaries = [json.loads((testbed.results_dir / "Flickr30k-CN" / "valid" / label / "summary.json").read_text())
                 for label in ("muge_finetune_rn50_rbt3_team_distill", "large_distill")]
    dirs = [Path(s["server_output_dir"]) for s in summaries]
    assert dirs[0] != dirs[1] and all(d.is_dir() for d in dirs)
    features = [(d / "valid_imgs.img_feat.jsonl").read_text() for d in dirs]
    assert features[0] != features[1]  # different checkpoints, different features, both kept
    assert summaries[0]["recall"] != summaries[1]["recall"]
    assert str(dirs[0]) in runs[0].stdout  # the run says where its server files are


@pytest.mark.parametrize("spec", DATASETS, ids=lambda s: f"{s.name}-{s.split}")
def test_fast_knn_gives_upstreams_recall_and_predictions(testbed, spec: DatasetSpec, tmp_path):
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--dataset-name", spec.name, "--split", spec.split,
                           "--model-path", str(testbed.checkpoint), "--knn", "fast", *MODEL_ARGS)
    assert run.returncode == 0, run.stderr + run.stdout
    assert "KNN text→image + image→text (fast)" in run.stdout
    local = testbed.results_dir / spec.name / spec.split / "muge_finetune_rn50_rbt3_team_distill"
    pulled = {d: json.loads((local / f"{d}_results.json").read_text()) for d in ("text_to_image", "image_to_text")}
    assert pulled == run_upstream_by_hand(testbed, spec, tmp_path / "by-hand")
    server_dir = Path(json.loads((local / "summary.json").read_text())["server_output_dir"])
    for name in ("t2i.jsonl", "i2t.jsonl"):  # the prediction files themselves, line for line
        upstream = (tmp_path / "by-hand" / name).read_text()
        ours = (server_dir / f"{spec.split}_{'tr_' if name == 'i2t.jsonl' else ''}predictions.jsonl").read_text()
        assert ours == upstream, name
