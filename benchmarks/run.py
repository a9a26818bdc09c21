"""evalkit's performance targets, measured on the loopback test bed (not part of the test run).

    python benchmarks/run.py [--runs N] [--knn-runs N] [--skip-knn] [--overhead-only] [--output PATH]

a. overhead: the full one-shot run through evalkit of a checkpoint never evaluated (preflight,
   inspection, extraction, KNN, recall, results pulled back) vs the same upstream commands typed
   by hand in one `ssh ALIAS '…'` call, alternating A and B                target ratio <= 1.05
   Each run's checkpoint is a fresh copy (a new inode, new bytes: a user's new epoch), so
   nothing of evalkit's, the hash cache included, has seen it; evalkit's time outside the
   upstream steps is reported beside the ratio.
b. re-run:   a second run of an unchanged checkpoint vs the first          target ratio <= 0.25
c. start-up: `python distillation_model_evaluation.py --help`              target <= 0.3 s
d. KNN at MUGE-valid scale: upstream's two scripts vs --knn fast (benchmarks/knn.py)
                                                                           target >= 20x
S-e, S-f, S-g (sweeps; with --sweeps, or alone with --sweeps-only): see benchmarks/sweeps.py
h, i (Slurm's executor on the test bed's Slurm; with --slurm, or alone with --slurm-only): see
   benchmarks/slurm.py

The server side is the test bed's: Debian's sshd on 127.0.0.1, a CPU venv with cn_clip
(EVALKIT_TESTBED_PYTHON, else built under .testbed/), the tiny Flickr30k-CN-format dataset and a
random RN50 + RBT3 checkpoint. Prints a table; writes JSON (default benchmarks/results/run.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evalkit.config import Settings  # noqa: E402
from evalkit.evaluation import Evaluation  # noqa: E402
from evalkit.plan import CHECK_STEPS, QUERY_HITS_STEP, build_plan  # noqa: E402
from evalkit.testbed.builders import build_checkpoint, build_dataset  # noqa: E402
from evalkit.testbed.server_env import ensure_server_venv, site_packages  # noqa: E402
from evalkit.testbed.sshd import LoopbackSshd  # noqa: E402

import slurm  # noqa: E402  (benchmarks/slurm.py, beside this file)
import sweeps  # noqa: E402  (benchmarks/sweeps.py, beside this file)

ALIAS = "evalkit-bench"
DATASET = "Flickr30k-CN"
TARGETS = {"overhead": 1.05, "outside_seconds": 0.3, "rerun": 0.25, "startup_seconds": 0.3, "knn_speedup": 20.0}


def timed(command: list[str], **kwargs) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"benchmark command failed ({done.returncode}): {shlex.join(command)}\n{done.stderr[-2000:]}")
    return seconds


class Bed:
    """The loopback server and an evalkit config pointing at it."""

    def __init__(self, work: Path, python: Path, sshd: LoopbackSshd) -> None:
        self.work, self.python, self.alias = work, python, ALIAS
        datapath = work / "datapath"
        build_dataset(python, datapath, DATASET, "valid")
        self.checkpoint = build_checkpoint(python, datapath / "experiments" / "bench" / "checkpoints" /
                                           "epoch_latest.pt")
        self.ssh_config, _ = sshd.write_client_files(work / "ssh", alias=ALIAS)
        self.settings = Settings(host=ALIAS, ssh_config=str(self.ssh_config), datapath=str(datapath),
                                 chinese_clip_dir=str(site_packages(python)),
                                 activate=f"source {shlex.quote(str(python.parent / 'activate'))}",
                                 device="cpu", vision_model="RN50", text_model="RBT3-chinese",
                                 results_dir=str(work / "results"), remote_output_dir=str(work / "out"))

    def config(self, name: str, **overrides) -> Path:
        values = {key: value for key, value in vars(self.settings).items() if key not in ("models", "slurm")}
        path = self.work / f"{name}.json"
        path.write_text(json.dumps({**values, **overrides}))
        return path

    def evalkit(self, config: Path, *args: str, checkpoint: Path | None = None) -> float:
        return timed([sys.executable, str(ROOT / "distillation_model_evaluation.py"), "--config", str(config),
                      "--model-path", str(checkpoint or self.checkpoint), *args], cwd=self.work)

    def new_checkpoint(self, name: str) -> Path:
        """The same weights copied to a path never evaluated (a new file, as a new epoch is: its
        bytes written anew, not a link to a file already read): a first run, preflight included."""
        path = self.checkpoint.parents[2] / name / "checkpoints" / self.checkpoint.name
        path.parent.mkdir(parents=True)
        shutil.copyfile(self.checkpoint, path)
        return path

    def plan(self, checkpoint: Path | None = None):
        return build_plan(self.settings, Evaluation(DATASET, "valid", str(checkpoint or self.checkpoint), "RN50",
                                                    "RBT3-chinese"))

    def by_hand(self, ssh_config: Path | None = None) -> float:
        """The upstream commands evalkit runs, chained in one ssh call as a user would type them
        (not evalkit's own: its checks and the per-query hits). SSH_CONFIG: another way to the
        server (benchmarks/latency.py's far one)."""
        chain = " && ".join(step.command for step in self.plan().steps
                            if step.name not in (*CHECK_STEPS, QUERY_HITS_STEP))
        return timed(["ssh", "-F", str(ssh_config or self.ssh_config), ALIAS, chain])


def outside_the_steps(plan, started: float, seconds: float) -> dict:
    """Where a run's time went besides the upstream steps, from the files the first step (the
    copy of the texts) and the last (image→text recall) write: the same two files on both sides."""
    first_done = os.stat(plan.files.texts_copy).st_mtime
    last_done = os.stat(plan.files.i2t_result).st_mtime
    return {"before_first_step": first_done - started, "after_last_step": started + seconds - last_done}


def overhead(bed: Bed, runs: int) -> dict:
    config = bed.config("overhead")
    bed.evalkit(config)  # warm: uploads the launcher the hand-typed commands use, fills the page cache
    tool, hand, spans = [], [], {"tool": [], "hand": []}
    for index in range(runs):
        checkpoint = bed.new_checkpoint(f"overhead-{index}")  # copied before, outside both timings
        pair = [("tool", lambda: bed.evalkit(config, checkpoint=checkpoint), bed.plan(checkpoint)),
                ("hand", bed.by_hand, bed.plan())]
        for name, run, plan in (pair if index % 2 == 0 else pair[::-1]):
            started = time.time()
            seconds = run()
            (tool if name == "tool" else hand).append(seconds)
            spans[name].append(outside_the_steps(plan, started, seconds))
    # each run against the one beside it too: that cancels the drift of a shared machine
    paired = [a / b for a, b in zip(tool, hand)]
    # evalkit's own seconds: outside the steps, beyond what the hand-typed run spends there
    extra = [sum(t.values()) - sum(h.values()) for t, h in zip(spans["tool"], spans["hand"])]
    return {"tool_seconds": tool, "by_hand_seconds": hand, "paired_ratios": paired,
            "outside_the_steps_beyond_by_hand": statistics.median(extra),
            "median_paired_ratio": statistics.median(paired),
            "ratio": statistics.median(tool) / statistics.median(hand),
            "outside_the_steps": {name: {key: statistics.median(span[key] for span in runs_of)
                                         for key in ("before_first_step", "after_last_step")}
                                  for name, runs_of in spans.items()},
            "outside_the_steps_each_run": spans}


def rerun(bed: Bed, runs: int) -> dict:
    first, second = [], []
    for index in range(runs):
        config = bed.config(f"rerun-{index}", remote_output_dir=str(bed.work / f"rerun-{index}"))
        first.append(bed.evalkit(config))
        second.append(bed.evalkit(config))
    return {"first_seconds": first, "second_seconds": second,
            "ratio": statistics.median(second) / statistics.median(first)}


def startup(runs: int) -> dict:
    seconds = [timed([sys.executable, str(ROOT / "distillation_model_evaluation.py"), "--help"])
               for _ in range(max(runs, 5))]
    return {"seconds": seconds, "median": statistics.median(seconds)}


def knn(python: Path, runs: int, work: Path) -> dict:
    output = work / "knn.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "knn.py"), "--runs", str(runs), "--output",
                    str(output), "--server-python", str(python), "--data-dir", str(work / "knn-data")],
                   check=True)
    return json.loads(output.read_text())


def table(results: dict) -> str:
    rows = [] if "overhead" not in results else [
            ("a. one-shot run: evalkit / by hand", f"{results['overhead']['ratio']:.3f}", "<= 1.05",
             results["overhead"]["ratio"] <= TARGETS["overhead"]),
            ("   (median of each run / the one beside it)", f"{results['overhead']['median_paired_ratio']:.3f}",
             "<= 1.05", results["overhead"]["median_paired_ratio"] <= TARGETS["overhead"]),
            ("   evalkit's s outside the steps beyond by hand's",
             f"{results['overhead']['outside_the_steps_beyond_by_hand']:.3f}", "<= 0.3",
             results["overhead"]["outside_the_steps_beyond_by_hand"] <= TARGETS["outside_seconds"])]
    if "rerun" in results:
        rows += [
            ("b. re-run of an unchanged checkpoint / first run", f"{results['rerun']['ratio']:.3f}", "<= 0.25",
             results["rerun"]["ratio"] <= TARGETS["rerun"]),
            ("c. --help start-up (s)", f"{results['startup']['median']:.3f}", "<= 0.3",
             results["startup"]["median"] <= TARGETS["startup_seconds"])]
    rows += sweeps.rows(results)
    rows += slurm.rows(results)
    if "knn" in results:
        ratio = knn_speedup(results["knn"])
        rows.append(("d. KNN at MUGE scale: upstream / --knn fast", f"{ratio:.1f}x", ">= 20x",
                     ratio >= TARGETS["knn_speedup"]))
    lines = [f"{'benchmark':52} {'median':>9} {'target':>8}  met"]
    lines += [f"{name:52} {value:>9} {target:>8}  {'yes' if met else 'NO'}" for name, value, target, met in rows]
    if "overhead" not in results:
        return "\n".join(lines)
    outside = results["overhead"]["outside_the_steps"]
    lines += ["", "a. seconds outside the upstream steps (medians)       evalkit   by hand",
              *(f"   {label:50} {outside['tool'][key]:7.3f} {outside['hand'][key]:9.3f}"
                for label, key in (("before the first step ends", "before_first_step"),
                                   ("after the last step ends", "after_last_step")))]
    return "\n".join(lines)


def knn_speedup(knn_results: dict) -> float:
    return float(knn_results["timings"]["speed_ratio"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="alternating runs of each side (a, b)")
    parser.add_argument("--knn-runs", type=int, default=3, help="runs of each side for d (minutes each)")
    parser.add_argument("--skip-knn", action="store_true", help="leave out d")
    parser.add_argument("--overhead-only", action="store_true", help="only a")
    parser.add_argument("--sweeps", action="store_true", help="also e, f, g (benchmarks/sweeps.py)")
    parser.add_argument("--sweeps-only", action="store_true", help="only e, f, g")
    parser.add_argument("--sweep-size", type=int, default=6, help="checkpoints of e (then one more for f)")
    parser.add_argument("--sweep-cells", type=int, default=100, help="reused cells of g")
    parser.add_argument("--slurm", action="store_true", help="also h, i (benchmarks/slurm.py)")
    parser.add_argument("--slurm-only", action="store_true", help="only h, i")
    parser.add_argument("--slurm-runs", type=int, default=3, help="alternating runs of each side of h")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "run.json")
    return parser.parse_args()


def byte_compile_evalkit() -> None:
    """As `pip install` does: a machine that sets PYTHONDONTWRITEBYTECODE (this project's CI kind
    does) would otherwise compile evalkit from source on every run (~70 ms), which no installed
    copy does."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "evalkit")], check=True)


def main() -> None:
    args = parse_args()
    byte_compile_evalkit()
    given = os.environ.get("EVALKIT_TESTBED_PYTHON")
    python = Path(given) if given else ensure_server_venv(ROOT / ".testbed" / "server-venv")
    with tempfile.TemporaryDirectory(prefix="evalkit-bench-") as temporary:
        work = Path(temporary)
        with LoopbackSshd(work / "sshd") as sshd:
            bed = Bed(work, python, sshd)
            results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                   "python": platform.python_version()}, "runs": args.runs}
            only = args.sweeps_only or args.slurm_only
            if not only:
                results["load_average_before"] = os.getloadavg()  # a shared machine's runs drift
                results.update(overhead=overhead(bed, args.runs))
                results["load_average_after_a"] = os.getloadavg()
                if not args.overhead_only:
                    results.update(rerun=rerun(bed, args.runs), startup=startup(args.runs))
            if args.sweeps or args.sweeps_only:
                results.update(sweep=sweeps.sweep_vs_loop(bed, args.sweep_size),
                               reused_sweep=sweeps.reused_sweep(bed, args.sweep_cells))
        if args.slurm or args.slurm_only:
            results.update(slurm.measure(Bed, work, python, args.slurm_runs))
        if not args.skip_knn and not only and not args.overhead_only:
            results["knn"] = knn(python, args.knn_runs, work)
    report(table(results), results, args.output)


def report(text: str, document: dict, output: Path) -> None:
    """TEXT (the table) printed, DOCUMENT (every run's numbers) written to OUTPUT as JSON."""
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {output}")


if __name__ == "__main__":
    main()
