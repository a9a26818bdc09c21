"""Benchmark: per-query hits, 95% intervals and paired significance at MUGE-valid scale.

    EVALKIT_TESTBED_PYTHON=/tmp/srvvenv/bin/python python benchmarks/significance.py [--runs N]

Synthetic, MUGE-valid sized: 29,806 images, 5,008 texts each listing 5 or 6 images (every
image in one text, so every image is an image→text query), the image→text annotation made as
upstream's transform_ir_annotation_to_tr.py makes it, and two models' top-10 prediction files
per direction (about 45% and 47% of queries answered at rank 1).

Times, median of --runs:
- server: remote/query_hits.py on one model's four files (the recall stage's extra step:
  reading the files, the hits, 10,000-resample intervals), as a process in the server's python;
- laptop: reading both models' query_hits.json and every paired test (McNemar per R@k, the
  10,000-resample paired bootstrap of mean recall, both directions), in this python, which
  needs no numpy.
Target: their sum under 5 s. Writes benchmarks/results/significance.json (--output).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evalkit.significance import parse_query_hits, significance  # noqa: E402

QUERY_HITS = ROOT / "evalkit" / "remote" / "query_hits.py"
TARGET_SECONDS = 5.0
IMAGES, TEXTS = 29_806, 5_008


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return path


def make_split(work: Path, seed: int) -> dict[str, Path]:
    rng = random.Random(seed)
    ids = list(range(IMAGES))
    rng.shuffle(ids)
    answers = {t: ids[t * IMAGES // TEXTS:(t + 1) * IMAGES // TEXTS] for t in range(TEXTS)}
    texts = write_jsonl(work / "texts.jsonl", ({"text_id": t, "text": "", "image_ids": a} for t, a in answers.items()))
    by_image: dict[int, list[int]] = {}
    for t, images in answers.items():  # transform_ir_annotation_to_tr.py's order
        for image in images:
            by_image.setdefault(image, []).append(t)
    texts_tr = write_jsonl(work / "texts.tr.jsonl", ({"image_id": i, "text_ids": t} for i, t in by_image.items()))
    files = {"texts": texts, "texts_tr": texts_tr}
    for model, rate in (("a", 0.45), ("b", 0.47)):
        files[f"t2i_{model}"] = write_jsonl(work / f"t2i_{model}.jsonl", (
            {"text_id": t, "image_ids": _top10(rng, a[0], IMAGES, rate)} for t, a in answers.items()))
        files[f"i2t_{model}"] = write_jsonl(work / f"i2t_{model}.jsonl", (
            {"image_id": i, "text_ids": _top10(rng, t[0], TEXTS, rate)} for i, t in by_image.items()))
    return files


def _top10(rng: random.Random, answer: int, gallery: int, rate: float) -> list[int]:
    """The answer at rank 1 with probability RATE, else at a random rank 2..15 (outside the top 10 from 11)."""
    rank = 0 if rng.random() < rate else rng.randrange(1, 15)
    others = [i for i in rng.sample(range(gallery), 12) if i != answer][:9]
    return (others[:rank] + [answer] + others[rank:])[:10] if rank < 10 else [*others, gallery + 1][:10]


def server_run(python: str, files: dict[str, Path], model: str, output: Path) -> float:
    argv = [python, str(QUERY_HITS), "--text-to-image", str(files["texts"]), str(files[f"t2i_{model}"]),
            "--image-to-text", str(files["texts_tr"]), str(files[f"i2t_{model}"]), "--output", str(output)]
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def laptop_run(paths: list[Path]) -> tuple[float, dict]:
    started = time.perf_counter()
    mine, theirs = (parse_query_hits(path.read_bytes()) for path in paths)
    found = significance(mine, theirs)
    return time.perf_counter() - started, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server-python", default=os.environ.get("EVALKIT_TESTBED_PYTHON", sys.executable),
                        help="a python with numpy, as on the server  [default: $EVALKIT_TESTBED_PYTHON]")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "significance.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="evalkit-significance-") as scratch:
        work = Path(scratch)
        files = make_split(work, seed=0)
        outputs = [work / "hits_a.json", work / "hits_b.json"]
        server_run(args.server_python, files, "b", outputs[1])
        server, laptop = [], []
        for _ in range(args.runs):
            server.append(server_run(args.server_python, files, "a", outputs[0]))
            seconds, found = laptop_run(outputs)
            laptop.append(seconds)
        sizes = {path.name: path.stat().st_size for path in outputs}
        inputs = sum(files[name].stat().st_size for name in ("texts", "texts_tr", "t2i_a", "i2t_a"))
    result = {"server_seconds": server, "laptop_seconds": laptop,
              "median_server_seconds": statistics.median(server), "median_laptop_seconds": statistics.median(laptop),
              "total_seconds": statistics.median(server) + statistics.median(laptop), "target_seconds": TARGET_SECONDS,
              "query_hits_bytes": sizes, "input_bytes_per_model": inputs, "significance": found,
              "load_average": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"server (query_hits.py, one model): median {result['median_server_seconds']:.2f} s  {server}")
    print(f"laptop (paired tests, both directions): median {result['median_laptop_seconds']:.2f} s  {laptop}")
    print(f"total {result['total_seconds']:.2f} s (target < {TARGET_SECONDS} s); query_hits.json "
          f"{max(sizes.values()) / 1024:.0f} KiB against {inputs / 1024 / 1024:.1f} MiB of input files; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0 if result["total_seconds"] < TARGET_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
