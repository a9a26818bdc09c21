"""Is a difference real? The exact McNemar test, the paired bootstrap, the pairing rule and the
binomial draws behind it, checked against scipy (a test-only dependency) and by hand."""
from __future__ import annotations

import itertools
import json
import random
from fractions import Fraction

import pytest
from scipy import stats

from evalkit.resampling import binomial, multinomial
from evalkit.significance import (FORMAT, best_versus_runner_up, ci95_of, classification_significance, is_significant,
                                  mcnemar_p, paired_bootstrap_p,
                                  parse_query_hits, plus_minus, recall_difference, score_differences, significance)


def record(r1: str, r5: str, r10: str, sha: str = "a" * 64) -> dict:
    return {"queries": len(r1), "reference_sha256": sha, "hits": {"r1": r1, "r5": r5, "r10": r10},
            "ci95": {"r1": [1.0, 3.0]}}


# --- McNemar ---------------------------------------------------------------------------------

@pytest.mark.parametrize("only_mine, only_theirs, expected", [
    (0, 0, 1.0),            # no discordant pair: identical
    (3, 3, 1.0),            # balanced: capped at 1
    (1, 0, 1.0),            # 2 * 1/2
    (5, 0, 0.0625),         # 2 * 1/32
    (0, 5, 0.0625),         # symmetric
    (9, 1, 2 * 11 / 1024),  # 2 * (1 + 10) / 2^10
])
def test_mcnemar_by_hand(only_mine, only_theirs, expected):
    assert mcnemar_p(only_mine, only_theirs) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("only_mine, only_theirs", [
    (7, 2), (40, 61), (120, 80), (500, 430), (2000, 2150), (15000, 14800), (30, 0), (1, 29000),
])
def test_mcnemar_equals_scipys_exact_binomial_test(only_mine, only_theirs):
    expected = stats.binomtest(only_mine, only_mine + only_theirs, 0.5).pvalue
    assert mcnemar_p(only_mine, only_theirs) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_recall_difference_counts_the_discordant_queries():
    delta, p = recall_difference("1101100000", "0100000000")
    assert delta == pytest.approx(30.0)  # 4 hits against 1 of 10 queries
    assert p == pytest.approx(stats.binomtest(3, 3, 0.5).pvalue)
    assert recall_difference("", "") == (0.0, 1.0)


# --- the paired bootstrap of mean recall -----------------------------------------------------

def test_score_differences_count_each_querys_hits_of_three():
    mine = record("100", "110", "111")
    theirs = record("000", "100", "101")
    # query 0: 3 - 2, query 1: 2 - 0, query 2: 1 - 1
    assert score_differences(mine, theirs) == {1: 1, 2: 1, 0: 1}


@pytest.mark.parametrize("differences, low, high", [
    ({0: 5000}, 1.0, 1.0),                      # the same hits: no difference at all
    ({-1: 300, 0: 4400, 1: 300}, 1.0, 1.0),     # observed mean exactly 0
    ({1: 900, 0: 4000, -1: 100}, 0.0, 0.001),   # a large difference
    ({1: 260, 0: 4500, -1: 240}, 0.2, 1.0),     # noise
])
def test_paired_bootstrap_p(differences, low, high):
    assert low <= paired_bootstrap_p(differences, resamples=2000) <= high


def test_paired_bootstrap_is_reproducible_and_close_to_the_normal_approximation():
    differences = {2: 120, 1: 300, 0: 4000, -1: 250, -3: 20}
    assert paired_bootstrap_p(differences) == paired_bootstrap_p(differences)
    values = [v for v, c in differences.items() for _ in range(c)]
    mean, sd = sum(values) / len(values), stats.tstd(values) / len(values) ** 0.5
    assert paired_bootstrap_p(differences) == pytest.approx(2 * stats.norm.sf(abs(mean) / sd), abs=0.01)


# --- pairing ---------------------------------------------------------------------------------

def test_identical_hits_give_delta_zero_and_p_one():
    same = {"text_to_image": record("1010", "1110", "1111")}
    found = significance(same, same)
    assert {m: v["delta"] for m, v in found["text_to_image"].items()} == dict.fromkeys(
        ("r1", "r5", "r10", "mean_recall"), 0.0)
    assert all(v["p_value"] == 1.0 for v in found["text_to_image"].values())


def test_other_queries_are_never_paired():
    mine = {"text_to_image": record("1010", "1110", "1111"), "image_to_text": record("1", "1", "1")}
    changed_texts = {"text_to_image": record("1010", "1110", "1111", sha="b" * 64),
                     "image_to_text": record("0", "1", "1")}
    found = significance(mine, changed_texts)
    assert set(found) == {"image_to_text"}
    assert significance(mine, {"text_to_image": record("10", "10", "10", sha="b" * 64)}) is None
    assert significance(mine, None) is None


def test_delta_is_the_recall_difference_in_points():
    found = significance({"text_to_image": record("1100", "1110", "1111")},
                         {"text_to_image": record("1000", "1000", "1110")})["text_to_image"]
    assert [found[k]["delta"] for k in ("r1", "r5", "r10")] == [25.0, 50.0, 25.0]
    assert found["mean_recall"]["delta"] == pytest.approx(100 / 3)


def test_best_versus_runner_up_says_when_the_best_is_not_significantly_better():
    rng = random.Random(3)
    base = "".join(rng.choice("01") for _ in range(2000))
    flipped = "".join("1" if c == "0" and rng.random() < 0.3 else c for c in base)
    candidates = {"epoch_3": (60.0, {"text_to_image": record(flipped, flipped, flipped)}),
                  "epoch_2": (50.0, {"text_to_image": record(base, base, base)}),
                  "epoch_4": (59.99, {"text_to_image": record(flipped, flipped, flipped)})}
    close = best_versus_runner_up(candidates, "text_to_image", "r1", resamples=500)
    assert (close["best"], close["runner_up"], close["is_significant"]) == ("epoch_3", "epoch_4", False)
    del candidates["epoch_4"]
    clear = best_versus_runner_up(candidates, "text_to_image", "r1", resamples=500)
    assert (clear["runner_up"], clear["is_significant"]) == ("epoch_2", True)
    assert best_versus_runner_up({"only": (1.0, None)}, "text_to_image", "r1") is None


# --- query_hits.json as read back --------------------------------------------------------------

def test_parse_query_hits_keeps_directions_with_hits_and_refuses_other_files():
    good = {"format": FORMAT, "text_to_image": record("10", "10", "11"), "image_to_text": {"error": "KeyError: 5"}}
    parsed = parse_query_hits(json.dumps(good).encode())
    assert set(parsed) == {"text_to_image"}
    assert ci95_of(parsed) == {"text_to_image": {"r1": [1.0, 3.0]}}
    short = dict(good, text_to_image=dict(record("10", "10", "11"), queries=3))
    for raw in (b"not json", b"[]", json.dumps({"format": "other"}).encode(), json.dumps(short).encode()):
        assert parse_query_hits(raw) is None


@pytest.mark.parametrize("interval, text", [(None, ""), ([50.0, 52.8], " ±1.4"), ([10.0, 10.0], " ±0.0")])
def test_plus_minus_is_the_half_width(interval, text):
    assert plus_minus(interval) == text


# --- binomial and multinomial draws ----------------------------------------------------------

@pytest.mark.parametrize("n, p", [(30, 0.1), (200, 0.02), (5000, 0.3), (29806, 0.5), (1000, 0.93)])
def test_binomial_draws_follow_the_binomial_distribution(n, p):
    rng = random.Random(11)
    draws = [binomial(rng, n, p) for _ in range(20000)]
    # chi-square over about 30 bins of the 0.5%..99.5% quantiles, the tails pooled into two more
    low, high = int(stats.binom.ppf(0.005, n, p)), int(stats.binom.ppf(0.995, n, p))
    edges = sorted({0, *range(low + 1, high + 1, max(1, (high - low) // 30)), high + 1, n + 1})
    observed = [sum(1 for d in draws if start <= d < stop) for start, stop in zip(edges, edges[1:])]
    expected = [(stats.binom.cdf(stop - 1, n, p) - stats.binom.cdf(start - 1, n, p)) * len(draws)
                for start, stop in zip(edges, edges[1:])]
    assert stats.chisquare(observed, expected).pvalue > 1e-4


@pytest.mark.parametrize("n, p, expected", [(0, 0.5, 0), (10, 0.0, 0), (10, 1.0, 10)])
def test_binomial_edges(n, p, expected):
    assert binomial(random.Random(0), n, p) == expected


def test_multinomial_keeps_the_total_and_leaves_empty_classes_empty():
    rng = random.Random(5)
    for _ in range(200):
        drawn = multinomial(rng, [10, 0, 3000, 2, 0])
        assert sum(drawn) == 3012 and drawn[1] == drawn[4] == 0


# --- mean per-class recall: a paired bootstrap within each class ---------------------------------

def classified(top1: str, targets: list[int], sha: str = "c" * 64) -> dict:
    return {"queries": len(top1), "reference_sha256": sha, "hits": {"top1": top1, "top5": top1}, "targets": targets}


def mean_per_class_recall(top1: str, targets: list[int]) -> float:
    """By the definition, without evalkit: each class's share of right top-1s, averaged over classes."""
    classes = sorted(set(targets))
    return sum(sum(top1[i] == "1" for i, t in enumerate(targets) if t == c) / targets.count(c)
               for c in classes) / len(classes)


def exact_stratified_bootstrap_p(mine: str, theirs: str, targets: list[int]) -> Fraction:
    """The ideal bootstrap by brute force: every resample with replacement of each class's images
    (n^n equally likely sequences per class), with the difference in mean per-class recall
    computed anew from the resampled images; the share at least as far from the observed as the
    observed is from 0."""
    classes = sorted(set(targets))
    members = [[i for i, t in enumerate(targets) if t == c] for c in classes]

    def difference(chosen: list[tuple[int, ...]]) -> Fraction:
        return sum(Fraction(sum((mine[i] == "1") - (theirs[i] == "1") for i in picks), len(picks))
                   for picks in chosen) / len(classes)

    observed = difference([tuple(m) for m in members])
    outcomes = [list(itertools.product(m, repeat=len(m))) for m in members]
    total = extreme = 0
    for chosen in itertools.product(*outcomes):
        total += 1
        extreme += abs(difference(list(chosen)) - observed) >= abs(observed)
    return Fraction(extreme, total)


# (mine's top-1 hits, theirs', each image's class): small enough to enumerate every resample
SMALL_TABLES = [
    ("1101" "110", "0100" "010", [0, 0, 0, 0, 1, 1, 1]),
    ("11" "100" "1", "01" "001" "1", [0, 0, 1, 1, 1, 2]),
    ("1111" "000", "0011" "100", [0, 0, 0, 0, 1, 1, 1]),
    ("101" "01" "11", "100" "10" "01", [0, 0, 0, 1, 1, 2, 2]),
]


@pytest.mark.parametrize("mine, theirs, targets", SMALL_TABLES)
def test_mpcr_delta_is_the_difference_of_the_mean_per_class_recalls(mine, theirs, targets):
    found = classification_significance(classified(mine, targets), classified(theirs, targets), resamples=10)
    expected = (mean_per_class_recall(mine, targets) - mean_per_class_recall(theirs, targets)) * 100
    assert found["mean_per_class_recall"]["delta"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("mine, theirs, targets", SMALL_TABLES)
def test_mpcr_p_value_is_the_exact_within_class_bootstrap_by_brute_force(mine, theirs, targets):
    exact = float(exact_stratified_bootstrap_p(mine, theirs, targets))
    found = classification_significance(classified(mine, targets), classified(theirs, targets), resamples=20_000)
    # 20,000 resamples: the Monte Carlo estimate's standard error is at most 0.0036
    assert found["mean_per_class_recall"]["p_value"] == pytest.approx(exact, abs=0.015)


def test_mpcr_p_value_is_seeded_and_a_large_gap_is_significant():
    targets = [c for c in range(20) for _ in range(10)]
    mine, theirs = "1111111110" * 20, "1111100000" * 20
    first = classification_significance(classified(mine, targets), classified(theirs, targets))
    assert first == classification_significance(classified(mine, targets), classified(theirs, targets))
    assert first["mean_per_class_recall"]["delta"] == pytest.approx(40.0)
    assert is_significant(first["mean_per_class_recall"]["p_value"])


def test_identical_classifications_give_mpcr_delta_zero_and_p_one():
    targets = [0, 0, 1, 1, 2]
    found = classification_significance(classified("10110", targets), classified("10110", targets))
    assert found["mean_per_class_recall"] == {"delta": 0.0, "p_value": 1.0}


def test_without_each_images_class_mpcr_has_no_test():
    mine, theirs = classified("110", [0, 1, 1]), classified("011", [0, 1, 1])
    del mine["targets"], theirs["targets"]
    assert set(classification_significance(mine, theirs)) == {"top1", "top5"}
