"""Per-query hits and 95% bootstrap intervals, from the files upstream's recall read.

Usage (on the server, once upstream's KNN scripts wrote the predictions):
    python query_hits.py [--text-to-image TEXTS.jsonl PREDICTIONS.jsonl]
        [--image-to-text-of TEXTS.jsonl TR_PREDICTIONS.jsonl] --output query_hits.json
--image-to-text-of derives the image→text annotation from the texts as upstream's
transform_ir_annotation_to_tr.py does (its .tr.jsonl, byte for byte), so this runs beside
upstream's recall steps rather than after the transform; --image-to-text TEXTS.tr.jsonl
TR_PREDICTIONS.jsonl takes that file itself (the plans of an earlier evalkit).

Hits are counted exactly as upstream's evaluation scripts count them: the queries are the
reference file's ids in its order (a repeated id once, with its last line's answers), and a
query hits at k when any of its answers is among its first k predictions. So each hit string's
mean is upstream's R@k.

Writes one JSON document: per direction the query count, the SHA-256 of its reference file (two
runs are paired only when it matches), the hits as '0'/'1' strings in query order, and `ci95`:
the 2.5th and 97.5th percentiles (in percent) of R@1/5/10 and mean recall over 10,000
resamples of the queries, from a fixed seed. A direction whose files cannot be read gets
`error` instead; the script still exits 0, as upstream's scripts do, so that their own result
JSON says what failed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Dict, Iterable, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # atomic.py beside it, however it was started
import atomic  # noqa: E402  (evalkit uploads both)

FORMAT = "evalkit-query-hits/1"
KS = (1, 5, 10)
RESAMPLES = 10_000
SEED = 19
# (query id field, answers field) of the reference, (query id, predicted ids) of the predictions
FIELDS = {"text_to_image": (("text_id", "image_ids"), ("text_id", "image_ids")),
          "image_to_text": (("image_id", "text_ids"), ("image_id", "text_ids"))}


def read_by_id(path: str, fields: tuple) -> Dict[int, List[int]]:
    """upstream's read_reference (and read_submission's dict): one JSON object per line, a
    repeated id keeps its first place and its last line's list."""
    with open(path, encoding="utf-8") as lines:
        return by_id(lines, fields)


def by_id(lines: Iterable[str], fields: tuple) -> Dict[int, List[int]]:
    """One parse of all LINES: a line that is blank or not JSON fails it, as it fails upstream's
    line-by-line parse."""
    objects = json.loads("[" + ",".join(line.strip() for line in lines) + "]")
    return {obj[fields[0]]: obj[fields[1]] for obj in objects}


def image_to_text_annotation(texts_path: str) -> str:
    """What upstream's transform_ir_annotation_to_tr.py writes from TEXTS_PATH: per image, in the
    order images are first named, the ids of the texts naming it (a text named twice, twice),
    one json.dumps line each."""
    text_ids: Dict[int, List[int]] = {}
    with open(texts_path, encoding="utf-8") as lines:
        for line in lines:
            text = json.loads(line.strip())
            for image_id in text["image_ids"]:
                text_ids.setdefault(image_id, []).append(text["text_id"])
    return "".join("{}\n".format(json.dumps({"image_id": image_id, "text_ids": ids}))  # upstream's own format
                   for image_id, ids in text_ids.items())


def hit_strings(reference: Dict[int, List[int]], predictions: Dict[int, List[int]]) -> Dict[str, str]:
    """'r1', 'r5', 'r10' -> one '0'/'1' per query in reference order (a query without
    predictions is a KeyError: upstream fails on it too)."""
    first_hits = []  # the first rank holding an answer: a hit at k when it is below k
    for qid in reference:
        answers = set(reference[qid])
        first_hits.append(next((rank for rank, idx in enumerate(predictions[qid][:KS[-1]]) if idx in answers),
                               KS[-1]))
    return {f"r{k}": "".join("1" if rank < k else "0" for rank in first_hits) for k in KS}


def ci95(hits: Dict[str, str], seed: int, resamples: int = RESAMPLES) -> Dict[str, List[float]]:
    """Percentile intervals (percent) of R@1/5/10 and mean recall over resamples of the queries.

    A query's hits are nested (a hit at 1 is a hit at 5 and 10), so a query is one of four
    levels (how many of the three it hits) and a resample of n queries is fully described by
    how many of each level it drew: a multinomial draw. That is the same distribution as
    drawing n query indices with replacement, in O(resamples) memory instead of O(resamples * n).
    """
    levels = np.array([[int(c) for c in hits[f"r{k}"]] for k in KS], dtype=np.int64).sum(axis=0)
    n = levels.size
    if n == 0:
        return {}
    counts = np.bincount(levels, minlength=4)
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)  # (resamples, 4)
    at_least = draws[:, ::-1].cumsum(axis=1)[:, ::-1]  # queries hitting >= 1, 2, 3 of the three
    values = {"r10": at_least[:, 1], "r5": at_least[:, 2], "r1": at_least[:, 3],
              "mean_recall": (draws * np.arange(4)).sum(axis=1) / 3.0}
    return {key: [float(np.percentile(value, 2.5)) * 100 / n, float(np.percentile(value, 97.5)) * 100 / n]
            for key, value in values.items()}


def reference_of(path: str, fields: tuple, derived: bool) -> tuple:
    """(the reference by id, the SHA-256 of its file) from PATH, or (DERIVED) from the image→text
    annotation of texts PATH: the file upstream's transform would write there, never written."""
    if derived:
        text = image_to_text_annotation(path)  # json.dumps lines: ASCII, split at "\n" only
        return by_id(text.splitlines(), fields), hashlib.sha256(text.encode("utf-8")).hexdigest()
    with open(path, "rb") as raw:
        digest = hashlib.sha256(raw.read()).hexdigest()
    return read_by_id(path, fields), digest


def direction_record(direction: str, reference_path: str, predictions_path: str, seed: int,
                     resamples: int = RESAMPLES, derived: bool = False) -> dict:
    """DERIVED: REFERENCE_PATH holds the texts, whose image→text annotation is the reference."""
    reference_fields, prediction_fields = FIELDS[direction]
    try:
        reference, digest = reference_of(reference_path, reference_fields, derived)
        hits = hit_strings(reference, read_by_id(predictions_path, prediction_fields))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # upstream's own result says more
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"queries": len(reference), "reference_sha256": digest, "hits": hits,
            "ci95": ci95(hits, seed, resamples)}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="query_hits", description=__doc__.splitlines()[0])
    parser.add_argument("--text-to-image", nargs=2, metavar=("TEXTS", "PREDICTIONS"))
    parser.add_argument("--image-to-text", nargs=2, metavar=("TEXTS_TR", "TR_PREDICTIONS"))
    parser.add_argument("--image-to-text-of", nargs=2, metavar=("TEXTS", "TR_PREDICTIONS"))
    parser.add_argument("--output", required=True)
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    args = parser.parse_args(argv)
    document = {"format": FORMAT, "bootstrap": {"resamples": args.resamples, "seed": SEED, "percentiles": [2.5, 97.5]}}
    for index, direction in enumerate(FIELDS):
        derived = direction == "image_to_text" and args.image_to_text_of is not None
        paths = args.image_to_text_of if derived else getattr(args, direction)
        if paths:
            document[direction] = direction_record(direction, *paths, SEED + index, args.resamples, derived)
    atomic.write_atomically(args.output, json.dumps(document), mode=0o644)
    summary = {direction: document[direction].get("queries", "error") for direction in FIELDS if direction in document}
    print(f"query_hits: {json.dumps(summary)} -> {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
