"""Chinese-CLIP's published retrieval results (evalkit/references/chinese_clip.json, package
data), looked up by name and shown as rows beside evaluated models.

`reference_rows` is plain data for any output (the terminal, Markdown, CSV, JSON, an HTML
report): one dict per reference with its numbers, deltas, source and warnings.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .traps import dataset_key

DATA_FILE = "chinese_clip.json"
METRICS = ("r1", "r5", "r10", "mean_recall")


@dataclass(frozen=True)
class Reference:
    """One published result: a model, a dataset split, zero-shot or fine-tuned."""

    name: str
    model: str
    vision_model: str
    text_model: str
    dataset: str
    split: str
    setup: str                                   # "zero-shot" or "finetune"
    recall: dict[str, dict[str, float]]          # direction -> metric -> percent, as published
    source: dict[str, str]                       # repository, file, commit, section, row, columns

    @property
    def label(self) -> str:
        return f"published: {self.name}"

    def with_mean_recall(self) -> dict[str, dict[str, float]]:
        """The published numbers, and where no mean recall is published, the mean of R@1/5/10
        (what upstream's mean_recall is), rounded to two decimals."""
        return {direction: {**values, "mean_recall": values.get("mean_recall",
                                                                round((values["r1"] + values["r5"] + values["r10"]) / 3, 2))}
                for direction, values in self.recall.items()}

    def computed_mean(self) -> list[str]:
        return [direction for direction, values in self.recall.items() if "mean_recall" not in values]

    def describe_source(self) -> str:
        s = self.source
        return f"{s['repository']} {s['file']} ({s['commit'][:12]}), “{s['section']}”, row {s['row']}, {s['columns']}"


@lru_cache(maxsize=1)
def all_references() -> tuple[Reference, ...]:
    text = resources.files("evalkit").joinpath("references", DATA_FILE).read_text(encoding="utf-8")
    return tuple(Reference(**entry) for entry in json.loads(text)["references"])


def names() -> list[str]:
    return [reference.name for reference in all_references()]


def find(name: str) -> Reference | None:
    wanted = name.strip().lower()
    return next((reference for reference in all_references() if reference.name == wanted), None)


def mismatch(reference: Reference, dataset: str, split: str) -> str | None:
    """Why REFERENCE was not measured on what the rows were (another dataset or split), or None."""
    if dataset_key(reference.dataset) != dataset_key(dataset):
        return f"{reference.name} was measured on {reference.dataset} {reference.split}, not {dataset}"
    if reference.split != split:
        return (f"{reference.name} was measured on the {reference.split} split, these rows on {split}: "
                "the numbers are not comparable")
    return None


def reference_rows(references: list[Reference], dataset: str, split: str,
                   anchor: dict[str, dict[str, float]] | None = None) -> list[dict]:
    """One plain row per reference: its numbers (mean recall computed where unpublished),
    deltas against ANCHOR (the reference minus the anchor's recall, as rows are against the
    baseline), where it comes from, and a warning when measured on another dataset or split."""
    rows = []
    for reference in references:
        recall = reference.with_mean_recall()
        delta = None
        if anchor:
            delta = {direction: {metric: round(value - anchor[direction][metric], 10)
                                 for metric, value in values.items() if metric in anchor.get(direction, {})}
                     for direction, values in recall.items() if direction in anchor}
        warning = mismatch(reference, dataset, split)
        rows.append({"label": reference.label, "name": reference.name, "model": reference.model,
                     "dataset": reference.dataset, "split": reference.split, "setup": reference.setup,
                     "recall": recall, "mean_recall_computed": reference.computed_mean(), "delta": delta,
                     "source": reference.source, "warnings": [warning] if warning else []})
    return rows
