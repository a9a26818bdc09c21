"""A far server (issue 29): evalkit behind a link of RTT 0 and 150 ms, seconds and round trips,
on benchmarks/run.py's loopback bed with the test bed's delay proxy (evalkit/testbed/delay_proxy.py)
in front of its sshd.

    python benchmarks/latency.py [--runs N] [--rtt-ms 0 150] [--output PATH]

For each RTT, side by side in one run:
L-a. one-shot of a new checkpoint (a fresh copy per run, as benchmark a's) through evalkit / the
     same upstream commands typed by hand in one `ssh ALIAS '…'` (benchmark a's), alternating
                                                                        target at 150 ms <= 1.10
L-b. the re-run of an unchanged checkpoint (its features reused)        target at 150 ms <= 3 s
L-c. `python -m evalkit status --last 9` (9 runs listed)                target at 150 ms <= 2 s
L-d. `python -m evalkit status --last 1`
L-e. round trips of L-a's one-shot through evalkit                      target at 150 ms <= 30
A round trip is one turn of the proxy (the client spoke, then the server answered); its rule is in
delay_proxy.py. Everything goes through a proxy, RTT 0 included (it adds ~0.3 ms), so the turns are
counted at each RTT. Prints a table; writes JSON (default benchmarks/results/latency.json).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from run import ALIAS, ROOT, Bed, byte_compile_evalkit, report, timed  # benchmarks/run.py, beside this file: the bed, by hand

from evalkit.testbed.delay_proxy import Counts, DelayProxy  # noqa: E402
from evalkit.testbed.server_env import ensure_server_venv  # noqa: E402
from evalkit.testbed.sshd import LoopbackSshd  # noqa: E402

FAR = 150  # the RTT (ms) the goals are set at
TARGETS = {"one_shot_ratio": 1.10, "rerun_seconds": 3.0, "status_seconds": 2.0, "one_shot_round_trips": 30}
STATUS_RUNS = 9


class FarLink:
    """One ssh config for every evalkit config and the by-hand side, pointed at the proxy of the
    RTT being measured (rewritten between RTTs; run records keep the config's path, so `status`
    of any run goes the same way)."""

    def __init__(self, bed: Bed, sshd: LoopbackSshd, proxies: dict[int, DelayProxy]) -> None:
        self.bed, self.sshd, self.proxies = bed, sshd, proxies
        self.folder = bed.work / "far-ssh"
        self.ssh_config = self.folder / "config"
        self.rtt = None

    def use(self, rtt: int) -> DelayProxy:
        proxy = self.proxies[rtt]
        self.sshd.write_client_files(self.folder, ALIAS, port=proxy.port)
        self.rtt = rtt
        return proxy

    def measured(self, action) -> tuple[float, Counts]:
        """ACTION's seconds, and what crossed the current proxy meanwhile."""
        proxy = self.proxies[self.rtt]
        before = proxy.counts()
        seconds = action()
        time.sleep(0.2)  # the last bytes of a closing connection cross the proxy after the command ends
        return seconds, proxy.counts() - before


def one_shot(bed: Bed, link: FarLink, config: Path, runs: int) -> dict:
    """Evalkit and by hand alternating, each evalkit run on a checkpoint never seen."""
    found: dict[str, list] = {"tool": [], "hand": []}
    for index in range(runs):
        checkpoint = bed.new_checkpoint(f"latency-{link.rtt}-{index}")
        pair = [("tool", lambda: bed.evalkit(config, checkpoint=checkpoint)),
                ("hand", lambda: bed.by_hand(link.ssh_config))]
        for side, action in (pair if index % 2 == 0 else pair[::-1]):
            seconds, counts = link.measured(action)
            found[side].append({"seconds": seconds, **vars(counts)})
    tool, hand = (statistics.median(r["seconds"] for r in found[side]) for side in ("tool", "hand"))
    return {**found, "ratio": tool / hand,
            "paired_ratios": [t["seconds"] / h["seconds"] for t, h in zip(found["tool"], found["hand"])]}


def status(link: FarLink, config: Path, last: int, runs: int) -> list[dict]:
    command = [sys.executable, "-m", "evalkit", "status", "--config", str(config), "--last", str(last)]
    found = []
    for _ in range(runs):  # cwd ROOT: this checkout's evalkit, whatever the venv installed
        seconds, counts = link.measured(lambda: timed(command, cwd=ROOT, env={**os.environ, "COLUMNS": "200"}))
        found.append({"seconds": seconds, **vars(counts)})
    return found


def measure(bed: Bed, link: FarLink, rtts: list[int], runs: int) -> dict:
    results: dict[int, dict] = {}
    for rtt in rtts:
        link.use(rtt)
        config = bed.config(f"latency-{rtt}", ssh_config=str(link.ssh_config))
        results[rtt] = {"one_shot": one_shot(bed, link, config, runs), "rerun": []}
        # the checkpoint of the re-runs, evaluated once, after the by-hand runs: those write its
        # feature files (the same commands, the same output folder), which a re-run rightly extracts anew
        bed.evalkit(config)
        for _ in range(runs):
            seconds, counts = link.measured(lambda: bed.evalkit(config))
            results[rtt]["rerun"].append({"seconds": seconds, **vars(counts)})
    records = len(list((bed.work / "results" / "runs").glob("*.json")))
    if records < STATUS_RUNS:
        sys.exit(f"only {records} runs recorded: `status` must list {STATUS_RUNS} (use --runs 3 or more)")
    for rtt in rtts:  # every run recorded by now: status lists 9 whatever the RTTs asked for
        link.use(rtt)
        config = bed.config(f"latency-{rtt}", ssh_config=str(link.ssh_config))
        results[rtt]["status"] = status(link, config, STATUS_RUNS, runs)
        results[rtt]["status_last_1"] = status(link, config, 1, runs)
    return results


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def table(results: dict[int, dict]) -> str:
    rtts = sorted(results)
    head = f"{'(medians)':44}" + "".join(f"{f'RTT {rtt} ms: s':>16}{'turns':>7}" for rtt in rtts)
    lines = [head]
    rows = (("one-shot, new checkpoint: evalkit", lambda r: r["one_shot"]["tool"]),
            ("one-shot: by hand, one ssh call", lambda r: r["one_shot"]["hand"]),
            ("re-run, unchanged checkpoint", lambda r: r["rerun"]),
            (f"status ({STATUS_RUNS} runs listed)", lambda r: r["status"]),
            ("status --last 1", lambda r: r["status_last_1"]))
    for label, rows_of in rows:
        lines.append(f"{label:44}" + "".join(f"{_median(rows_of(results[rtt]), 'seconds'):16.2f}"
                                             f"{_median(rows_of(results[rtt]), 'round_trips'):7.0f}" for rtt in rtts))
    lines.append(f"{'one-shot evalkit / by hand (ratio of medians)':44}"
                 + "".join(f"{results[rtt]['one_shot']['ratio']:16.3f}{'':7}" for rtt in rtts))
    # each run against the one beside it: the steps' own seconds drift by a second between runs
    # on a shared machine, which pairing cancels (as benchmark a of run.py does)
    lines.append(f"{'  (median of each run / the one beside it)':44}"
                 + "".join(f"{statistics.median(results[rtt]['one_shot']['paired_ratios']):16.3f}{'':7}"
                           for rtt in rtts))
    if FAR in results:
        far = results[FAR]
        checks = [("one-shot / by hand (ratio of medians)", far["one_shot"]["ratio"], TARGETS["one_shot_ratio"]),
                  ("one-shot / by hand (paired median)", statistics.median(far["one_shot"]["paired_ratios"]),
                   TARGETS["one_shot_ratio"]),
                  ("re-run (s)", _median(far["rerun"], "seconds"), TARGETS["rerun_seconds"]),
                  (f"status, {STATUS_RUNS} runs (s)", _median(far["status"], "seconds"), TARGETS["status_seconds"]),
                  ("one-shot round trips", _median(far["one_shot"]["tool"], "round_trips"),
                   TARGETS["one_shot_round_trips"])]
        lines += ["", f"goals at RTT {FAR} ms{'':23}{'median':>9} {'target':>8}  met"]
        lines += [f"  {name:40} {value:9.2f} {'<= ' + format(target, 'g'):>8}  {'yes' if value <= target else 'NO'}"
                  for name, value, target in checks]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="of each measurement at each RTT (3 or more: "
                                                            f"`status` lists the {STATUS_RUNS} runs they record)")
    parser.add_argument("--rtt-ms", type=int, nargs="+", default=[0, FAR], help="round trip times to measure")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    byte_compile_evalkit()
    given = os.environ.get("EVALKIT_TESTBED_PYTHON")
    python = Path(given) if given else ensure_server_venv(ROOT / ".testbed" / "server-venv")
    with tempfile.TemporaryDirectory(prefix="evalkit-latency-") as temporary, ExitStack() as stack:
        work = Path(temporary)
        sshd = stack.enter_context(LoopbackSshd(work / "sshd"))
        bed = Bed(work, python, sshd)
        proxies = {rtt: stack.enter_context(DelayProxy((sshd.host, sshd.port), rtt / 2000)) for rtt in args.rtt_ms}
        results = measure(bed, FarLink(bed, sshd, proxies), args.rtt_ms, args.runs)
        document = {"runs": args.runs, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
                    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                             text=True).stdout.strip(),
                    "results": {str(rtt): found for rtt, found in results.items()}}
    report(table(results), document, args.output)


if __name__ == "__main__":
    main()
