"""PURE: recall against epoch. Which experiment and epoch each evaluated checkpoint is (the row's
own, kept in summary.json by the evaluation; for older rows, the label's experiment and the
epoch in the checkpoint's file name: `epoch5.pt` as Chinese-CLIP saves it, or `epoch_5.pt`), and
the data of one chart per dataset split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from .comparison import METRICS, Comparison, ModelResult
from .epochs import located
from .evaluation import CLASSIFICATION, epoch_in_name, is_latest_name

LATEST = "latest"
DIRECTIONS = ("text_to_image", "image_to_text", "image_to_image", CLASSIFICATION)
CLASSIFICATION_METRICS = ("top1", "top5", "mean_per_class_recall")


@dataclass(frozen=True)
class CheckpointPoint:
    """Where one evaluated checkpoint sits: its experiment, and its epoch or another name."""

    experiment: str
    epoch: int | None   # None: not a numbered epoch (epoch_latest.pt, best.pt, ...)
    name: str           # the x axis tick: "5", "latest", or the file's stem


def parse_checkpoint(result: ModelResult) -> CheckpointPoint:
    """(team, 5) for team's epoch5.pt or epoch_5.pt; (team, latest) for its epoch_latest.pt; other
    files by their stem."""
    experiment = located(result)[0]
    if is_latest_name(result.checkpoint):
        return CheckpointPoint(experiment, None, LATEST)
    epoch = epoch_in_name(result.checkpoint)
    if epoch is not None:
        return CheckpointPoint(experiment, epoch, str(epoch))
    return CheckpointPoint(experiment, None, PurePosixPath(result.checkpoint).stem)


@dataclass(frozen=True)
class Series:
    """One experiment's checkpoints, in axis order: (tick, direction -> metric -> recall %), and
    beside each point its 95% intervals (direction -> metric -> [low, high] %; {} when the run
    kept none)."""

    experiment: str
    points: tuple[tuple[str, dict[str, dict[str, float]]], ...]
    intervals: tuple[dict[str, dict[str, list[float]]], ...] = ()

    def interval(self, index: int, direction: str, metric: str) -> list[float] | None:
        found = self.intervals[index] if index < len(self.intervals) else {}
        return found.get(direction, {}).get(metric)


@dataclass(frozen=True)
class Chart:
    """One dataset split's recall: per direction and metric, a line per experiment over the
    epochs; when no experiment has two checkpoints, grouped bars instead."""

    dataset: str
    split: str
    directions: tuple[str, ...]
    metrics: tuple[str, ...]
    ticks: tuple[str, ...]          # the x axis: numbered epochs ascending, then the others, latest last
    series: tuple[Series, ...]

    @property
    def is_over_epochs(self) -> bool:
        return any(len(series.points) > 1 for series in self.series)

    @property
    def has_intervals(self) -> bool:
        return any(found for series in self.series for found in series.intervals)

    @property
    def name(self) -> str:
        """A file name for it: '<dataset>-<split>'."""
        return f"{self.dataset}-{self.split}"


def build_chart(comparison: Comparison) -> Chart | None:
    """The chart of a comparison's successful rows; None when there is none."""
    located = [(parse_checkpoint(row.result), row.result)
               for row in comparison.rows if row.result.ok and row.result.recall]
    if not located:
        return None
    ticks = _ticks([point for point, _ in located])
    experiments: dict[str, list[tuple[CheckpointPoint, ModelResult]]] = {}
    for point, result in located:
        experiments.setdefault(point.experiment, []).append((point, result))
    series = []
    for name, found in experiments.items():
        found.sort(key=lambda item: ticks.index(item[0].name))
        series.append(Series(name, tuple((point.name, result.recall) for point, result in found),
                             tuple(result.ci95 or {} for _, result in found)))
    directions = tuple(d for d in DIRECTIONS if any(d in result.recall for _, result in located))
    metrics = CLASSIFICATION_METRICS if directions == (CLASSIFICATION,) else METRICS
    return Chart(comparison.dataset, comparison.split, directions, metrics, tuple(ticks), tuple(series))


def _ticks(points: list[CheckpointPoint]) -> list[str]:
    numbered = sorted({p.epoch for p in points if p.epoch is not None})
    others = sorted({p.name for p in points if p.epoch is None}, key=lambda name: (name == LATEST, name))
    return [str(epoch) for epoch in numbered] + others
