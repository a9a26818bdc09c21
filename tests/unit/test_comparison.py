"""The comparison of several models: best per column, deltas against the baseline, and the
same table as JSON, CSV and Markdown."""
from __future__ import annotations

import csv
import io

import pytest

from evalkit.comparison import Comparison, ModelResult, build_comparison, to_csv, to_markdown


def recall(t2i: tuple, i2t: tuple) -> dict:
    keys = ("r1", "r5", "r10", "mean_recall")
    return {"text_to_image": dict(zip(keys, t2i)), "image_to_text": dict(zip(keys, i2t))}


TEAM = ModelResult("team", "/c/team.pt", "ok", recall((50.0, 80.0, 90.0, 73.33), (60.0, 85.0, 92.0, 79.0)))
LARGE = ModelResult("large", "/c/large.pt", "ok", recall((52.5, 79.0, 90.0, 73.83), (58.0, 86.0, 91.0, 78.33)))
BASELINE = ModelResult("baseline", "/c/base.pt", "ok", recall((45.0, 75.0, 88.0, 69.33), (55.0, 80.0, 90.0, 75.0)))
BROKEN = ModelResult("huge", "/c/huge.pt", "failed", {}, error="checkpoint not found", exit_code=12)


def compare(*results: ModelResult) -> Comparison:
    return build_comparison(list(results), "Flickr30k-CN", "valid", "2026-11-27T00:00:00Z")


def document(*results: ModelResult) -> dict:
    """comparison.json's document, as a user's script reads it."""
    return compare(*results).to_dict()


@pytest.mark.parametrize("column, best", [
    ("t2i_r1", ["large"]), ("t2i_r5", ["team"]), ("t2i_r10", ["team", "large"]),  # a tie: both
    ("i2t_r1", ["team"]), ("i2t_r5", ["large"]), ("i2t_mean_recall", ["team"]),
])
def test_the_best_of_each_column_is_named(column, best):
    assert document(TEAM, LARGE, BASELINE)["best"][column] == best


def test_a_single_model_wins_nothing():
    assert all(labels == [] for labels in document(TEAM)["best"].values())


def test_deltas_are_against_the_baseline_and_only_when_it_ran():
    found = document(TEAM, LARGE, BASELINE)
    team = found["models"][0]
    assert team["delta"]["text_to_image"]["r1"] == pytest.approx(5.0)
    assert team["delta"]["image_to_text"]["r10"] == pytest.approx(2.0)
    assert found["models"][2]["delta"] is None  # the baseline itself
    assert document(TEAM, LARGE)["baseline"] is None
    assert all(row["delta"] is None for row in document(TEAM, LARGE)["models"])


def test_a_failed_baseline_gives_no_deltas():
    failed_baseline = ModelResult("baseline", "/c/base.pt", "failed", {}, error="x", exit_code=7)
    assert document(TEAM, failed_baseline)["baseline"] is None


def test_a_failed_model_keeps_its_row_and_reason_but_wins_nothing():
    found = document(TEAM, BROKEN, LARGE)
    assert [row["label"] for row in found["models"]] == ["team", "huge", "large"]
    broken = found["models"][1]
    assert (broken["status"], broken["error"], broken["exit_code"]) == ("failed", "checkpoint not found", 12)
    assert all("huge" not in labels for labels in found["best"].values())


def test_markdown_pastes_as_a_table_with_best_in_bold_and_deltas():
    text = to_markdown(compare(TEAM, LARGE, BASELINE, BROKEN))
    lines = text.splitlines()
    assert lines[0] == "Recall (%) on Flickr30k-CN valid; (±x.xx) against baseline"
    assert lines[2] == ("| model | text→image R@1 | text→image R@5 | text→image R@10 | text→image MR | "
                        "image→text R@1 | image→text R@5 | image→text R@10 | image→text MR |")
    assert lines[3] == "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[4].startswith("| team | 50.00 (+5.00) | **80.00** (+5.00) | **90.00** (+2.00) |")
    assert lines[6].startswith("| baseline | 45.00 | 75.00 |")
    assert lines[7] == "| huge | failed (exit 12) | – | – | – | – | – | – | – |"


def test_csv_has_plain_numbers_and_delta_columns():
    rows = list(csv.DictReader(io.StringIO(to_csv(compare(TEAM, BASELINE, BROKEN)))))
    assert rows[0]["model"] == "team" and float(rows[0]["t2i_r1"]) == 50.0
    assert float(rows[0]["delta_t2i_r1"]) == pytest.approx(5.0)
    assert rows[1]["delta_t2i_r1"] == ""
    assert (rows[2]["status"], rows[2]["t2i_r1"], rows[2]["error"]) == ("failed", "", "checkpoint not found")


def test_csv_without_a_baseline_has_no_delta_columns():
    header = to_csv(compare(TEAM, LARGE)).splitlines()[0].split(",")
    assert not any(name.startswith("delta_") for name in header)
    assert header[:3] == ["model", "status", "t2i_r1"]


def test_a_label_with_a_pipe_does_not_break_the_markdown_table():
    odd = ModelResult("a|b", "/c/x.pt", "ok", TEAM.recall)
    assert "| a\\|b |" in to_markdown(compare(odd))


# --- intervals and significance (query_hits.json) ----------------------------------------------

def hits_of(r1: str, sha: str = "s" * 64) -> dict:
    """Per-query hits of one direction (R@5 = R@10 = R@1, enough for the table)."""
    return {"text_to_image": {"queries": len(r1), "reference_sha256": sha,
                              "hits": {"r1": r1, "r5": r1, "r10": r1}}}


INTERVALS = {"text_to_image": {"r1": [47.0, 53.0], "r5": [78.0, 82.0], "r10": [89.0, 91.0],
                               "mean_recall": [72.0, 74.66]}}
STRONG = ModelResult("team", "/c/team.pt", "ok", TEAM.recall, ci95=INTERVALS,
                     query_hits=hits_of("1" * 60 + "0" * 40))
WEAK = ModelResult("baseline", "/c/base.pt", "ok", BASELINE.recall, ci95=INTERVALS,
                   query_hits=hits_of("1" * 20 + "0" * 80))
CLOSE = ModelResult("large", "/c/large.pt", "ok", LARGE.recall, query_hits=hits_of("1" * 21 + "0" * 79))


def test_significance_is_paired_against_the_baseline_only_on_the_same_queries():
    other_texts = ModelResult("other", "/c/o.pt", "ok", TEAM.recall, query_hits=hits_of("1" * 100, sha="t" * 64))
    models = {m["label"]: m for m in document(STRONG, CLOSE, other_texts, WEAK)["models"]}
    assert models["team"]["significance"]["text_to_image"]["r1"]["delta"] == pytest.approx(40.0)
    assert models["team"]["significance"]["text_to_image"]["r1"]["p_value"] < 0.001
    assert models["large"]["significance"]["text_to_image"]["r1"]["p_value"] == 1.0
    assert "significance" not in models["other"] and "significance" not in models["baseline"]
    assert models["team"]["ci95"] == INTERVALS and "ci95" not in models["large"]
    assert all("query_hits" not in model for model in models.values())  # they stay in query_hits.json


def test_another_label_can_be_the_baseline():
    found = build_comparison([STRONG, WEAK], "Flickr30k-CN", "valid", "t", baseline_label="team").to_dict()
    assert found["baseline"] == "team"
    assert found["models"][1]["significance"]["text_to_image"]["r1"]["delta"] == pytest.approx(-40.0)


def test_markdown_shows_half_widths_and_marks_significant_deltas_with_a_footnote():
    lines = to_markdown(compare(STRONG, CLOSE, WEAK)).splitlines()
    assert lines[4].startswith("| team | 50.00 ±3.0 (+5.00\\*) | **80.00** ±2.0 (+5.00\\*) |")
    assert lines[5].startswith("| large | **52.50** (+7.50) |")  # no interval, not significant
    assert lines[-1] == ("±: half-width of the 95% bootstrap interval over the queries; \\*: differs from "
                         "baseline with p < 0.05 on the same queries (exact McNemar test for R@k, paired "
                         "bootstrap for MR)  ")  # two spaces: a Markdown line break before any next note


def test_csv_carries_intervals_and_p_values():
    rows = list(csv.DictReader(io.StringIO(to_csv(compare(STRONG, CLOSE, WEAK)))))
    assert (float(rows[0]["ci95_low_t2i_r1"]), float(rows[0]["ci95_high_t2i_r1"])) == (47.0, 53.0)
    assert float(rows[0]["p_t2i_r1"]) < 0.001 and float(rows[1]["p_t2i_r1"]) == 1.0
    assert rows[1]["ci95_low_t2i_r1"] == "" and rows[2]["p_t2i_r1"] == ""


def test_without_hits_nothing_changes():
    text = to_markdown(compare(TEAM, BASELINE))
    assert "±: " not in text and "\\*" not in text
    assert not any(name.startswith(("ci95_", "p_")) for name in to_csv(compare(TEAM, BASELINE)).split("\n")[0].split(","))
