"""Benchmark: upstream's two KNN scripts against fast_knn.py, at MUGE-valid scale.

    EVALKIT_TESTBED_PYTHON=/tmp/srvvenv/bin/python python benchmarks/knn.py [--runs N] [--output P]

Generates synthetic features shaped like MUGE valid (29,806 images, 5,008 texts, 512-d,
L2-normalised float32, written the way extract_features.py writes them), then times
  A: make_topk_predictions.py + make_topk_predictions_tr.py (text→image and image→text)
  B: fast_knn.py writing both files in one process
alternating A and B, and reports medians, the speed ratio, each program's peak memory and
whether B's predictions equal A's (apart from near-ties). The KNN scripts run with the
"server" python (torch + cn_clip); this script itself needs only the standard library.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST_KNN = ROOT / "evalkit" / "remote" / "fast_knn.py"
CPU_LAUNCH = ROOT / "evalkit" / "remote" / "cpu_launch.py"
TARGET_RATIO = 20.0
TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Timing:
    seconds: float
    peak_rss_mib: float


@dataclass(frozen=True)
class Paths:
    image_feats: Path
    text_feats: Path
    upstream_t2i: Path
    upstream_i2t: Path
    fast_t2i: Path
    fast_i2t: Path

    @classmethod
    def under(cls, data_dir: Path, work_dir: Path) -> "Paths":
        return cls(data_dir / "valid_imgs.img_feat.jsonl", data_dir / "valid_texts.txt_feat.jsonl",
                   work_dir / "upstream_t2i.jsonl", work_dir / "upstream_i2t.jsonl",
                   work_dir / "fast_t2i.jsonl", work_dir / "fast_i2t.jsonl")


# ----------------------------------------------------------------------------- running

def run_timed(argv: list[str], log: Path) -> Timing:
    """Wall time and peak RSS of one child process (os.wait4 reports that child's own rusage)."""
    started = time.perf_counter()
    with open(log, "w") as output:
        child = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{argv[1]} failed with exit code {child.returncode}; log {log}:\n{tail}")
    return Timing(seconds, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def upstream_script(python: str, name: str) -> str:
    found = subprocess.run([python, "-c", "import importlib.util; print(importlib.util."
                            "find_spec('cn_clip').submodule_search_locations[0])"],
                           capture_output=True, text=True, check=True)
    return str(Path(found.stdout.strip()) / "eval" / name)


def run_upstream(python: str, device: str, paths: Paths, top_k: int, logs: Path) -> dict:
    # Upstream calls .cuda() unconditionally; cpu_launch.py keeps it on the CPU unchanged.
    launcher = [python] if device == "cuda" else [python, str(CPU_LAUNCH)]
    timings = {}
    for direction, script, output in (
            ("t2i", "make_topk_predictions.py", paths.upstream_t2i),
            ("i2t", "make_topk_predictions_tr.py", paths.upstream_i2t)):
        argv = [*launcher, upstream_script(python, script), "--image-feats", str(paths.image_feats),
                "--text-feats", str(paths.text_feats), "--top-k", str(top_k),
                "--output", str(output)]
        timings[direction] = run_timed(argv, logs / f"upstream_{direction}.log")
    return timings


def run_fast(python: str, device: str, paths: Paths, top_k: int, logs: Path) -> Timing:
    argv = [python, str(FAST_KNN), "--image-feats", str(paths.image_feats),
            "--text-feats", str(paths.text_feats), "--top-k", str(top_k), "--device", device,
            "--t2i-output", str(paths.fast_t2i), "--i2t-output", str(paths.fast_i2t)]
    return run_timed(argv, logs / "fast_knn.log")


def resolve_device(python: str, device: str) -> str:
    if device != "auto":
        return device
    probe = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, check=True)
    return "cuda" if probe.stdout.strip() == "True" else "cpu"


def time_alternating(python: str, device: str, paths: Paths, top_k: int, runs: int,
                     logs: Path) -> tuple[list[dict], list[Timing]]:
    """A then B, then B then A, ...: slow drift in machine load hits both sides alike."""
    upstream, fast = [], []
    for run in range(runs):
        order = ("A", "B") if run % 2 == 0 else ("B", "A")
        for side in order:
            if side == "A":
                upstream.append(run_upstream(python, device, paths, top_k, logs))
                timing = upstream[-1]["t2i"].seconds + upstream[-1]["i2t"].seconds
            else:
                fast.append(run_fast(python, device, paths, top_k, logs))
                timing = fast[-1].seconds
            print(f"run {run + 1}/{runs} {'upstream' if side == 'A' else 'fast_knn'}: "
                  f"{timing:.1f}s", file=sys.stderr, flush=True)
    return upstream, fast


# ----------------------------------------------------------------------------- reporting

def summarise(upstream: list[dict], fast: list[Timing]) -> dict:
    t2i = statistics.median(run["t2i"].seconds for run in upstream)
    i2t = statistics.median(run["i2t"].seconds for run in upstream)
    upstream_total = statistics.median(run["t2i"].seconds + run["i2t"].seconds for run in upstream)
    fast_total = statistics.median(timing.seconds for timing in fast)
    ratio = upstream_total / fast_total
    return {
        "upstream_t2i_median_s": round(t2i, 2),
        "upstream_i2t_median_s": round(i2t, 2),
        "upstream_total_median_s": round(upstream_total, 2),
        "fast_knn_median_s": round(fast_total, 2),
        "speed_ratio": round(ratio, 1),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "upstream_peak_rss_mib": round(max(max(run["t2i"].peak_rss_mib, run["i2t"].peak_rss_mib)
                                           for run in upstream), 1),
        "fast_knn_peak_rss_mib": round(max(timing.peak_rss_mib for timing in fast), 1),
        "upstream_runs_s": [[round(run["t2i"].seconds, 2), round(run["i2t"].seconds, 2)]
                            for run in upstream],
        "fast_knn_runs_s": [round(timing.seconds, 2) for timing in fast],
    }


def print_table(timings: dict, parity: dict) -> None:
    rows = [
        ("upstream text→image", f"{timings['upstream_t2i_median_s']:.1f}", ""),
        ("upstream image→text", f"{timings['upstream_i2t_median_s']:.1f}", ""),
        ("upstream both", f"{timings['upstream_total_median_s']:.1f}",
         f"{timings['upstream_peak_rss_mib']:.0f}"),
        ("fast_knn both", f"{timings['fast_knn_median_s']:.1f}",
         f"{timings['fast_knn_peak_rss_mib']:.0f}"),
    ]
    print(f"{'program':<22}{'median s':>10}{'peak RSS MiB':>14}")
    for name, seconds, rss in rows:
        print(f"{name:<22}{seconds:>10}{rss:>14}")
    verdict = "meets" if timings["meets_target"] else "misses"
    print(f"speed ratio {timings['speed_ratio']}x ({verdict} the {TARGET_RATIO:.0f}x target)")
    for direction in ("t2i", "i2t"):
        result = parity[direction]
        print(f"parity {direction}: {result['identical_lines']}/{result['lines']} lines identical, "
              f"{result['near_tie_positions']} near-tie swaps, {result['mismatches']} mismatches "
              f"(max score gap at a difference {result['max_gap']:.1e})")


def check_parity(python: str, paths: Paths) -> dict:
    done = subprocess.run([python, __file__, "_parity", *map(str, (
        paths.image_feats, paths.text_feats, paths.upstream_t2i, paths.fast_t2i,
        paths.upstream_i2t, paths.fast_i2t))], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"parity check failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def generate_features(python: str, paths: Paths, images: int, texts: int, dim: int,
                      seed: int) -> None:
    if paths.image_feats.exists() and paths.text_feats.exists():
        print(f"reusing features in {paths.image_feats.parent}", file=sys.stderr)
        return
    print(f"generating {images} image and {texts} text features ({dim}-d)...", file=sys.stderr)
    subprocess.run([python, __file__, "_generate", str(paths.image_feats), str(paths.text_feats),
                    str(images), str(texts), str(dim), str(seed)], check=True)


# ----------------------------------------------------------------------------- server side
# These run with the server python (torch, numpy), started as `knn.py _generate|_parity ...`.

def _generate(image_path: str, text_path: str, images: str, texts: str, dim: str,
              seed: str) -> None:
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    for path, key, count in ((image_path, "image_id", int(images)),
                             (text_path, "text_id", int(texts))):
        features = torch.randn(count, int(dim), generator=generator)
        features /= features.norm(dim=-1, keepdim=True)  # as extract_features.py does
        with open(path, "w") as handle:
            for item_id, feature in enumerate(features.tolist()):
                handle.write("{}\n".format(json.dumps({key: item_id, "feature": feature})))


def _parity(image_path: str, text_path: str, up_t2i: str, fast_t2i: str, up_i2t: str,
            fast_i2t: str) -> None:
    images, texts = _load_features(image_path, "image_id"), _load_features(text_path, "text_id")
    print(json.dumps({
        "t2i": _compare(up_t2i, fast_t2i, "text_id", "image_ids", texts, images),
        "i2t": _compare(up_i2t, fast_i2t, "image_id", "text_ids", images, texts),
    }))


def _load_features(path: str, key: str) -> dict:
    import numpy as np

    with open(path) as handle:
        records = [json.loads(line) for line in handle]
    return {record[key]: np.array(record["feature"], dtype=np.float32) for record in records}


def _compare(expected_path: str, actual_path: str, query_key: str, result_key: str,
             queries: dict, gallery: dict) -> dict:
    """Line-by-line comparison; a differing position is a near-tie when the scores are close."""
    import numpy as np

    with open(expected_path) as left, open(actual_path) as right:
        expected, actual = left.read().splitlines(), right.read().splitlines()
    identical = near_ties = mismatches = 0
    max_gap = 0.0
    for want_line, got_line in zip(expected, actual):
        if want_line == got_line:
            identical += 1
            continue
        want, got = json.loads(want_line), json.loads(got_line)
        query = queries[want[query_key]].astype(np.float64)
        for a, b in zip(want[result_key], got[result_key]):
            if a != b:
                gap = abs(float(query @ gallery[a]) - float(query @ gallery[b]))
                max_gap = max(max_gap, gap)
                near_ties, mismatches = ((near_ties + 1, mismatches) if gap <= TIE_TOLERANCE
                                         else (near_ties, mismatches + 1))
    mismatches += abs(len(expected) - len(actual))
    return {"lines": len(expected), "identical_lines": identical,
            "near_tie_positions": near_ties, "mismatches": mismatches, "max_gap": max_gap}


_SERVER_TASKS = {"_generate": _generate, "_parity": _parity}


# ----------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "knn.json",
                        help="JSON results file (default benchmarks/results/knn.json)")
    parser.add_argument("--top-k", type=int, default=10)
    return parse_common(parser, argv)


def parse_common(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The options every feature benchmark shares (the data, the server python, the runs), parsed."""
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--server-python", default=os.environ.get("EVALKIT_TESTBED_PYTHON"),
                        help="python with torch + cn_clip (default $EVALKIT_TESTBED_PYTHON)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--data-dir", type=Path,
                        help="keep the generated features here and reuse them on later runs")
    parser.add_argument("--images", type=int, default=29806)
    parser.add_argument("--texts", type=int, default=5008)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.server_python:
        parser.error("no server python: pass --server-python or set EVALKIT_TESTBED_PYTHON")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def benchmark(args: argparse.Namespace, work_dir: Path) -> dict:
    data_dir = args.data_dir or work_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = Paths.under(data_dir, work_dir)
    generate_features(args.server_python, paths, args.images, args.texts, args.dim, args.seed)
    device = resolve_device(args.server_python, args.device)
    load_before = os.getloadavg()
    upstream, fast = time_alternating(args.server_python, device, paths, args.top_k, args.runs,
                                      work_dir)
    return {
        "data": {"images": args.images, "texts": args.texts, "dim": args.dim,
                 "top_k": args.top_k, "seed": args.seed},
        "machine": {"device": device, "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "runs": args.runs,
        "timings": summarise(upstream, fast),
        "parity": check_parity(args.server_python, paths),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _SERVER_TASKS:
        _SERVER_TASKS[argv[0]](*argv[1:])
        return
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="knn-bench-") as work_dir:
        results = benchmark(args, Path(work_dir))
    print_table(results["timings"], results["parity"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
