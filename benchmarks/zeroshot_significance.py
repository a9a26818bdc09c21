"""Benchmark: the laptop's paired tests of two zero-shot classification runs at ImageNet size.

    python benchmarks/zeroshot_significance.py [--runs N]

Synthetic: 50,000 images in 1,000 classes of 50 (ImageNet's validation set), two models with
about 50% top-1 whose hits differ on about 10% of the images. Times reading both models'
query_hits.json records and every paired test (McNemar for top-1 and top-5, the 10,000-resample
bootstrap of mean per-class recall within each class), median of --runs. Needs no numpy.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evalkit.significance import parse_query_hits, significance  # noqa: E402

CLASSES, PER_CLASS = 1000, 50


def query_hits(rng: random.Random, truth: list[bool], targets: list[int], flip: float) -> bytes:
    top1 = "".join("1" if (right if rng.random() > flip else not right) else "0" for right in truth)
    top5 = "".join("1" if (hit == "1" or rng.random() < 0.5) else "0" for hit in top1)
    return json.dumps({"format": "evalkit-query-hits/1", "zeroshot_classification": {
        "queries": len(targets), "reference_sha256": "0" * 64, "hits": {"top1": top1, "top5": top5},
        "targets": targets}}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    rng = random.Random(0)
    targets = [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    truth = [rng.random() < 0.5 for _ in targets]
    mine, theirs = query_hits(rng, truth, targets, 0.1), query_hits(rng, truth, targets, 0.1)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        found = significance(parse_query_hits(mine), parse_query_hits(theirs))
        times.append(time.perf_counter() - start)
    print(json.dumps(found["zeroshot_classification"]))
    print(f"{len(targets)} images, {CLASSES} classes: {statistics.median(times):.2f} s "
          f"(median of {runs}: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
