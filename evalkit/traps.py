"""PURE: warnings for the traps that leave no trace in a results file: a context length other
than Chinese-CLIP's 52, recall no better than a random ranking, a split whose counts are not the
published dataset's. Printed with the table and kept in summary.json's `warnings`.

Chance level. Upstream counts a query as found at k when any of its relevant items is among its
top k. Under a random ranking of a gallery of N items with m relevant, that happens with
probability p = 1 - C(N-m, k) / C(N, k); the number of queries found is a sum of independent
Bernoulli(p), with mean Q·p and variance Q·p·(1-p). A recall is "indistinguishable from chance"
when the number of queries it found is at most that mean plus Z standard deviations (one-sided,
normal approximation): a random ranking stays below that bound with probability CONFIDENCE.
m is the split's average number of matches per query (pairs / queries): exact for Flickr30K-CN
(one image per text, five texts per image).
"""
from __future__ import annotations

import math
import re

CONTEXT_LENGTH = 52  # what Chinese-CLIP trained and evaluated with
CONFIDENCE = 0.999
Z = 3.090232306167813  # the standard normal's 0.999 quantile
KS = {"r1": 1, "r5": 5, "r10": 10}

# Image and text counts of the published splits, (dataset, split) -> (images, texts).
PUBLISHED_COUNTS = {
    ("flickr30kcn", "valid"): (1000, 5000),
    ("flickr30kcn", "test"): (1000, 5000),
    ("muge", "valid"): (29806, 5008),
}
STANDARD_DATASETS = ("flickr30kcn", "muge", "cococn")


def dataset_key(name: str) -> str:
    """'Flickr30k-CN', 'flickr30k_cn', 'MUGE' -> 'flickr30kcn', 'muge': how the published name is matched."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def chance_probability(gallery: int, relevant: float, k: int) -> float:
    """P(a random ranking of GALLERY items puts one of RELEVANT among its top K)."""
    if relevant <= 0 or gallery <= 0:
        return 0.0
    if k >= gallery or relevant > gallery - k:
        return 1.0
    miss = 1.0
    for j in range(k):
        miss *= (gallery - relevant - j) / (gallery - j)
    return 1.0 - miss


def chance_bound(queries: int, gallery: int, relevant: float, k: int) -> tuple[float, float]:
    """(expected recall, the recall a random ranking stays at or below with CONFIDENCE), in percent."""
    p = chance_probability(gallery, relevant, k)
    mean, spread = queries * p, math.sqrt(queries * p * (1 - p))
    return 100 * p, min(100.0, 100 * (mean + Z * spread) / queries)


def direction_counts(dataset: dict) -> dict[str, tuple[int, int, float]]:
    """direction -> (queries, gallery, average relevant per query) from the split's counts."""
    images, texts, pairs = dataset.get("num_images"), dataset.get("num_texts"), dataset.get("num_pairs")
    if not images or not texts or not pairs:
        return {}
    return {"text_to_image": (texts, images, pairs / texts), "image_to_text": (images, texts, pairs / images)}


def looks_random(recall: dict, dataset: dict) -> bool:
    """Every R@1/5/10 of text→image and image→text at or below what a random ranking reaches
    with CONFIDENCE."""
    counts = direction_counts(dataset)
    measured = [(direction, metric, value) for direction in counts
                for metric, value in (recall.get(direction) or {}).items() if metric in KS]
    if not measured:
        return False
    return all(value <= chance_bound(*counts[direction], KS[metric])[1] + 1e-9
               for direction, metric, value in measured)


def chance_warning(recall: dict, dataset: dict) -> str | None:
    if not looks_random(recall, dataset):
        return None
    queries, gallery, relevant = direction_counts(dataset)["text_to_image"]
    expected, bound = chance_bound(queries, gallery, relevant, 1)
    return (f"recall indistinguishable from chance: every R@1/5/10 is within what a random ranking of this "
            f"split ({dataset['num_images']} images, {dataset['num_texts']} texts, {dataset['num_pairs']} matches) "
            f"reaches with {CONFIDENCE:.1%} confidence (text→image R@1: {expected:.2f} expected, up to "
            f"{bound:.2f}); looks like random weights, the wrong towers or the wrong tokenizer")


def context_warning(settings: dict, dataset: dict) -> str | None:
    length = settings.get("context_length")
    if length is None or length == CONTEXT_LENGTH or dataset_key(dataset.get("name", "")) not in STANDARD_DATASETS:
        return None
    return (f"context_length {length} on {dataset['name']}: Chinese-CLIP's published numbers use "
            f"{CONTEXT_LENGTH} (texts are truncated or padded differently): set context_length: {CONTEXT_LENGTH}")


def counts_warning(dataset: dict) -> str | None:
    published = PUBLISHED_COUNTS.get((dataset_key(dataset.get("name", "")), dataset.get("split")))
    found = (dataset.get("num_images"), dataset.get("num_texts"))
    if published is None or None in found or found == published:
        return None
    return (f"{dataset['name']} {dataset['split']} has {found[0]} images and {found[1]} texts; the published split "
            f"has {published[0]} and {published[1]}: its numbers are not comparable with published ones")


def trap_warnings(provenance: dict, recall: dict) -> list[str]:
    """The traps this run fell into, one sentence each (empty when none)."""
    dataset, settings = provenance.get("dataset") or {}, provenance.get("settings") or {}
    found = [context_warning(settings, dataset), chance_warning(recall, dataset), counts_warning(dataset)]
    return [warning for warning in found if warning]
