"""Benchmark: what provenance costs a run (remote/provenance.py): a checkpoint never hashed vs
one whose SHA-256 the server's hash cache already holds.

    EVALKIT_TESTBED_PYTHON=/tmp/srvvenv/bin/python python benchmarks/hashing.py [--size-mb 1024] [--runs 3]

Writes a checkpoint-sized file of random bytes (default 1 GiB; a ViT-B-16 checkpoint in fp32 is
about 750 MB) and the test bed's tiny dataset in a temporary folder, then times the whole
server script, alternating: first = with an empty hash cache (the file is hashed while
streamed), cached = the same file again (size and mtime unchanged: the cache's hash). The file
is in the page cache when hashed (it was just written), so "first" is the hashing itself; a
cold disk adds its read time. Prints a table and writes benchmarks/results/hashing.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evalkit.testbed.builders import build_dataset  # noqa: E402

SCRIPT = ROOT / "evalkit" / "remote" / "provenance.py"


def write_checkpoint(path: Path, size_mb: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for _ in range(size_mb):
            handle.write(block)


def timed(python: str, argv: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([python, str(SCRIPT), *argv], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    line = next(line for line in done.stdout.splitlines() if line.startswith("EVALKIT-PROVENANCE "))
    return seconds, json.loads(line.split(" ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "hashing.json")
    args = parser.parse_args()
    python = os.environ.get("EVALKIT_TESTBED_PYTHON", sys.executable)
    with tempfile.TemporaryDirectory(prefix="evalkit-hashing-") as work:
        work = Path(work)
        checkpoint, cache = work / "epoch_latest.pt", work / "hash-cache.json"
        write_checkpoint(checkpoint, args.size_mb)
        dataset = build_dataset(Path(python), work / "datapath", "Flickr30k-CN", "valid")
        argv = ["--checkpoint", str(checkpoint), "--images", str(dataset / "lmdb" / "valid" / "imgs"),
                "--texts", str(dataset / "valid_texts.jsonl"), "--chinese-clip-dir", str(work), "--cache", str(cache),
                "--cpu"]
        first, cached = [], []
        for _ in range(args.runs):
            cache.unlink(missing_ok=True)
            seconds, facts = timed(python, argv)
            assert facts["checkpoint"]["sha256_cached"] is False
            first.append(seconds)
            seconds, facts = timed(python, argv)
            assert facts["checkpoint"]["sha256_cached"] is True
            cached.append(seconds)
    result = {"size_mb": args.size_mb, "first_s": first, "cached_s": cached,
              "first_median_s": statistics.median(first), "cached_median_s": statistics.median(cached),
              "mb_per_s": args.size_mb / statistics.median(first), "python": python,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_average": os.getloadavg()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"| provenance of a {args.size_mb} MiB checkpoint | first (hashed) | cached |")
    print("|---|---|---|")
    print(f"| remote/provenance.py, median of {args.runs} | {result['first_median_s']:.2f} s "
          f"({result['mb_per_s']:.0f} MiB/s) | {result['cached_median_s']:.2f} s |")
    print(f"load average {result['load_average'][0]:.1f}; every run: first {first}, cached {cached}")


if __name__ == "__main__":
    main()
