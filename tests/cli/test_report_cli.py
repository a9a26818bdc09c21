"""`python -m evalkit report` from a results folder, without a server: the page, its charts or,
without matplotlib, its tables and how to get the charts; --figures; the exit codes."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalkit import charts
from evalkit.cli import main
from evalkit.errors import ConfigError, NothingEvaluated
from evalkit.store import write_atomically

EXP = "/root/autodl-tmp/datapath/experiments/{}/checkpoints/{}.pt"


def summary(checkpoint: str, base: float) -> dict:
    recall = {"r1": base, "r5": base + 20, "r10": base + 30, "mean_recall": base + 50 / 3}
    return {"checkpoint": checkpoint, "timestamp": "2026-12-02T12:00:00+00:00",
            "recall": {"text_to_image": recall, "image_to_text": {k: v + 1 for k, v in recall.items()}}}


@pytest.fixture
def results(tmp_path) -> Path:
    """A sweep on Flickr30k-CN valid (team: epochs 1, 2 and latest) and two models on MUGE test."""
    root = tmp_path / "results"
    kept = {("Flickr30k-CN", "valid", "team@epoch_1"): summary(EXP.format("team", "epoch_1"), 30),
            ("Flickr30k-CN", "valid", "team@epoch_2"): summary(EXP.format("team", "epoch_2"), 35),
            ("Flickr30k-CN", "valid", "team"): summary(EXP.format("team", "epoch_latest"), 38),
            ("MUGE", "test", "team"): summary(EXP.format("team", "epoch_latest"), 20),
            ("MUGE", "test", "baseline"): summary(EXP.format("baseline", "epoch_latest"), 15)}
    for (dataset, split, label), document in kept.items():
        write_atomically(root / dataset / split / label / "summary.json", json.dumps(document).encode())
    return root


def report(*args: str):
    return CliRunner().invoke(main, ["report", *args])


def needs_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        if os.environ.get("EVALKIT_REQUIRE_TESTBED"):
            pytest.fail("matplotlib is missing: pip install -e '.[plot]'")
        pytest.skip("matplotlib is missing: pip install -e '.[plot]'")


@pytest.fixture
def without_matplotlib(monkeypatch):
    monkeypatch.setattr(charts, "is_available", lambda: False)


def test_without_matplotlib_the_page_has_the_tables_and_says_how_to_get_charts(results, without_matplotlib):
    done = report("--results-dir", str(results))
    assert done.exit_code == 0, done.output
    page = (results / "report.html").read_text(encoding="utf-8")
    assert done.stdout.splitlines()[0] == f"saved: {results / 'report.html'}"
    assert "pip install -e '.[plot]'" in done.stdout
    assert page.count("<table>") == 2 and "<img" not in page and "pip install -e &#x27;.[plot]&#x27;" in page
    assert "Flickr30k-CN · valid" in page and "MUGE · test" in page and "team@epoch_2" in page


def test_figures_without_matplotlib_is_refused_before_writing(results, tmp_path, without_matplotlib):
    done = report("--results-dir", str(results), "--figures", str(tmp_path / "figures"))
    assert done.exit_code == ConfigError.exit_code
    assert done.stderr.startswith("error: --figures") and "pip install -e '.[plot]'" in done.stderr
    assert not (results / "report.html").exists() and not (tmp_path / "figures").exists()


def test_nothing_evaluated_exits_15(tmp_path):
    done = report("--results-dir", str(tmp_path / "empty"))
    assert done.exit_code == NothingEvaluated.exit_code
    assert done.stderr.startswith("error: no results under")


def test_a_sweep_and_a_plain_comparison_get_their_charts_and_figures(results, tmp_path):
    needs_matplotlib()
    page_path, figures = tmp_path / "out" / "page.html", tmp_path / "figures"
    done = report("--results-dir", str(results), "--output", str(page_path), "--figures", str(figures))
    assert done.exit_code == 0, done.output
    page = page_path.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/svg+xml;base64,') == 2
    assert "against epoch on Flickr30k-CN valid" in page and "one checkpoint per experiment" in page
    assert sorted(path.name for path in figures.iterdir()) == [
        "Flickr30k-CN-valid.png", "Flickr30k-CN-valid.svg", "MUGE-test.png", "MUGE-test.svg"]
    assert (figures / "MUGE-test.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (figures / "MUGE-test.svg").read_bytes()
    assert not (results / "report.html").exists()  # --output replaces the default place
    assert done.stdout.splitlines() == [f"saved: {path}" for path in (
        page_path, figures / "Flickr30k-CN-valid.svg", figures / "Flickr30k-CN-valid.png",
        figures / "MUGE-test.svg", figures / "MUGE-test.png")]


def test_dataset_and_split_filters_choose_the_sections(results, without_matplotlib):
    done = report("--results-dir", str(results), "--dataset-name", "MUGE")
    assert done.exit_code == 0, done.output
    page = (results / "report.html").read_text(encoding="utf-8")
    assert "MUGE · test" in page and "Flickr30k-CN" not in page


def test_published_rows_join_the_tables_with_their_numbers_source_and_split_warning(results, without_matplotlib):
    done = report("--results-dir", str(results), "--dataset-name", "MUGE", "--reference", "vit-b-16-muge-finetune")
    assert done.exit_code == 0, done.output
    page = (results / "report.html").read_text(encoding="utf-8")
    row = page[page.index('<tr class="published">'):]
    row = row[:row.index("</tr>")]
    assert "<em>published: vit-b-16-muge-finetune</em>" in row
    assert "<td>58.40 (+43.40)</td><td>83.60 (+48.60)</td><td>90.00 (+45.00)</td>" in row  # against baseline
    assert "OFA-Sys/Chinese-CLIP Results.md" in page
    warning = page[page.index("warning: published: vit-b-16-muge-finetune"):]
    assert "valid" in warning[:warning.index("</p>")]  # published on valid, these results are test
