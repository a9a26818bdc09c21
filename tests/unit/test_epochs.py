"""The comparison across epochs: each row's experiment and epoch (its own, else from the label and
the checkpoint's name), the best row (well defined whatever the order), filters, order and the trend."""
from __future__ import annotations

import pytest

from evalkit.comparison import ModelResult
from evalkit.epochs import annotate, in_epoch_order, located, score, selected, sparkline, split_label, trends


def checkpoint_of(label: str) -> str:
    """Where a label's checkpoint is, as training writes it: EXP is EXP's epoch_latest.pt."""
    experiment, _, stem = label.partition("@")
    return f"/d/experiments/{experiment}/checkpoints/{stem or 'epoch_latest'}.pt"


def row(label: str, t2i: float | None, i2t: float | None = None, status: str = "ok", **placed) -> ModelResult:
    recall = {direction: {"mean_recall": value} for direction, value in
              (("text_to_image", t2i), ("image_to_text", i2t)) if value is not None}
    return ModelResult(label, checkpoint_of(label), status, recall if status == "ok" else {}, **placed)


@pytest.mark.parametrize("label, expected", [
    ("team@epoch_5", ("team", "epoch_5")), ("team", ("team", "epoch_latest")), ("a@b@epoch_1", ("a@b", "epoch_1")),
    ("@epoch_1", ("@epoch_1", "epoch_latest")), ("team@best", ("team", "best")),
])
def test_split_label(label, expected):
    assert split_label(label) == expected


@pytest.mark.parametrize("result, expected", [
    (row("a", 40.0, 60.0), 50.0), (row("a", 40.0), 40.0), (row("a", None, 30.0), 30.0),
    (row("a", None), None), (row("a", 50.0, 50.0, status="failed"), None),
])
def test_score_is_the_average_of_both_directions_mean_recall(result, expected):
    assert score(result) == expected


def test_annotate_marks_each_experiments_best_row_and_its_epochs():
    rows = annotate([row("t@epoch_1", 10, 20), row("t@epoch_2", 30, 20), row("t", 30, 20), row("t@epoch_3", 1, 1),
                     row("b", 5, 5), row("f@epoch_1", 0, status="failed")])
    assert [(r.experiment, r.epoch, r.best) for r in rows] == [
        ("t", 1, False), ("t", 2, True), ("t", None, False), ("t", 3, False), ("b", None, True), ("f", 1, False)]


def test_a_row_is_placed_by_what_its_evaluation_recorded_not_by_its_label():
    """An experiment folder named a@b: its epoch_latest.pt's label is a@b, which re-parsing would
    file under experiment a."""
    assert located(ModelResult("a@b", "/d/experiments/a@b/checkpoints/epoch_latest.pt", "ok", {},
                               experiment="a@b", epoch=11)) == ("a@b", 11)
    rows = annotate([row("a@b", 50, 50, experiment="a@b", epoch=3), row("a", 10, 10, experiment="a", epoch=None)])
    assert [(r.experiment, r.best) for r in rows] == [("a@b", True), ("a", True)]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_on_equal_scores_the_numbered_epoch_wins_over_epoch_latest_whatever_the_order(order):
    rows = [row("t", 30, 30, experiment="t", epoch=11), row("t@epoch11", 30, 30, experiment="t", epoch=11),
            row("t@epoch12", 30, 30, experiment="t", epoch=12)]
    best = [r.label for r in annotate([rows[i] for i in order]) if r.best]
    assert best == ["t@epoch11"]


def test_a_row_of_one_direction_is_no_rival_for_rows_of_two():
    rows = annotate([row("t@epoch1", 30, 30), row("t@epoch2", 90), row("t@epoch3", 35, 35)])
    assert [r.label for r in rows if r.best] == ["t@epoch3"]


def test_in_epoch_order_follows_the_registry_then_names_then_epochs():
    rows = [row(label, 1) for label in ("z@epoch10", "a", "z", "z@epoch2", "reg@epoch_1", "z@epoch_3")]
    assert [r.label for r in in_epoch_order(rows, {"reg": 0})] == [
        "reg@epoch_1", "a", "z@epoch2", "z@epoch_3", "z@epoch10", "z"]


@pytest.mark.parametrize("models, best_only, labels", [
    ((), False, ["t@epoch_1", "t@epoch_2", "b"]), (("t",), False, ["t@epoch_1", "t@epoch_2"]),
    (("t@epoch_1",), False, ["t@epoch_1"]), ((), True, ["t@epoch_2", "b"]), (("b",), True, ["b"]),
    (("nobody",), False, []),
])
def test_selected_filters_by_experiment_or_label_and_best(models, best_only, labels):
    rows = annotate([row("t@epoch_1", 1), row("t@epoch_2", 2), row("b", 1)])
    assert [r.label for r in selected(rows, models, best_only)] == labels


def test_trends_per_experiment_with_two_or_more_scored_checkpoints():
    rows = annotate([row("t", 40), row("t@epoch_2", 30), row("t@epoch_1", 10), row("solo", 5),
                     row("t@epoch_3", 0, status="failed")])
    [trend] = trends(rows)
    assert (trend.experiment, trend.labels, trend.scores) == ("t", ("t@epoch_1", "t@epoch_2", "t"), (10, 30, 40))
    assert trend.best_label == "t" and trend.sparkline == "▁▆█"


@pytest.mark.parametrize("values, line", [([], ""), ([3.0], "▄"), ([2, 2], "▄▄"), ([0, 7], "▁█"),
                                          ([0, 1, 2, 3, 4, 5, 6, 7], "▁▂▃▄▅▆▇█")])
def test_sparkline(values, line):
    assert sparkline(values) == line


def with_hits(label: str, mean_recall: float, hits_r1: str) -> ModelResult:
    """A row with per-query hits (the same string at every k: mean recall's test reads all three)."""
    hits = {"text_to_image": {"queries": len(hits_r1), "reference_sha256": "texts",
                              "hits": {"r1": hits_r1, "r5": hits_r1, "r10": hits_r1}}}
    return ModelResult(label, checkpoint_of(label), "ok", {"text_to_image": {"mean_recall": mean_recall}},
                       query_hits=hits)


@pytest.mark.parametrize("best_hits, runner_up_hits, significant", [
    ("1" * 52 + "0" * 48, "1" * 50 + "0" * 50, False),   # two queries apart: noise
    ("1" * 90 + "0" * 10, "1" * 20 + "0" * 80, True),    # seventy apart
])
def test_the_best_row_says_whether_it_beats_its_runner_up_on_the_same_queries(best_hits, runner_up_hits,
                                                                              significant):
    from evalkit.comparison import runner_up_note
    rows = annotate([with_hits("t@epoch_1", 10.0, runner_up_hits), with_hits("t@epoch_2", 30.0, best_hits),
                     with_hits("t@epoch_3", 5.0, "0" * 100)])
    best = rows[1].versus_runner_up
    assert rows[1].best and best["label"] == "t@epoch_1" and best["significant"] is significant
    assert rows[0].versus_runner_up is None  # only the best row carries it
    note = runner_up_note(best)
    assert (note == "") is significant
    if not significant:
        assert note.startswith(" (not significantly better than t@epoch_1: p ")
    assert trends(rows)[0].versus_runner_up == best


def test_without_per_query_hits_or_a_runner_up_nothing_is_claimed():
    assert annotate([row("t@epoch_1", 10, 20), row("t@epoch_2", 30, 20)])[1].versus_runner_up is None
    assert annotate([with_hits("t@epoch_2", 30.0, "1" * 10)])[0].versus_runner_up is None
