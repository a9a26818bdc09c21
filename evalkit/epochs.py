"""PURE: the comparison across epochs. Each row knows its experiment and epoch (from its label:
EXP@epoch_5 is epoch 5 of EXP, EXP is its epoch_latest.pt); each experiment's best row is the
one with the highest average of the two directions' mean recall; a trend is that average over
the experiment's epochs, drawn as a sparkline."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .comparison import ModelResult
from .evaluation import LATEST_STEM
from .significance import is_significant, significance
from .sweep import epoch_of_stem, order_key

RECALL_DIRECTIONS = ("text_to_image", "image_to_text")
SPARKS = "▁▂▃▄▅▆▇█"


def split_label(label: str) -> tuple[str, str]:
    """('EXP', 'epoch_5') for EXP@epoch_5; ('EXP', 'epoch_latest') for EXP."""
    experiment, at, stem = label.rpartition("@")
    return (experiment, stem) if at and experiment else (label, LATEST_STEM)


def score(result: ModelResult) -> float | None:
    """The average of the two directions' mean recall (of the one run, when one was skipped)."""
    values = [result.value(direction, "mean_recall") for direction in RECALL_DIRECTIONS]
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if result.ok and values else None


def annotate(results: list[ModelResult]) -> list[ModelResult]:
    """RESULTS, in the order given, each with its experiment, epoch and whether it is its
    experiment's best row (the first of equals)."""
    named = []
    for result in results:
        experiment, stem = split_label(result.label)
        named.append(dataclasses.replace(result, experiment=experiment, epoch=epoch_of_stem(stem), best=False))
    best: dict[str, int] = {}
    for index, result in enumerate(named):
        mine, holder = score(result), best.get(result.experiment or "")
        if mine is not None and (holder is None or mine > score(named[holder])):
            best[result.experiment or ""] = index
    return [dataclasses.replace(result, best=True, versus_runner_up=versus_runner_up(result, named))
            if index in best.values() else result for index, result in enumerate(named)]


def versus_runner_up(best: ModelResult, results: list[ModelResult]) -> dict | None:
    """The best row against its experiment's runner-up (the next highest score): the paired test
    of each direction's mean recall on the same queries, and whether either is significant.
    None without a runner-up, or when the two share no queries (no per-query hits)."""
    others = [r for r in results if r.experiment == best.experiment and r is not best and score(r) is not None]
    if not others:
        return None
    runner_up = max(others, key=score)  # the first of equals
    found = significance(best.query_hits, runner_up.query_hits)
    if not found:
        return None
    tests = {direction: tests["mean_recall"] for direction, tests in found.items()}
    return {"label": runner_up.label, **tests,
            "significant": any(is_significant(test["p_value"]) for test in tests.values())}


def in_epoch_order(results: list[ModelResult], rank: dict[str, int] | None = None) -> list[ModelResult]:
    """Experiments by RANK (a registry's order), then by name; each one's rows by epoch,
    epoch_latest.pt last."""
    rank = rank or {}

    def key(result: ModelResult) -> tuple:
        experiment, stem = split_label(result.label)
        return (rank.get(experiment, len(rank)), experiment, order_key(stem + ".pt"))
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
