"""Numbers you can put in a paper, the pure parts: the chance level against an exact count, the
trap warnings, comparability footnotes, the published references, CLIP_benchmark's keys."""
from __future__ import annotations

import csv
import io
import itertools
import math

import pytest

from evalkit import comparability, traps
from evalkit.comparison import ModelResult, build_comparison, clip_benchmark_metrics, to_csv, to_markdown, \
    with_references
from evalkit.config import Settings
from evalkit.evaluation import Evaluation
from evalkit.provenance import build_provenance, scripts_used
from evalkit.references import all_references, find, mismatch, names


def exact_chance(gallery: int, relevant: int, k: int) -> float:
    """Every ranking's top k counted by brute force: the share that holds a relevant item."""
    items = range(gallery)
    tops = list(itertools.combinations(items, k))
    return sum(any(item < relevant for item in top) for top in tops) / len(tops)


@pytest.mark.parametrize("gallery, relevant, k", [(8, 1, 1), (8, 1, 3), (9, 2, 3), (10, 5, 5), (7, 3, 5), (6, 1, 6)])
def test_chance_probability_is_the_exact_share_of_rankings(gallery, relevant, k):
    assert traps.chance_probability(gallery, relevant, k) == pytest.approx(exact_chance(gallery, relevant, k))


def test_chance_bound_is_mean_plus_z_standard_deviations():
    # Flickr30K-CN test, text→image R@1: 5000 queries, 1000 images, one relevant each
    expected, bound = traps.chance_bound(5000, 1000, 1, 1)
    assert expected == pytest.approx(0.1)
    assert bound == pytest.approx(100 * (5 + 3.090232 * math.sqrt(5000 * 0.001 * 0.999)) / 5000, rel=1e-6)


TINY = {"name": "Flickr30k-CN", "split": "valid", "num_images": 20, "num_texts": 80, "num_pairs": 80}
FLICKR_TEST = {"name": "Flickr30k-CN", "split": "test", "num_images": 1000, "num_texts": 5000, "num_pairs": 5000}


def recall(t2i: tuple, i2t: tuple) -> dict:
    keys = ("r1", "r5", "r10", "mean_recall")
    return {"text_to_image": dict(zip(keys, t2i)), "image_to_text": dict(zip(keys, i2t))}


@pytest.mark.parametrize("dataset, found, is_chance", [
    (TINY, recall((6.25, 27.5, 55.0, 29.6), (10.0, 35.0, 50.0, 31.7)), True),    # the test bed's random weights
    (TINY, recall((40.0, 80.0, 95.0, 71.7), (60.0, 95.0, 100.0, 85.0)), False),  # clearly above chance
    (FLICKR_TEST, recall((0.1, 0.5, 1.0, 0.5), (0.1, 0.5, 1.0, 0.5)), True),
    (FLICKR_TEST, recall((79.1, 94.8, 97.4, 90.4), (93.5, 99.0, 99.5, 97.3)), False),  # the published ViT-B-16
    (FLICKR_TEST, recall((0.2, 0.7, 1.3, 0.7), (0.3, 0.9, 1.6, 0.9)), True),  # noise, within the bound
    (FLICKR_TEST, recall((0.6, 0.5, 1.0, 0.7), (0.1, 0.5, 1.0, 0.5)), False),  # R@1 0.6 %: 6x chance, 5000 queries
    ({**TINY, "num_pairs": None}, recall((6.25, 27.5, 55.0, 29.6), (10.0, 35.0, 50.0, 31.7)), False),  # no counts
])
def test_chance_warning_fires_only_within_the_random_ranking_bound(dataset, found, is_chance):
    warning = traps.chance_warning(found, dataset)
    assert (warning is not None) == is_chance
    if warning:
        assert "99.9% confidence" in warning and "random weights, the wrong towers or the wrong tokenizer" in warning


@pytest.mark.parametrize("name, length, warned", [
    ("Flickr30k-CN", 24, True), ("MUGE", 64, True), ("COCO-CN", 52, False), ("my_shop_data", 24, False),
    ("flickr30k_cn", 32, True),
])
def test_context_length_warning_on_the_standard_datasets(name, length, warned):
    warning = traps.context_warning({"context_length": length}, {"name": name})
    assert (warning is not None) == warned
    if warned:
        assert f"context_length {length} on {name}" in warning and "set context_length: 52" in warning


@pytest.mark.parametrize("dataset, warned", [
    (FLICKR_TEST, False), (TINY, True), ({**FLICKR_TEST, "num_texts": 4999}, True),
    ({"name": "MUGE", "split": "valid", "num_images": 29806, "num_texts": 5008}, False),
    ({"name": "MUGE", "split": "valid", "num_images": 29000, "num_texts": 5008}, True),
    ({"name": "other", "split": "valid", "num_images": 3, "num_texts": 5}, False),
])
def test_counts_warning_against_the_published_split(dataset, warned):
    assert (traps.counts_warning(dataset) is not None) == warned


SETTINGS = Settings(device="cpu", context_length=52)
EVALUATION = Evaluation(checkpoint="/c/team.pt", label="team", vision_model="ViT-B-16",
                        text_model="RoBERTa-wwm-ext-base-chinese", dataset="Flickr30k-CN", split="test")
HASHES = {name: f"{index:064x}" for index, name in enumerate(
    ("extract_features.py", "make_topk_predictions.py", "make_topk_predictions_tr.py",
     "transform_ir_annotation_to_tr.py", "evaluation.py", "evaluation_tr.py"))}


def provenance(settings: Settings = SETTINGS, lmdb: str = "records:aa", scripts: dict = HASHES) -> dict:
    facts = {"server": {"hostname": "h", "upstream_scripts_sha256": scripts},
             "checkpoint": {"path": "/c/team.pt", "sha256": "ff"},
             "dataset": {**FLICKR_TEST, "texts_sha256": "bb", "lmdb_fingerprint": lmdb}}
    return build_provenance(facts, settings, EVALUATION, "0.1.0")


def test_provenance_names_the_settings_and_only_the_scripts_that_ran():
    found = provenance()
    assert found["settings"]["precision"] == "fp32" and found["settings"]["context_length"] == 52
    assert sorted(found["upstream_scripts_sha256"]) == sorted(HASHES)
    fast = provenance(Settings(device="cuda", knn="fast"))
    assert fast["settings"]["precision"] == "amp"
    assert "make_topk_predictions.py" not in fast["upstream_scripts_sha256"]
    assert scripts_used(SETTINGS, EVALUATION.__class__(**{**EVALUATION.__dict__, "skip_image_to_text": True})) \
        == ("extract_features.py", "make_topk_predictions.py", "evaluation.py")
    assert build_provenance(None, SETTINGS, EVALUATION, "0.1.0")["problem"]


def row(label: str, origin: dict | None, warnings: tuple = ()) -> ModelResult:
    return ModelResult(label, f"/c/{label}.pt", "ok", recall((50.0, 80.0, 90.0, 73.3), (60.0, 85.0, 92.0, 79.0)),
                       provenance=origin, warnings=warnings)


@pytest.mark.parametrize("changed, footnote", [
    (provenance(Settings(device="cpu", context_length=24)), "context length 24 (the others: 52)"),
    (provenance(Settings(device="cuda")), "precision amp (the others: fp32)"),
    (provenance(Settings(device="cpu", knn="fast")), "KNN fast (the others: upstream)"),
    (provenance(Settings(device="cpu", top_k=20)), "top_k 20 (the others: 10)"),
    (provenance(lmdb="records:cc"), "dataset images records:cc"),
    (provenance(scripts={**HASHES, "evaluation.py": "e" * 64}), "upstream scripts sha256"),
])
def test_the_row_that_differs_is_footnoted_and_not_comparable(changed, footnote):
    rows = [row("team", provenance()), row("large", changed), row("baseline", provenance())]
    notes = comparability.differences(rows)
    assert list(notes) == ["large"] and notes["large"][0].startswith(footnote)
    comparison = build_comparison(rows, "Flickr30k-CN", "test", "t")
    assert not comparison.is_comparable
    assert "| large †1 |" in to_markdown(comparison) and f"†1 large: {footnote}" in to_markdown(comparison)


def test_fast_and_upstream_knn_compare_their_shared_scripts_only():
    fast = provenance(Settings(device="cpu", knn="fast"))
    rows = [row("team", provenance()), row("large", fast), row("huge", provenance())]
    assert comparability.differences(rows) == {"large": ["KNN fast (the others: upstream)"]}


def test_rows_made_alike_are_comparable_and_unknown_provenance_is_noted_not_refused():
    rows = [row("team", provenance()), row("large", provenance()), row("old", None)]
    comparison = build_comparison(rows, "Flickr30k-CN", "test", "t")
    assert comparison.is_comparable and comparison.footnotes == {"old": [comparability.UNKNOWN]}
    older_only = build_comparison([row("a", None), row("b", None)], "Flickr30k-CN", "test", "t")
    assert older_only.footnotes == {} and "†" not in to_markdown(older_only)


def test_issue_quoted_numbers_are_the_data_files():
    vit = find("vit-b-16-flickr30k-cn-finetune")
    assert vit.split == "test" and vit.recall == {"text_to_image": {"r1": 79.1, "r5": 94.8, "r10": 97.4},
                                                  "image_to_text": {"r1": 93.5, "r5": 99.0, "r10": 99.5}}
    assert find("vit-b-16-flickr30k-cn-zeroshot").recall["text_to_image"] == {"r1": 62.7, "r5": 86.9, "r10": 92.8}
    muge = find("ViT-B-16-MUGE-finetune")
    assert (muge.split, muge.recall) == ("valid", {"text_to_image": {"r1": 58.4, "r5": 83.6, "r10": 90.0,
                                                                     "mean_recall": 77.4}})
    assert len(names()) == len(set(names())) == 30  # 5 models x (MUGE, Flickr30K-CN, COCO-CN) x 2 setups
    assert all(r.source["repository"] == "OFA-Sys/Chinese-CLIP" and r.source["section"] for r in all_references())
    assert find("nope") is None


@pytest.mark.parametrize("dataset, split, problem", [
    ("Flickr30k-CN", "test", None), ("flickr30k_cn", "test", None),
    ("Flickr30k-CN", "valid", "measured on the test split, these rows on valid"),
    ("MUGE", "test", "measured on Flickr30k-CN test, not MUGE"),
])
def test_a_reference_from_another_split_or_dataset_is_flagged(dataset, split, problem):
    found = mismatch(find("vit-b-16-flickr30k-cn-finetune"), dataset, split)
    assert (found is None) if problem is None else (problem in found)


def test_reference_rows_in_markdown_csv_and_json_with_deltas_against_the_model():
    comparison = with_references(build_comparison([row("team", provenance())], "Flickr30k-CN", "test", "t"),
                                 [find("vit-b-16-flickr30k-cn-finetune")])
    [published] = comparison.to_dict()["references"]
    assert published["delta"]["text_to_image"]["r1"] == pytest.approx(79.1 - 50.0)
    assert published["recall"]["text_to_image"]["mean_recall"] == 90.43
    assert published["metrics"]["image_retrieval_recall@1"] == pytest.approx(0.791)
    assert comparison.to_dict()["reference_anchor"] == "team"
    assert "| *published: vit-b-16-flickr30k-cn-finetune* | 79.10 (+29.10) |" in to_markdown(comparison)
    rows = list(csv.DictReader(io.StringIO(to_csv(comparison))))
    assert (rows[1]["status"], rows[1]["t2i_r1"], rows[1]["delta_t2i_r1"]) == ("published", "79.1", "29.1")
    assert "Results.md" in rows[1]["checkpoint"]


def test_clip_benchmark_keys_are_fractions_of_the_right_direction():
    assert clip_benchmark_metrics(recall((50.0, 80.0, 90.0, 73.3), (60.0, 85.0, 92.5, 79.2))) == {
        "image_retrieval_recall@1": 0.5, "image_retrieval_recall@5": 0.8, "image_retrieval_recall@10": 0.9,
        "text_retrieval_recall@1": 0.6, "text_retrieval_recall@5": 0.85, "text_retrieval_recall@10": 0.925}
