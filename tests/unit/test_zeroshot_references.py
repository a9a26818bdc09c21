"""Published zero-shot classification rows in a classification comparison (--reference NAME):
the number in the column of its metric, a delta against the anchor, no interval and no test,
and the caveat of its metric, of its reproduction or of another dataset."""
from __future__ import annotations

import pytest

from evalkit.comparison import ModelResult, build_comparison, clip_benchmark_metrics, with_references
from evalkit.references import find as find_retrieval
from evalkit.zeroshot_references import comparison_rows, find

CLASSIFICATION = "zeroshot_classification"
ANCHOR = {CLASSIFICATION: {"top1": 60.0, "top5": 85.0, "mean_per_class_recall": 58.0}}


@pytest.mark.parametrize("name, dataset, recall, delta, warnings", [
    ("vit-b-16-cifar100-zeroshot-classification", "cifar-100",
     {"top1": 64.4}, {"top1": 4.4}, []),
    ("rn50-cifar10-zeroshot-classification", "CIFAR10",
     {"top1": 72.7}, {"top1": 12.7}, []),
    ("vit-b-16-fgvc-zeroshot-classification", "fgvc-aircraft-2013b-variants102",
     {"mean_per_class_recall": 12.8}, {"mean_per_class_recall": -45.2},
     ["FGVC: published with another metric than top-1: not comparable with evalkit's top-1",
      "FGVC: its published mean per-class accuracy is shown under MPCR (mean per-class recall)"]),
    ("vit-b-16-voc-zeroshot-classification", "voc-2007-classification", None, None,
     ["VOC: published with another metric than top-1: not comparable with evalkit's top-1",
      "VOC: its published 11-point mAP (83.3) has no column here"]),
    ("vit-b-16-kitti-zeroshot-classification", "kitti-distance", {"top1": 33.5}, {"top1": -26.5},
     ["KITTI: users could not reproduce this number (Chinese-CLIP issue #77)"]),
    ("vit-b-16-pc-zeroshot-classification", "patch-camelyon", {"top1": 54.0}, {"top1": -6.0},
     ["PC: users could not reproduce this number (Chinese-CLIP issue #77)"]),
    ("vit-b-16-dtd-zeroshot-classification", "cifar-100", {"top1": 43.6}, {"top1": -16.4},
     ["vit-b-16-dtd-zeroshot-classification was measured on DTD (upstream's folder dtd), not cifar-100"]),
])
def test_a_published_row_sits_in_the_column_of_its_metric_with_its_caveats(name, dataset, recall, delta, warnings):
    [row] = comparison_rows([find(name)], dataset, ANCHOR)
    assert row["label"] == f"published: {name}"
    assert row["recall"] == ({CLASSIFICATION: recall} if recall else {})
    assert row["delta"] == ({CLASSIFICATION: {k: pytest.approx(v) for k, v in delta.items()}} if delta else None)
    assert row["warnings"] == warnings
    assert "ci95" not in row and "significance" not in row


def test_without_an_anchor_a_published_row_has_no_delta():
    assert comparison_rows([find("vit-b-16-cifar100-zeroshot-classification")], "cifar-100")[0]["delta"] is None


@pytest.mark.parametrize("name", ["VIT-B-16-CIFAR100-zeroshot-classification ", "vit-h-14-imagenet-zeroshot-classification"])
def test_names_are_found_as_references_lists_them(name):
    assert find(name) is not None and find("vit-b-16-cifar-1000-zeroshot-classification") is None


def _comparison(dataset: str, recall: dict):
    rows = [ModelResult("baseline", "/c/b.pt", "ok", recall), ModelResult("student", "/c/s.pt", "ok", recall)]
    return build_comparison(rows, dataset, "test", "2026-01-01T00:00:00Z")


def test_each_table_of_a_matrix_gets_the_published_rows_of_its_own_task():
    asked = [find("vit-b-16-cifar100-zeroshot-classification"), find_retrieval("vit-b-16-flickr30k-cn-finetune")]
    classification = with_references(_comparison("cifar-100", ANCHOR), asked)
    retrieval = with_references(_comparison("Flickr30k-CN", {"text_to_image": {"r1": 50.0, "r5": 80.0, "r10": 90.0,
                                                                                "mean_recall": 73.3}}), asked)
    assert [row["name"] for row in classification.references] == ["vit-b-16-cifar100-zeroshot-classification"]
    assert [row["name"] for row in retrieval.references] == ["vit-b-16-flickr30k-cn-finetune"]
    only_retrieval = with_references(_comparison("cifar-100", ANCHOR), asked[1:])
    assert only_retrieval.references == () and only_retrieval.reference_anchor is None


def test_a_published_row_carries_only_the_clip_benchmark_keys_it_has():
    assert clip_benchmark_metrics({CLASSIFICATION: {"top1": 64.4}}) == {"acc1": 0.644}
    assert clip_benchmark_metrics({CLASSIFICATION: {"mean_per_class_recall": 12.8}}) == {"mean_per_class_recall": 0.128}
