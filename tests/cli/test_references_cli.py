"""`python -m evalkit references`, `--reference NAME` and `results --strict` from the command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalkit.cli import evaluate_command, main
from evalkit.errors import NotComparable


@pytest.fixture(autouse=True)
def wide_console(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)


def write_summary(results: Path, label: str, context_length: int) -> None:
    folder = results / "Flickr30k-CN" / "test" / label
    folder.mkdir(parents=True)
    recall = {"r1": 50.0, "r5": 80.0, "r10": 90.0, "mean_recall": 73.33}
    provenance = {"dataset": {"lmdb_fingerprint": "records:aa", "texts_sha256": "bb"},
                  "settings": {"context_length": context_length, "precision": "amp", "knn": "upstream", "top_k": 10},
                  "upstream_scripts_sha256": {"evaluation.py": "cc"}}
    (folder / "summary.json").write_text(json.dumps({
        "label": label, "checkpoint": f"/c/{label}.pt", "recall": {"text_to_image": recall, "image_to_text": recall},
        "provenance": provenance, "warnings": [], "timestamp": "2026-11-27T00:00:00+00:00"}))


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    for label, length in (("team", 52), ("large", 24), ("baseline", 52)):
        write_summary(root, label, length)
    return root


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_references_lists_every_published_result():
    shown = invoke("references")
    assert shown.exit_code == 0, shown.stderr
    assert "vit-b-16-flickr30k-cn-finetune" in shown.stdout and "79.1/94.8/97.4" in shown.stdout
    entries = json.loads(invoke("references", "--json").stdout)
    assert len(entries) == 30 and all(entry["source"]["file"] == "Results.md" for entry in entries)


@pytest.mark.parametrize("command", [("results",), ("evaluate", "--model-path", "/c/x.pt", "--dry-run")])
def test_an_unknown_reference_lists_the_known_ones_and_exits_2(command):
    shown = invoke(*command, "--reference", "vit-b-16-flickr-typo")
    assert shown.exit_code == 2
    assert "no published result is named 'vit-b-16-flickr-typo'" in shown.stderr
    assert "vit-b-16-flickr30k-cn-finetune" in shown.stderr and "Traceback" not in shown.stderr


def test_results_strict_refuses_rows_made_differently(results):
    shown = invoke("results", "--results-dir", str(results), "--strict")
    assert shown.exit_code == NotComparable.exit_code
    assert "large: context length 24 (the others: 52)" in shown.stderr and shown.stdout == ""
    footnoted = invoke("results", "--results-dir", str(results), "--format", "markdown")
    assert footnoted.exit_code == 0 and "| large †1 |" in footnoted.stdout


def test_results_strict_passes_rows_made_alike(results):
    shown = invoke("results", "--results-dir", str(results), "--strict", "--reference",
                   "vit-b-16-flickr30k-cn-finetune", "--format", "csv")
    assert shown.exit_code == NotComparable.exit_code  # large is still there
    (results / "Flickr30k-CN" / "test" / "large" / "summary.json").unlink()
    shown = invoke("results", "--results-dir", str(results), "--strict", "--reference",
                   "vit-b-16-flickr30k-cn-finetune", "--format", "csv")
    assert shown.exit_code == 0, shown.stderr
    assert "published: vit-b-16-flickr30k-cn-finetune,published,79.1,94.8,97.4" in shown.stdout


def test_evaluate_accepts_the_reference_option():
    shown = CliRunner().invoke(evaluate_command, ["--model-path", "/c/x.pt", "--dry-run", "--reference",
                                                  "VIT-B-16-MUGE-finetune"])
    assert shown.exit_code == 0, shown.stderr


def test_piped_references_keep_every_name_whole_for_grep(monkeypatch):
    # `python -m evalkit references | grep vit-b-16-flickr30k-cn-finetune`: no terminal, no COLUMNS
    import subprocess
    import sys
    monkeypatch.delenv("COLUMNS")
    env = {name: value for name, value in __import__("os").environ.items() if name not in ("COLUMNS", "LINES")}
    piped = subprocess.run([sys.executable, "-m", "evalkit", "references"], capture_output=True, text=True,
                           env=env, timeout=60, check=True)
    [row] = [line for line in piped.stdout.splitlines() if "vit-b-16-flickr30k-cn-finetune" in line]
    assert "Flickr30k-CN" in row


@pytest.mark.parametrize("command", [("references", "--classification"), ("references",)])
def test_piped_classification_references_show_each_name_on_its_numbers_line_for_grep(command):
    # `python -m evalkit references --classification | grep vit-b-16-cifar100-zeroshot-classification`
    import os
    import subprocess
    import sys
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    piped = subprocess.run([sys.executable, "-m", "evalkit", *command], capture_output=True, text=True,
                           env=env, timeout=60, check=True)
    [row] = [line for line in piped.stdout.splitlines() if "vit-b-16-cifar100-zeroshot-classification" in line]
    assert "CIFAR100" in row and "64.4" in row
    [voc] = [line for line in piped.stdout.splitlines() if "vit-l-14-336-voc-zeroshot-classification" in line]
    assert "VOC†" in voc and "11-pt mAP" in voc and "84.9" in voc
    assert sum("-zeroshot-classification" in line for line in piped.stdout.splitlines()) == 5 * 11


def test_in_a_terminal_classification_references_are_a_grid_that_says_how_its_numbers_are_named():
    from rich.console import Console

    from evalkit import view
    from evalkit.zeroshot_references import classification_rows, dataset_notes
    terminal = Console(force_terminal=True, color_system=None, width=80, highlight=False, record=True)
    view.show_classification_references(terminal, classification_rows(), dataset_notes())
    lines = terminal.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("│ CIFAR100 ") and "64.4" in line for line in lines)
    assert "names for --reference: <model>-<dataset>-zeroshot-classification, e.g." in lines
    assert "  vit-b-16-cifar100-zeroshot-classification (piped: a line per name)" in lines


def test_references_list_the_published_zero_shot_classification_with_each_metric():
    shown = invoke("references")
    assert shown.exit_code == 0, shown.stderr
    assert "Chinese-CLIP's published zero-shot image classification (%)" in shown.stdout
    assert "† VOC: 11-point mAP; published with another metric than top-1" in shown.stdout
    entries = {entry["name"]: entry for entry in json.loads(invoke("references", "--classification", "--json").stdout)}
    assert len(entries) == 5 * 11
    imagenet = entries["vit-b-16-imagenet-zeroshot-classification"]
    assert (imagenet["value"], imagenet["metric"], imagenet["warnings"]) == (48.3, "top-1 accuracy", [])
    fgvc = entries["rn50-fgvc-zeroshot-classification"]
    assert (fgvc["metric"], fgvc["comparable_with_top1"]) == ("mean per-class accuracy", False)
    assert entries["vit-h-14-kitti-zeroshot-classification"]["warnings"] == \
        ["KITTI: users could not reproduce this number (Chinese-CLIP issue #77)"]
    assert entries["vit-l-14-336-pc-zeroshot-classification"]["value"] == 62.9


def write_classification_summary(results: Path, dataset: str, label: str, top1: float) -> None:
    folder = results / dataset / "test" / label
    folder.mkdir(parents=True)
    numbers = {"top1": top1, "top5": 90.0, "mean_per_class_recall": top1 - 1, "num_images": 10000,
               "num_classes": 100, "templates": "openai"}
    (folder / "summary.json").write_text(json.dumps({
        "label": label, "checkpoint": f"/c/{label}.pt", "task": "zeroshot_classification", "split": "test",
        "recall": {"zeroshot_classification": numbers}, "warnings": [], "timestamp": "2026-11-27T00:00:00+00:00"}))


def test_a_classification_comparison_shows_the_published_top1_asked_for_marked_as_published(tmp_path):
    root = tmp_path / "results"
    write_classification_summary(root, "cifar-100", "baseline", 60.0)
    write_classification_summary(root, "cifar-100", "student", 62.5)
    shown = invoke("results", "--results-dir", str(root), "--format", "markdown",
                   "--reference", "vit-b-16-cifar100-zeroshot-classification",
                   "--reference", "vit-b-16-fgvc-zeroshot-classification",
                   "--reference", "vit-b-16-flickr30k-cn-finetune")
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "| *published: vit-b-16-cifar100-zeroshot-classification* | 64.40 (+4.40) | – | – |" in lines
    assert "| *published: vit-b-16-fgvc-zeroshot-classification* | – | – | 12.80 (-46.20) |" in lines
    assert "flickr30k" not in shown.stdout  # a retrieval reference has no place in a classification table
    notes = "\n".join(lines)
    assert ("warning: published: vit-b-16-fgvc-zeroshot-classification: FGVC: published with another metric than "
            "top-1: not comparable with evalkit's top-1") in notes
    assert ("vit-b-16-fgvc-zeroshot-classification was measured on FGVC (upstream's folder "
            "fgvc-aircraft-2013b-variants102), not cifar-100") in notes
    document = json.loads(invoke("results", "--results-dir", str(root), "--format", "json", "--reference",
                                 "vit-b-16-cifar100-zeroshot-classification").stdout)
    published = document[0]["references"] if isinstance(document, list) else document["references"]
    assert [(row["label"], row["metrics"], row["warnings"]) for row in published] == [
        ("published: vit-b-16-cifar100-zeroshot-classification", {"acc1": 0.644}, [])]
    assert "ci95" not in published[0] and "significance" not in published[0]
