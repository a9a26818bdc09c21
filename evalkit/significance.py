"""PURE: is a difference in recall real? Paired tests over the per-query hits that
remote/query_hits.py writes beside upstream's results (query_hits.json).

- R@1, R@5, R@10: the exact two-sided McNemar test, a binomial test on the queries where the
  two models disagree (exact integer arithmetic: no approximation at any size).
- Mean recall (a query scores 0..3 hits of three): a paired bootstrap over the queries.
- Zero-shot classification: top-1 and top-5 by McNemar, as R@k; mean per-class recall by a
  paired bootstrap resampling the images within each class (stratified_bootstrap_p).
- Two models are paired only when their queries are the same: the same reference file
  (SHA-256) and query count, direction by direction. Otherwise there is no test at all.

Standard library only: this runs on the laptop, which has no numpy.
"""
from __future__ import annotations

import json
import math
import operator
import random

from .resampling import multinomial

FORMAT = "evalkit-query-hits/1"
HITS_FILE = "query_hits.json"
DIRECTIONS = ("text_to_image", "image_to_text")
# zero-shot classification (remote/zeroshot.py): each image's top-1 and top-5 hit, paired by McNemar
CLASSIFICATION = "zeroshot_classification"
CLASSIFICATION_KS = ("top1", "top5")
RECALL_KS = ("r1", "r5", "r10")
METRICS = (*RECALL_KS, "mean_recall")
RESAMPLES = 10_000
SEED = 19
ALPHA = 0.05


def parse_query_hits(raw: bytes) -> dict | None:
    """query_hits.json's directions that carry hits; None when it is not such a file."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return None
    found = {direction: document[direction] for direction in DIRECTIONS if _is_hits(document.get(direction))}
    if _is_hits(document.get(CLASSIFICATION), CLASSIFICATION_KS):
        found[CLASSIFICATION] = document[CLASSIFICATION]
    return found or None


def _is_hits(record, keys: tuple[str, ...] = RECALL_KS) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("hits"), dict):
        return False
    hits = record["hits"]
    return (isinstance(record.get("queries"), int) and isinstance(record.get("reference_sha256"), str)
            and all(isinstance(hits.get(k), str) and len(hits[k]) == record["queries"] for k in keys))


def ci95_of(query_hits: dict | None) -> dict | None:
    """Direction -> metric -> [low, high] in percent, as summary.json and comparisons keep it."""
    if not query_hits:
        return None
    found = {direction: record["ci95"] for direction, record in query_hits.items() if record.get("ci95")}
    return found or None


def are_paired(mine: dict, theirs: dict) -> bool:
    """One direction's records answer the same queries in the same order."""
    return mine["reference_sha256"] == theirs["reference_sha256"] and mine["queries"] == theirs["queries"]


def mcnemar_p(only_mine: int, only_theirs: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs as Binomial(n, 1/2), twice the smaller
    tail, capped at 1. With no discordant pair the two are identical: p = 1."""
    n = only_mine + only_theirs
    low = min(only_mine, only_theirs)
    term, tail = 1, 0  # term = C(n, i), exactly
    for i in range(low + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, 2 * tail / (1 << n))


def recall_difference(mine: str, theirs: str) -> tuple[float, float]:
    """(delta in points, McNemar p) of one R@k from two hit strings of the same queries."""
    if not mine:
        return 0.0, 1.0
    a, b = int(mine, 2), int(theirs, 2)
    only_mine, only_theirs = _ones(a & ~b), _ones(b & ~a)
    return (only_mine - only_theirs) * 100 / len(mine), mcnemar_p(only_mine, only_theirs)


def _ones(value: int) -> int:
    return bin(value).count("1")


def score_differences(mine: dict, theirs: dict) -> dict[int, int]:
    """How many queries have each per-query difference in hits (of R@1, R@5, R@10: -3..3)."""
    counts: dict[int, int] = {}
    mine_hits, theirs_hits = mine["hits"], theirs["hits"]
    for query in zip(*(mine_hits[k] for k in RECALL_KS), *(theirs_hits[k] for k in RECALL_KS)):
        difference = sum(c == "1" for c in query[:3]) - sum(c == "1" for c in query[3:])
        counts[difference] = counts.get(difference, 0) + 1
    return counts


def paired_bootstrap_p(differences: dict[int, int], resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Two-sided paired bootstrap p-value of a mean difference: the share of resamples of the
    queries whose mean moves from the observed one by at least the observed one's distance
    from 0 (the resampled distribution shifted to the null), counted as (hits + 1)/(B + 1).

    DIFFERENCES: value -> how many queries have it. A resample is a multinomial draw of those
    counts (the same distribution as drawing query indices), so a draw costs O(values), not O(n);
    sums are integers, so the comparison is exact.
    """
    values = sorted(differences)
    counts = [differences[value] for value in values]
    observed = sum(value * count for value, count in zip(values, counts))
    rng = random.Random(seed)
    extreme = 0
    for _ in range(resamples):
        drawn = multinomial(rng, counts)
        total = sum(value * count for value, count in zip(values, drawn))
        extreme += abs(total - observed) >= abs(observed)
    return (extreme + 1) / (resamples + 1)


def direction_significance(mine: dict, theirs: dict, resamples: int = RESAMPLES) -> dict[str, dict[str, float]]:
    """Metric -> {"delta": points, "p_value": p} of MINE against THEIRS (paired records)."""
    found = {}
    for k in RECALL_KS:
        delta, p = recall_difference(mine["hits"][k], theirs["hits"][k])
        found[k] = {"delta": round(delta, 10), "p_value": p}
    differences = score_differences(mine, theirs)
    n = mine["queries"]
    mean_delta = sum(value * count for value, count in differences.items()) * 100 / (3 * n) if n else 0.0
    found["mean_recall"] = {"delta": round(mean_delta, 10), "p_value": paired_bootstrap_p(differences, resamples)}
    return found


def significance(mine: dict | None, theirs: dict | None, resamples: int = RESAMPLES) -> dict | None:
    """Direction -> metric -> {"delta", "p_value"} for each direction both ran on the same
    queries; None when no direction is paired (or either has no per-query hits)."""
    if not mine or not theirs:
        return None
    found = {direction: direction_significance(mine[direction], theirs[direction], resamples)
             for direction in DIRECTIONS
             if direction in mine and direction in theirs and are_paired(mine[direction], theirs[direction])}
    if CLASSIFICATION in mine and CLASSIFICATION in theirs and are_paired(mine[CLASSIFICATION], theirs[CLASSIFICATION]):
        found[CLASSIFICATION] = classification_significance(mine[CLASSIFICATION], theirs[CLASSIFICATION], resamples)
    return found or None


def classification_significance(mine: dict, theirs: dict, resamples: int = RESAMPLES) -> dict[str, dict[str, float]]:
    """top-1 and top-5 -> {"delta": points, "p_value": exact McNemar p} over the same images;
    mean per-class recall -> {"delta", "p_value": stratified paired bootstrap}, when the records
    carry each image's class (remote/zeroshot.py writes "targets")."""
    found = {}
    for k in CLASSIFICATION_KS:
        delta, p = recall_difference(mine["hits"][k], theirs["hits"][k])
        found[k] = {"delta": round(delta, 10), "p_value": p}
    per_class = class_differences(mine, theirs)
    if per_class:
        delta = sum((plus - minus) / (plus + minus + same) for plus, minus, same in per_class) * 100 / len(per_class)
        found["mean_per_class_recall"] = {"delta": round(delta, 10),
                                          "p_value": stratified_bootstrap_p(per_class, resamples)}
    return found


def class_differences(mine: dict, theirs: dict) -> list[tuple[int, int, int]] | None:
    """For each class with images: (images only MINE's top-1 gets right, only THEIRS', both or
    neither); None when the records do not say each image's class."""
    targets = mine.get("targets")
    if not isinstance(targets, list) or len(targets) != mine["queries"] or targets != theirs.get("targets", targets):
        return None
    counts: dict = {}
    for target, a, b in zip(targets, mine["hits"]["top1"], theirs["hits"]["top1"]):
        plus, minus, same = counts.get(target, (0, 0, 0))
        counts[target] = (plus + (a > b), minus + (a < b), same + (a == b))
    return [counts[target] for target in sorted(counts)]


def stratified_bootstrap_p(per_class: list[tuple[int, int, int]], resamples: int = RESAMPLES,
                           seed: int = SEED) -> float:
    """Two-sided paired bootstrap p-value of a difference in mean per-class recall, as
    paired_bootstrap_p, with each resample drawn within each class: a class keeps its size, as
    in the dataset, so every class keeps its weight (1 / classes) and its recall's denominator;
    resampling over all the images would let classes grow, shrink or vanish, a noise the
    metric itself does not have.

    PER_CLASS: (only mine right, only theirs right, both alike) per class. What a class adds to
    a resample is its drawn (only mine - only theirs), drawn at once from that difference's exact
    distribution (one uniform per class and resample); classes without a disagreement add 0 to every resample and are not drawn. Sums
    are integers over the classes' common multiple, so the comparison with the observed
    difference is exact.
    """
    scale = math.lcm(*(sum(counts) for counts in per_class)) if per_class else 1
    active = [counts for counts in per_class if counts[0] or counts[1]]
    draws = {counts: _difference_distribution(*counts) for counts in set(active)}
    observed = sum(scale // sum(counts) * (counts[0] - counts[1]) for counts in active)
    rng = random.Random(seed)
    totals = [0] * resamples
    for counts in active:  # class by class, every resample at once: C loops, not a Python loop per draw
        cumulative, values = draws[counts]
        weighted = [scale // sum(counts) * value for value in values]
        totals = list(map(operator.add, totals, rng.choices(weighted, cum_weights=cumulative, k=resamples)))
    extreme = sum(abs(total - observed) >= abs(observed) for total in totals)
    return (extreme + 1) / (resamples + 1)


def _difference_distribution(plus: int, minus: int, same: int) -> tuple[list[float], list[int]]:
    """(cumulative probabilities, values) of drawn(plus) - drawn(minus) when a class's
    n = plus + minus + same images are resampled with replacement: the disagreements drawn are
    D ~ Binomial(n, (plus + minus) / n) and, of them, those MINE gets right Binomial(D, plus /
    (plus + minus)). Terms beyond 12 standard deviations (below 1e-30) are left out."""
    n, disagree = plus + minus + same, plus + minus
    pmf: dict[int, float] = {}
    for d in _likely(n, disagree / n):
        weight = _binomial_pmf(n, d, disagree / n)
        for k in _likely(d, plus / disagree):
            pmf[2 * k - d] = pmf.get(2 * k - d, 0.0) + weight * _binomial_pmf(d, k, plus / disagree)
    values = sorted(pmf)
    total, running, cumulative = sum(pmf.values()), 0.0, []
    for value in values:
        running += pmf[value]
        cumulative.append(running / total)
    cumulative[-1] = 1.0  # a uniform in [0, 1) always lands on a value
    return cumulative, values


def _likely(n: int, p: float) -> range:
    spread = 12 * math.sqrt(n * p * (1 - p)) + 12
    return range(max(0, math.floor(n * p - spread)), min(n, math.ceil(n * p + spread)) + 1)


def _binomial_pmf(n: int, k: int, p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return float(k == (n if p >= 1.0 else 0))
    return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log1p(-p))


def is_significant(p_value: float | None) -> bool:
    return p_value is not None and p_value < ALPHA


def half_width(interval: list[float] | None) -> float | None:
    """The ± of an interval, in points."""
    return None if not interval else (interval[1] - interval[0]) / 2


def plus_minus(interval: list[float] | None) -> str:
    """' ±1.4' after a value (one decimal: the interval is itself an estimate); '' without one."""
    spread = half_width(interval)
    return "" if spread is None else f" ±{spread:.1f}"


def best_versus_runner_up(candidates: dict[str, tuple[float, dict | None]], direction: str,
                          metric: str, resamples: int = RESAMPLES) -> dict | None:
    """For a sweep's best-epoch mark: CANDIDATES label -> (value, query hits). The best and the
    runner-up by value, and whether the best is significantly better; None with fewer than two
    candidates, or when the two were not run on the same queries."""
    ranked = sorted(candidates.items(), key=lambda item: item[1][0], reverse=True)
    if len(ranked) < 2:
        return None
    (best, (_, best_hits)), (runner_up, (_, runner_hits)) = ranked[0], ranked[1]
    found = significance(best_hits, runner_hits, resamples)
    if not found or direction not in found:
        return None
    test = found[direction][metric]
    return {"best": best, "runner_up": runner_up, **test, "is_significant": is_significant(test["p_value"])}
