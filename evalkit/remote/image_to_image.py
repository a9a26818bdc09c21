"""Image→image retrieval from the image features already extracted: R@1/5/10 and mAP@10.

Usage (on the server, beside fast_knn.py):
    python image_to_image.py --image-feats IMG.jsonl --texts TEXTS.jsonl --labels LABELS.jsonl \
        --output image_to_image_results.json [--device auto|cuda|cpu] [--chunk-size N]

Relevance: two different images are relevant when one text of TEXTS lists both in its
image_ids. When LABELS exists ({"image_id": …, "label": …} per line), images with the same
label are relevant instead. Queries: every image with at least one relevant other image;
gallery: every image of the feature file but the query itself.

Ranking: float32 inner products of the stored features, exact top-10, equal scores in
feature-file order, as fast_knn.py ranks (its reading and top-k are used). The score matrix is
symmetric, so each tile above its diagonal serves its rows and, transposed, its columns.

Writes upstream's result schema and units (success, score, scoreJson with r1, r5, r10,
mean_recall, in percent) plus map10 and num_queries in scoreJson. When no image has a relevant
partner the result is still a success, with num_queries 0 and `skipped`: the sentence saying why.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Dict, List, Optional, Set

import numpy as np

import fast_knn  # beside this script on the server (evalkit uploads both)
from fast_knn import Candidates, KnnError

if TYPE_CHECKING:
    import torch

PROG = "image_to_image"
TOP = 10  # R@1, R@5, R@10 and mAP@10 read the top 10
RECALL_AT = (1, 5, 10)


# ----------------------------------------------------------------------------- relevance

class SharedText:
    """Relevant: listed together in one text's image_ids."""

    source = "shared_text"

    def __init__(self, partners: List[Set[int]]) -> None:
        self.partners = partners  # feature-file position -> positions of its relevant images

    def count(self, query: int) -> int:
        return len(self.partners[query])

    def is_relevant(self, query: int, other: int) -> bool:
        return other in self.partners[query]


class SameLabel:
    """Relevant: the same label in the labels file."""

    source = "same_label"

    def __init__(self, labels: List[Optional[str]]) -> None:
        self.labels = labels  # feature-file position -> its label (None: not labelled)
        self.sizes = Counter(label for label in labels if label is not None)

    def count(self, query: int) -> int:
        label = self.labels[query]
        return 0 if label is None else self.sizes[label] - 1

    def is_relevant(self, query: int, other: int) -> bool:
        return self.labels[query] is not None and self.labels[other] == self.labels[query]


def _key(value) -> str:
    """An id or label as a dictionary key: 1000 in one file matches "1000" in another."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _records(path: str, keys: tuple):
    """(line number, record) for each non-blank line of a JSONL file; each needs KEYS."""
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    missing = [key for key in keys if key not in record]
                except (ValueError, TypeError):
                    raise KnnError(f"{path}:{number}: not a JSON object") from None
                if missing:
                    raise KnnError(f"{path}:{number}: missing {', '.join(missing)}")
                yield number, record
    except OSError as error:
        raise KnnError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise KnnError(f"{path}: not UTF-8 text") from None


def shared_text(texts_path: str, positions: Dict[str, int]) -> SharedText:
    partners: List[Set[int]] = [set() for _ in positions]
    for number, record in _records(texts_path, ("image_ids",)):
        if not isinstance(record["image_ids"], list):
            raise KnnError(f"{texts_path}:{number}: image_ids must be a list")
        listed = {positions[_key(i)] for i in record["image_ids"] if _key(i) in positions}
        for position in listed:
            partners[position] |= listed - {position}
    return SharedText(partners)


def same_label(labels_path: str, positions: Dict[str, int]) -> SameLabel:
    labels: List[Optional[str]] = [None] * len(positions)
    for _, record in _records(labels_path, ("image_id", "label")):
        position = positions.get(_key(record["image_id"]))
        if position is not None:
            labels[position] = _key(record["label"])
    return SameLabel(labels)


def relevance_of(args: argparse.Namespace, image_ids: list):
    """Same labels when the labels file exists, else shared texts."""
    positions = {_key(image_id): position for position, image_id in enumerate(image_ids)}
    if os.path.exists(args.labels):
        return same_label(args.labels, positions)
    return shared_text(args.texts, positions)


def skip_reason(relevance, args: argparse.Namespace) -> str:
    if relevance.source == "same_label":
        return (f"image→image skipped: no two images of the split share a label in {args.labels}, "
                "so no image has a relevant partner")
    return (f"image→image skipped: no text of {args.texts} lists two images of the split (one image "
            f"per caption) and there is no labels file {args.labels}, so no image has a relevant partner")


# ----------------------------------------------------------------------------- ranking

def top_candidates(images: torch.Tensor, keep: int, chunk: int) -> Candidates:
    """Top-`keep` (scores, indices) of every image over every image, itself included."""
    starts = range(0, len(images), chunk)
    best: list = [None] * len(starts)
    progress = fast_knn.Progress("scoring tiles", len(starts) * (len(starts) + 1) // 2)
    done = 0
    for row_block, r0 in enumerate(starts):
        rows = images[r0:r0 + chunk]
        for column_block in range(row_block, len(starts)):
            c0 = starts[column_block]
            scores = rows @ images[c0:c0 + chunk].T
            top = scores.topk(min(keep, scores.shape[1]), dim=1)
            best[row_block] = fast_knn.merge_top(best[row_block], top.values, top.indices + c0, keep)
            if column_block != row_block:
                top = scores.T.contiguous().topk(min(keep, scores.shape[0]), dim=1)
                best[column_block] = fast_knn.merge_top(best[column_block], top.values,
                                                        top.indices + r0, keep)
            done += 1
            progress.update(done)
    return fast_knn.to_numpy(best)


def without_self(candidates: Candidates, queries: np.ndarray) -> Candidates:
    """Each query's candidates less itself (or, when it is not among them, less the last)."""
    values, indices = candidates[0][queries], candidates[1][queries]
    order = np.lexsort((indices, -values), axis=1)
    values, indices = np.take_along_axis(values, order, 1), np.take_along_axis(indices, order, 1)
    is_self = indices == queries[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), indices.shape[1] - 1)
    keep = np.ones(indices.shape, dtype=bool)
    keep[np.arange(len(queries)), drop] = False
    width = indices.shape[1] - 1
    return values[keep].reshape(-1, width), indices[keep].reshape(-1, width)


def rank_fully(images: torch.Tensor, queries: np.ndarray, chunk: int) -> np.ndarray:
    """Every gallery score of a few queries (themselves excluded), then a stable sort."""
    import torch
    per_batch = max(1, chunk * chunk // len(images))
    ranked = []
    for b0 in range(0, len(queries), per_batch):
        batch = queries[b0:b0 + per_batch]
        rows = images[torch.as_tensor(batch, device=images.device)]
        scores = torch.cat([rows @ images[g0:g0 + chunk].T for g0 in range(0, len(images), chunk)],
                           dim=1).cpu().numpy()
        scores[np.arange(len(batch)), batch] = -np.inf
        ranked.append(np.argsort(-scores, axis=1, kind="stable")[:, :min(TOP, len(images) - 1)])
    return np.concatenate(ranked)


def ranked_galleries(images: torch.Tensor, queries: np.ndarray, chunk: int) -> np.ndarray:
    """Top-10 gallery positions per query, ties in feature-file order, the query left out."""
    keep = min(TOP + 2, len(images))  # less the query itself, one past 10 shows a tie at 10th
    values, indices = without_self(top_candidates(images, keep, chunk), queries)
    ranked, unsettled = fast_knn.rank(values, indices, TOP)
    rows = np.flatnonzero(unsettled)
    if len(rows):
        ranked[rows] = rank_fully(images, queries[rows], chunk)
    return ranked


# ----------------------------------------------------------------------------- scoring

def scores(ranked: np.ndarray, queries: np.ndarray, relevance) -> dict:
    """Upstream's result document: recall (a query counts when any relevant image is in its
    top k) and mAP@10 (precision at each relevant rank, over min(relevant images, 10))."""
    hits = dict.fromkeys(RECALL_AT, 0)
    precision_total = 0.0
    for query, row in zip(queries.tolist(), ranked.tolist()):
        relevant = [relevance.is_relevant(query, other) for other in row[:TOP]]
        for k in RECALL_AT:
            hits[k] += any(relevant[:k])
        found, precision_sum = 0, 0.0
        for rank, is_relevant in enumerate(relevant, 1):
            if is_relevant:
                found += 1
                precision_sum += found / rank
        precision_total += precision_sum / min(relevance.count(query), TOP)
    count = len(queries)
    r1, r5, r10 = (hits[k] / count for k in RECALL_AT)
    mean_recall = (r1 + r5 + r10) / 3.0
    return {"success": True, "score": mean_recall * 100, "relevance": relevance.source,
            "scoreJson": {"score": mean_recall * 100, "mean_recall": mean_recall * 100, "r1": r1 * 100,
                          "r5": r5 * 100, "r10": r10 * 100, "map10": precision_total / count * 100,
                          "num_queries": count}}


def skipped(reason: str, relevance) -> dict:
    return {"success": True, "skipped": reason, "relevance": relevance.source, "scoreJson": {"num_queries": 0}}


# ----------------------------------------------------------------------------- command line

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="image_to_image.py", description=__doc__.split("\n")[0])
    parser.add_argument("--image-feats", required=True, help="image feature JSONL")
    parser.add_argument("--texts", required=True, help="the split's texts JSONL (image_ids)")
    parser.add_argument("--labels", required=True, help="labels JSONL, used when it exists")
    parser.add_argument("--output", required=True, help="result JSON to write")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--chunk-size", type=int, default=4096,
                        help="tile side: memory is about chunk-size² x 4 bytes (default 4096)")
    args = parser.parse_args(argv)
    if args.chunk_size < 1:
        parser.error("--chunk-size must be at least 1")
    return args


def _say(message: str) -> None:
    print(f"{PROG}: {message}", flush=True)


def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    [images] = fast_knn.load([(args.image_feats, "image_id", "image")])
    relevance = relevance_of(args, images.ids)
    queries = np.array([q for q in range(len(images.ids)) if relevance.count(q) > 0], dtype=np.int64)
    _say(f"loaded {len(images.ids)} image features ({images.matrix.shape[1]}-d) in "
         f"{time.monotonic() - started:.1f}s; {len(queries)} have a relevant image "
         f"({'same label' if relevance.source == 'same_label' else 'listed by one text'})")
    if not len(queries):
        document = skipped(skip_reason(relevance, args), relevance)
        _say(document["skipped"])
    else:
        import torch
        matrix = torch.from_numpy(images.matrix).to(fast_knn.choose_device(args.device))
        document = scores(ranked_galleries(matrix, queries, args.chunk_size), queries, relevance)
        score = document["scoreJson"]
        _say(f"R@1 {score['r1']:.2f}  R@5 {score['r5']:.2f}  R@10 {score['r10']:.2f}  "
             f"mAP@10 {score['map10']:.2f} over {len(queries)} queries")
    fast_knn.write_atomically(args.output, [json.dumps(document, ensure_ascii=False) + "\n"], "results")
    _say(f"image→image results are saved in {args.output}")


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    fast_knn.run_reporting(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
