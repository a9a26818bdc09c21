"""PURE: Chinese-CLIP's published zero-shot classification results
(evalkit/references/chinese_clip_zeroshot.json, package data), one plain row per model and
dataset, with the metric each was published in and why a number cannot be compared with
evalkit's top-1 (another metric: FGVC-Aircraft, VOC-2007; not reproduced by users: KITTI, PC)."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

from .traps import dataset_key

DATA_FILE = "chinese_clip_zeroshot.json"
METRIC_NAMES = {"top1": "top-1 accuracy", "mean_per_class_recall": "mean per-class accuracy"}


@lru_cache(maxsize=1)
def _document() -> dict:
    return json.loads(resources.files("evalkit").joinpath("references", DATA_FILE).read_text(encoding="utf-8"))


def row_name(model: str, dataset: str) -> str:
    """'vit-b-16-cifar100-zeroshot-classification', in the style of the retrieval rows' names."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower().replace("cn-clip ", "").replace("@336px", "-336")).strip("-")
    return f"{slug}-{dataset.lower()}-zeroshot-classification"


def classification_rows() -> list[dict]:
    """Every published number: name, model, towers, dataset (and upstream's folder name for it),
    metric, value in percent, warnings, source."""
    document = _document()
    rows = []
    for model in document["models"]:
        for dataset, value in model["values"].items():
            facts = document["datasets"][dataset]
            flag = facts["flag"]
            rows.append({"name": row_name(model["model"], dataset), "model": model["model"],
                         "vision_model": model["vision_model"], "text_model": model["text_model"],
                         "dataset": dataset, "folder": facts["folder"], "setup": "zero-shot",
                         "metric": METRIC_NAMES.get(facts["metric"], facts["metric"]), "value": value,
                         "comparable_with_top1": flag is None,
                         "warnings": [f"{dataset}: {document['notes'][flag]}"] if flag else [],
                         "source": dict(document["source"], row=model["model"], columns=dataset)})
    return rows


def dataset_notes() -> list[str]:
    """One line per dataset whose number is not evalkit's top-1, for under a table."""
    document = _document()
    return [f"{name}: {METRIC_NAMES.get(facts['metric'], facts['metric'])}; {document['notes'][facts['flag']]}"
            for name, facts in document["datasets"].items() if facts["flag"]]


def names() -> list[str]:
    return [row["name"] for row in classification_rows()]


def find(name: str) -> dict | None:
    """The published classification row named NAME (its `references --classification --json` name), or None."""
    wanted = name.strip().lower()
    return next((row for row in classification_rows() if row["name"] == wanted), None)


# the column of a comparison a published metric is the same as: mean per-class accuracy is mean
# per-class recall; VOC's 11-point mAP has none
COLUMN_OF_METRIC = {name: key for key, name in METRIC_NAMES.items()}
CLASSIFICATION = "zeroshot_classification"


def comparison_rows(rows: list[dict], dataset: str, anchor: dict | None = None) -> list[dict]:
    """Published classification ROWS as a classification comparison's published rows (the shape
    of references.reference_rows): the number in the column of its metric, its delta against
    ANCHOR (a row's recall: the reference minus it), no interval and no test; warnings: the
    metric's or the reproduction's caveat, and another dataset than DATASET (the comparison's
    folder name, matched to the published name or upstream's folder name for it)."""
    found = []
    for row in rows:
        column = COLUMN_OF_METRIC.get(row["metric"])
        recall = {CLASSIFICATION: {column: row["value"]}} if column else {}
        mine = (anchor or {}).get(CLASSIFICATION, {})
        delta = {CLASSIFICATION: {column: round(row["value"] - mine[column], 10)}} if column in mine else None
        found.append({"label": f"published: {row['name']}", "name": row["name"], "model": row["model"],
                      "dataset": row["dataset"], "split": "test", "setup": row["setup"], "recall": recall,
                      "mean_recall_computed": [], "delta": delta, "source": row["source"],
                      "warnings": [*row["warnings"], *_placement(row, column), *_other_dataset(row, dataset)]})
    return found


def _placement(row: dict, column: str | None) -> list[str]:
    if column is None:
        return [f"{row['dataset']}: its published {row['metric']} ({row['value']}) has no column here"]
    if column != "top1":
        return [f"{row['dataset']}: its published {row['metric']} is shown under MPCR (mean per-class recall)"]
    return []


def _other_dataset(row: dict, dataset: str) -> list[str]:
    if dataset_key(dataset) in (dataset_key(row["dataset"]), dataset_key(row["folder"])):
        return []
    return [f"{row['name']} was measured on {row['dataset']} (upstream's folder {row['folder']}), not {dataset}"]
