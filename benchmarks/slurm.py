"""Slurm benchmarks (issue 17's h and i), on the test bed's one-node Slurm (2 fake GPUs) with a
loopback sshd as its login node, beside benchmarks/run.py's bed.

h. one evaluation through the Slurm executor / the same upstream steps submitted by hand as one
   sbatch script and waited for with squeue (every second), alternating     target <= 1.10
i. 4 models in one command on 2 fake GPUs: all 4 jobs submitted within one second of each other
   (their slurm.json, written as sbatch answers), and Slurm runs 2 at a time (Slurm's own start
   and end times of each job)                                    target: spread <= 1 s, 2 at a time
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evalkit.evaluation import Evaluation  # noqa: E402
from evalkit.plan import CHECK_STEPS, build_plan  # noqa: E402
from evalkit.slurm_job import ACTIVE  # noqa: E402
from evalkit.testbed.slurm import LoopbackSlurm  # noqa: E402
from evalkit.testbed.sshd import LoopbackSshd  # noqa: E402

ENTRY = ROOT / "distillation_model_evaluation.py"
TARGETS = {"slurm_overhead": 1.10, "submit_spread_seconds": 1.0, "at_once": 2}
SLURM = {"partition": "gpu", "time": "00:30:00"}  # the rest as a user's: squeue every 5 s rising to 60 s
WAIT_BY_SQUEUE = 'while squeue --noheader --jobs="$job" --states=PD,CF,R,CG | grep -q .; do sleep 1; done'


def _evalkit(bed, config: Path, *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ENTRY), "--config", str(config), *args], capture_output=True,
                          text=True, cwd=bed.work)
    if done.returncode != 0:
        sys.exit(f"slurm benchmark failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - started


def _by_hand(bed) -> float:
    """The upstream steps as one batch script, submitted over ssh and waited for with squeue."""
    settings = dataclasses.replace(bed.settings, executor="slurm")  # Slurm sets CUDA_VISIBLE_DEVICES
    plan = build_plan(settings, Evaluation("Flickr30k-CN", "valid", str(bed.checkpoint), "RN50", "RBT3-chinese"))
    chain = " && ".join(step.command for step in plan.steps if step.name not in CHECK_STEPS)
    script = bed.work / "by-hand.sh"
    script.write_text("#!/bin/bash -l\n#SBATCH --partition=gpu\n#SBATCH --gres=gpu:1\n#SBATCH --time=00:30:00\n"
                      f"#SBATCH --output={bed.work / 'by-hand-%j.out'}\nset -e\n{chain}\n")
    remote = f"job=$(sbatch --parsable {shlex.quote(str(script))}) && {WAIT_BY_SQUEUE}"
    started = time.perf_counter()
    subprocess.run(["ssh", "-F", str(bed.ssh_config), bed.alias, remote], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    if not Path(plan.files.i2t_result).exists():
        sys.exit(f"the hand-written batch job wrote no {plan.files.i2t_result}")
    return seconds


def overhead(bed, runs: int) -> dict:
    """h: evalkit's one-shot run of a never-seen checkpoint, and the steps by hand, alternating."""
    config = bed.config("slurm-h", executor="slurm", slurm=SLURM)
    _evalkit(bed, config, "--model-path", str(bed.checkpoint))  # warm: evalkit's scripts on the server
    tool, hand = [], []
    for index in range(runs):
        checkpoint = bed.new_checkpoint(f"slurm-h-{index}")
        pair = [("tool", lambda: _evalkit(bed, config, "--model-path", str(checkpoint))),
                ("hand", lambda: _by_hand(bed))]
        for name, run in (pair if index % 2 == 0 else pair[::-1]):
            (tool if name == "tool" else hand).append(run())
    paired = [a / b for a, b in zip(tool, hand)]
    return {"tool_seconds": tool, "by_hand_seconds": hand, "paired_ratios": paired,
            "ratio": statistics.median(tool) / statistics.median(hand)}


def four_models(bed, slurm_env: dict) -> dict:
    """i: four registered models in one command; when each job was submitted, started and ended."""
    output = bed.work / "out-slurm-i"
    models = {f"m{index}": {"path": str(bed.new_checkpoint(f"slurm-i-{index}"))} for index in range(4)}
    config = bed.config("slurm-i", executor="slurm", slurm=SLURM, models=models, remote_output_dir=str(output))
    seconds = _evalkit(bed, config, "--model", "all")
    submitted = {}
    for found in (output / ".evalkit" / "runs").glob("*/slurm.json"):
        submitted[json.loads(found.read_text())["job_id"]] = found.stat().st_mtime
    listed = _when_all_ended(list(submitted), slurm_env)
    jobs = {}
    for line in listed.split():
        job_id, submit, start, end, state = line.split("|")
        jobs[job_id] = {"submitted": submit, "started": start, "ended": end, "state": state}
    intervals = [(_epoch(job["started"]), _epoch(job["ended"])) for job in jobs.values()]
    at_once = max(sum(start <= moment < end for start, end in intervals) for moment, _ in intervals)
    return {"seconds": seconds, "jobs": jobs, "submit_spread_seconds": max(submitted.values()) - min(submitted.values()),
            "at_once": at_once, "all_completed": all(job["state"] == "COMPLETED" for job in jobs.values())}


def _when_all_ended(job_ids: list[str], slurm_env: dict, timeout: float = 120) -> str:
    """squeue's lines for JOB_IDS once none is active: a job ends a moment after its run's files
    say so (the batch shell exits after the driver), and until then its end time is its limit."""
    deadline = time.monotonic() + timeout
    while True:
        listed = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}",
                                 "--format=%i|%V|%S|%e|%T"], env=slurm_env, capture_output=True, text=True,
                                check=True).stdout
        if all(line.rsplit("|", 1)[1] not in ACTIVE for line in listed.split()) or time.monotonic() > deadline:
            return listed
        time.sleep(0.5)


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").timestamp()


def measure(bed_class, work: Path, python: Path, runs: int) -> dict:
    """h and i on a Slurm cluster and login node of their own."""
    with LoopbackSlurm(work / "slurm") as slurm, \
            LoopbackSshd(work / "login", environment=slurm.environment()) as login:
        bed = bed_class(work / "slurm-bed", python, login)
        env = {**os.environ, **slurm.environment()}
        return {"slurm_overhead": overhead(bed, runs), "slurm_four_models": four_models(bed, env)}


def rows(results: dict) -> list[tuple[str, str, str, bool]]:
    found = []
    if "slurm_overhead" in results:
        ratio = results["slurm_overhead"]["ratio"]
        found.append(("h. Slurm executor / one sbatch by hand", f"{ratio:.3f}", "<= 1.10",
                      ratio <= TARGETS["slurm_overhead"]))
    if "slurm_four_models" in results:
        four = results["slurm_four_models"]
        found += [("i. 4 jobs: submit spread (s)", f"{four['submit_spread_seconds']:.2f}", "<= 1",
                   four["submit_spread_seconds"] <= TARGETS["submit_spread_seconds"]),
                  ("i. 4 jobs on 2 GPUs: most at once", str(four["at_once"]), "2",
                   four["at_once"] == TARGETS["at_once"] and four["all_completed"])]
    return found


if __name__ == "__main__":
    sys.exit("run through benchmarks/run.py --slurm")
