"""PURE: Chinese-CLIP's published zero-shot classification results
(evalkit/references/chinese_clip_zeroshot.json, package data), one plain row per model and
dataset, with the metric each was published in and why a number cannot be compared with
evalkit's top-1 (another metric: FGVC-Aircraft, VOC-2007; not reproduced by users: KITTI, PC)."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

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
