"""Sweep benchmarks (S-e, S-f, S-g: issue 15's e, f, g), on benchmarks/run.py's loopback bed.

S-e. a sweep of 6 checkpoints in one command / the same 6 as one-shot commands in a shell loop
   (sweep, loop, loop, sweep, each on its own server output root: nothing reused)  target <= 0.95
S-f. re-running that finished sweep after a 7th epoch appeared / one evaluation of epoch 7 alone
                                                                                   target <= 1.2
S-g. evalkit's peak RSS during a sweep of N (100) checkpoints whose features are all reused (each
   cell runs its KNN and recall steps), and its time per cell; then the same sweep again, every
   cell unchanged since that run (none runs again), and its time per cell     target <= 150 MiB
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "distillation_model_evaluation.py"
TARGETS = {"sweep_vs_loop": 0.95, "new_epoch_rerun": 1.2, "peak_rss_mib": 150.0}


def _evalkit(bed, config: Path, model_path: Path | str, shown: list[str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ENTRY), "--config", str(config), "--model-path", str(model_path)],
                          capture_output=True, text=True, cwd=bed.work, env={**os.environ, "COLUMNS": "120"})
    if done.returncode != 0:
        sys.exit(f"sweep benchmark failed ({done.returncode}): {done.stderr[-2000:]}")
    if shown is not None:
        shown.append(done.stdout)
    return time.perf_counter() - started


def _epochs(bed, name: str, seeds: range) -> Path:
    from evalkit.testbed.builders import build_checkpoint
    folder = bed.checkpoint.parents[2] / name / "checkpoints"
    for seed in seeds:  # distinct weights: copies of one file would be aliases, evaluated once
        build_checkpoint(bed.python, folder / f"epoch_{seed}.pt", seed=seed)
    return folder


def sweep_vs_loop(bed, size: int = 6) -> dict:
    """S-e in the order sweep, loop, loop, sweep (a load that comes and goes on a shared machine
    weighs on both sides alike), each on its own server output root and results folder: a loop's
    runs of the same labels would replace the sweep's results, and a re-run rightly evaluates
    again cells whose kept results are another run's. Then S-f on the first sweep's folders."""
    folder = _epochs(bed, "sweep", range(1, size + 1))
    configs = [bed.config(f"{kind}-e{index}", remote_output_dir=str(bed.work / f"out-{kind}{index}"),
                          results_dir=str(bed.work / f"results-{kind}{index}"))
               for index, kind in enumerate(("sweep", "loop", "loop", "sweep"))]
    seconds = [_evalkit(bed, config, folder) if "sweep" in config.name else
               sum(_evalkit(bed, config, folder / f"epoch_{epoch}.pt") for epoch in range(1, size + 1))
               for config in configs]
    sweep, loop = seconds[0] + seconds[3], seconds[1] + seconds[2]
    new = _epochs(bed, "sweep", range(size + 1, size + 2)) / f"epoch_{size + 1}.pt"
    shown: list[str] = []
    rerun = _evalkit(bed, configs[0], folder, shown)
    if shown[0].count("unchanged since run") != size:  # the re-run must keep exactly the finished cells
        sys.exit(f"the re-run did not keep the {size} finished cells:\n{shown[0][-3000:]}")
    alone = _evalkit(bed, bed.config("alone-f", remote_output_dir=str(bed.work / "out-alone"),
                                     results_dir=str(bed.work / "results-alone")), new)
    step_seconds = {kind: _step_medians([bed.work / f"out-{kind}{index}" for index, name in
                                         enumerate(("sweep", "loop", "loop", "sweep")) if name == kind])
                    for kind in ("sweep", "loop")}
    return {"checkpoints": size, "sweep_seconds": sweep, "loop_seconds": loop, "ratio": sweep / loop,
            "each_side_seconds": seconds, "step_seconds": step_seconds, "rerun_with_new_epoch_seconds": rerun,
            "new_epoch_alone_seconds": alone, "rerun_ratio": rerun / alone, "rerun_output": shown[0]}


def _step_medians(roots: list[Path]) -> dict[str, float]:
    """Each step's median duration over the runs under ROOTS, as the driver timed it on the server
    (step-N.exit's second line): where a side's time goes, steps against everything else."""
    import statistics
    durations: dict[str, list[float]] = {}
    for run in (run for root in roots for run in (root / ".evalkit" / "runs").iterdir()):
        names = [step["name"] for step in json.loads((run / "run.json").read_text())["steps"]]
        for index, name in enumerate(names):
            exited = (run / f"step-{index}.exit").read_text().split()
            durations.setdefault(name, []).append(float(exited[1]))
    return {name: round(statistics.median(values), 3) for name, values in durations.items()}


# the real checkpoint's tensor names and shapes (what a sweep's listing reads of each file), each
# tensor one number expanded to its shape: a few KiB per file
SMALL_CHECKPOINTS = """
import os, sys, torch
source, folder, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
shapes = {name: tensor.shape for name, tensor in torch.load(source, map_location="cpu")["state_dict"].items()}
for epoch in range(1, count + 1):
    state_dict = {name: torch.full((1,), float(epoch)).expand(shape) if len(shape) else torch.tensor(float(epoch))
                  for name, shape in shapes.items()}
    torch.save({"epoch": epoch, "step": epoch * 10, "name": "reused", "state_dict": state_dict},
               os.path.join(folder, f"epoch_{epoch}.pt"))
"""


def reused_sweep(bed, count: int) -> dict:
    """COUNT small distinct checkpoint files whose cells are all reused: each gets a copy of one
    real evaluation's server directory, its manifest rewritten for it (as if it had been extracted)."""
    from evalkit.plan import checkpoint_output_dir
    config = bed.config("reused-g", remote_output_dir=str(bed.work / "out-reused"))
    _evalkit(bed, config, bed.checkpoint)
    settings = bed.settings.__class__(**{**vars(bed.settings), "remote_output_dir": str(bed.work / "out-reused")})
    source = Path(checkpoint_output_dir(settings, "Flickr30k-CN", "valid", str(bed.checkpoint)))
    folder = bed.checkpoint.parents[2] / "reused" / "checkpoints"
    folder.mkdir(parents=True)
    # small files in the training format (a sweep reads each one's epoch and step from it)
    subprocess.run([str(bed.python), "-c", SMALL_CHECKPOINTS, str(bed.checkpoint), str(folder), str(count)],
                   check=True)
    for epoch in range(1, count + 1):
        checkpoint = folder / f"epoch_{epoch}.pt"
        target = Path(checkpoint_output_dir(settings, "Flickr30k-CN", "valid", str(checkpoint)))
        shutil.copytree(source, target, copy_function=shutil.copy2)
        manifest = (target / "manifest.json").read_text().replace(str(source), str(target))
        manifest = json.loads(manifest.replace(str(bed.checkpoint), str(checkpoint)))
        info = checkpoint.stat()
        # what server_outputs.extraction_inputs compares (the inode too: a file replaced by another)
        manifest["checkpoint"] = {"path": str(checkpoint), "size": info.st_size, "mtime_ns": info.st_mtime_ns,
                                  "inode": f"{info.st_dev}:{info.st_ino}"}
        (target / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    first_seconds, first_peak = _measured(bed, config, folder)
    again_seconds, again_peak = _measured(bed, config, folder)
    return {"checkpoints": count, "seconds": first_seconds, "seconds_per_cell": first_seconds / count,
            "unchanged_seconds": again_seconds, "unchanged_seconds_per_cell": again_seconds / count,
            "peak_rss_mib": max(first_peak, again_peak)}


def _measured(bed, config: Path, model_path: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one evalkit command."""
    # a fresh parent whose only child is evalkit: ru_maxrss of children is the largest child's peak
    measure = ("import resource, subprocess, sys, time; started = time.perf_counter(); "
               "done = subprocess.run(sys.argv[1:], capture_output=True); "
               "print(done.returncode, time.perf_counter() - started, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", measure, sys.executable, str(ENTRY), "--config", str(config),
                           "--model-path", str(model_path)], capture_output=True, text=True, cwd=bed.work,
                          check=True)
    code, seconds, peak_kib = done.stdout.split()
    if code != "0":
        sys.exit(f"the reused sweep failed with exit {code}")
    return float(seconds), int(peak_kib) / 1024


def rows(results: dict) -> list[tuple[str, str, str, bool]]:
    found = []
    if "sweep" in results:
        sweep = results["sweep"]
        found += [(f"S-e. sweep of {sweep['checkpoints']} / the same one-shot in a loop", f"{sweep['ratio']:.3f}",
                   "<= 0.95",
                   sweep["ratio"] <= TARGETS["sweep_vs_loop"]),
                  *[(f"     median s of {name}: sweep / loop", f"{sweep['step_seconds']['sweep'][name]:.2f} / "
                     f"{sweep['step_seconds']['loop'].get(name, float('nan')):.2f}", "-", True)
                    for name in sweep.get("step_seconds", {}).get("sweep", {})],
                  ("S-f. finished sweep + 1 new epoch / that epoch alone", f"{sweep['rerun_ratio']:.3f}", "<= 1.2",
                   sweep["rerun_ratio"] <= TARGETS["new_epoch_rerun"])]
    if "reused_sweep" in results:
        reused = results["reused_sweep"]
        found += [(f"S-g. peak RSS, {reused['checkpoints']} reused cells (MiB)", f"{reused['peak_rss_mib']:.0f}",
                   "<= 150", reused["peak_rss_mib"] <= TARGETS["peak_rss_mib"]),
                  ("     s per cell, features reused", f"{reused['seconds_per_cell']:.2f}", "-", True),
                  ("     s per cell, unchanged since (not run)", f"{reused['unchanged_seconds_per_cell']:.3f}", "-",
                   True)]
    return found


if __name__ == "__main__":
    sys.exit("run through benchmarks/run.py --sweeps")
