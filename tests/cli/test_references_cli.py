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
