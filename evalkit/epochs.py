"""PURE: the comparison across epochs. Each row knows its experiment and the epoch its checkpoint
holds (kept in summary.json by the evaluation itself; for rows kept before that, read from the
label's experiment and the checkpoint's file name); each experiment's best row is the one with
the highest average of the two directions' mean recall among its rows of the same directions
(ties: a numbered epoch before epoch_latest.pt, then the lower epoch, whatever the input order);
a trend is that average over the experiment's epochs, drawn as a sparkline."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .comparison import ModelResult
from .evaluation import epoch_in_name
from .significance import CLASSIFICATION, is_significant, significance
from .sweep import order_key

RECALL_DIRECTIONS = ("text_to_image", "image_to_text")
SPARKS = "▁▂▃▄▅▆▇█"


def split_label(label: str) -> tuple[str, str]:
    """('EXP', 'epoch_5') for EXP@epoch_5; ('EXP', 'epoch_latest') for EXP: how rows kept before
    summary.json carried their experiment are placed."""
    experiment, at, stem = label.rpartition("@")
    return (experiment, stem) if at and experiment else (label, "epoch_latest")


def located(result: ModelResult) -> tuple[str, int | None]:
    """RESULT's experiment and epoch: its own when the evaluation recorded them."""
    if result.experiment:
        return result.experiment, result.epoch
    return split_label(result.label)[0], epoch_in_name(result.checkpoint)


def score(result: ModelResult) -> float | None:
    """The average of the two directions' mean recall (of the one run, when one was skipped);
    zero-shot classification's top-1."""
    top1 = result.value(CLASSIFICATION, "top1")
    if top1 is not None:
        return top1 if result.ok else None
    values = [result.value(direction, "mean_recall") for direction in RECALL_DIRECTIONS]
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if result.ok and values else None


def directions_of(result: ModelResult) -> tuple[str, ...]:
    if result.value(CLASSIFICATION, "top1") is not None:
        return (CLASSIFICATION,)
    return tuple(d for d in RECALL_DIRECTIONS if result.value(d, "mean_recall") is not None)


def rank_key(result: ModelResult) -> tuple:
    """Better rows first: higher score, then a numbered epoch (epoch_latest.pt is overwritten by
    training), then the lower epoch, then the label."""
    epoch = result.epoch if result.epoch is not None else float("inf")
    return (-(score(result) or 0.0), epoch_in_name(result.checkpoint) is None, epoch, result.label)


def ranked(rows: list[ModelResult]) -> list[ModelResult]:
    """One experiment's scored rows that can be ranked against each other, best first: those with
    the most directions (a row of one direction is no rival for rows of two)."""
    scored = [row for row in rows if score(row) is not None]
    if not scored:
        return []
    groups: dict[tuple[str, ...], list[ModelResult]] = {}
    for row in scored:
        groups.setdefault(directions_of(row), []).append(row)
    widest = max(groups.items(), key=lambda item: (len(item[0]), len(item[1]), item[0]))[1]
    return sorted(widest, key=rank_key)


def annotate(results: list[ModelResult]) -> list[ModelResult]:
    """RESULTS, in the order given, each with its experiment and epoch, and whether it is its
    experiment's best row."""
    named = []
    for result in results:
        experiment, epoch = located(result)
        named.append(dataclasses.replace(result, experiment=experiment, epoch=epoch, best=False))
    experiments: dict[str, list[ModelResult]] = {}
    for result in named:
        experiments.setdefault(result.experiment or "", []).append(result)
    best = {id(order[0]): order for order in map(ranked, experiments.values()) if order}
    return [dataclasses.replace(result, best=True, versus_runner_up=versus_runner_up(result, best[id(result)]))
            if id(result) in best else result for result in named]


def versus_runner_up(best: ModelResult, order: list[ModelResult]) -> dict | None:
    """The best row against its experiment's runner-up (ORDER: its rows ranked, the best first):
    the paired test of each direction's mean recall on the same queries, and whether either is
    significant. None without a runner-up, or when the two share no queries (no per-query hits)."""
    if len(order) < 2:
        return None
    runner_up = order[1]
    found = significance(best.query_hits, runner_up.query_hits)
    if not found:
        return None
    tests = {direction: tests["mean_recall"] if "mean_recall" in tests else tests["top1"]
             for direction, tests in found.items()}
    return {"label": runner_up.label, **tests,
            "significant": any(is_significant(test["p_value"]) for test in tests.values())}


def in_epoch_order(results: list[ModelResult], rank: dict[str, int] | None = None) -> list[ModelResult]:
    """Experiments by RANK (a registry's order), then by name; each one's rows by epoch,
    epoch_latest.pt last."""
    rank = rank or {}

    def key(result: ModelResult) -> tuple:
        experiment = located(result)[0]
        return (rank.get(experiment, len(rank)), experiment, order_key(result.checkpoint), result.label)
    return sorted(results, key=key)


def selected(results: list[ModelResult], models: tuple[str, ...] = (), best_only: bool = False) -> list[ModelResult]:
    """Annotated RESULTS of the MODELS named (an experiment or a label; all when none), with
    BEST_ONLY the best row of each experiment."""
    chosen = [r for r in results if not models or r.experiment in models or r.label in models]
    return [r for r in chosen if r.best] if best_only else chosen


@dataclass(frozen=True)
class Trend:
    """One experiment's score over its evaluated checkpoints, in epoch order."""

    experiment: str
    labels: tuple[str, ...]
    scores: tuple[float, ...]
    best_label: str
    versus_runner_up: dict | None = None  # the best row's (annotate)

    @property
    def sparkline(self) -> str:
        return sparkline(self.scores)


def trends(results: list[ModelResult]) -> list[Trend]:
    """For each experiment with at least two scored checkpoints (annotated RESULTS)."""
    found: dict[str, list[ModelResult]] = {}
    for result in in_epoch_order(results):
        if score(result) is not None:
            found.setdefault(result.experiment or result.label, []).append(result)
    return [Trend(experiment, tuple(r.label for r in rows), tuple(score(r) for r in rows), best.label,
                  best.versus_runner_up)
            for experiment, rows in found.items() if len(rows) > 1
            for best in [next((r for r in rows if r.best), rows[0])]]


def sparkline(values: tuple[float, ...] | list[float]) -> str:
    """One block character per value, lowest ▁ to highest █ (all equal: all ▄)."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[3] * len(values)
    return "".join(SPARKS[round((value - low) / (high - low) * (len(SPARKS) - 1))] for value in values)
