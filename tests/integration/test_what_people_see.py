"""What people look at, from one real run. The terminal, read from a real terminal (tmux) at 80 and
120 columns: one line per step with its live row, upstream's output only with --verbose, never
evalkit's marked lines; --json's stdout stays one JSON document. Then the report, opened in a real
headless browser (Debian's chromium): its tables, and charts for a sweep and a plain comparison."""
from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from evalkit.evaluation import Evaluation
from evalkit.store import LocalStore
from evalkit.terminal_text import display_width

from .conftest import ENTRY_SCRIPT, REPO

pytestmark = pytest.mark.integration

MODEL_ARGS = ("--vision-model", "RN50", "--text-model", "RBT3-chinese")
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
LIVE_ROW = re.compile(rf"^[{SPINNER}] \[(\d+)/(\d+)\] (.+?)(?: · (.+?))? +(?:[━╸╺]+ +)?(\d+)/(\d+|\?) +\d+:\d\d:\d\d$")
DONE_ROW = re.compile(r"^✓ \[(\d+)/(\d+)\] (.+?)  \d+\.\d s$")
# the phases a live row may name, per step title, with the total of the loop on this data set
# (20 images and 80 texts, batches of 32: 1 image batch, 3 text batches)
PHASES = {"extract image + text features": {("texts", "3"), ("images", "1")},
          "KNN text→image": {("loading image features", "?"), ("texts", "?")},
          "KNN image→text": {("loading text features", "?"), ("images", "?")},
          "image→text annotation": {("annotations", "?")}}
NEVER_SHOWN = ("EVALKIT-", '{"images"')
UPSTREAM_CHATTER = ("Params:", "pin_memory", "Make inference for", "Done!", "Read standard from")


@dataclass
class Screen:
    """What a tmux pane showed: every distinct screen while the command ran, then all of it."""

    snapshots: list[str] = field(default_factory=list)
    history: str = ""   # the whole scrollback, wrapped lines joined
    rows: str = ""      # the whole scrollback, row by row as the terminal shows it

    def live_rows(self) -> list[re.Match]:
        return [m for snapshot in self.snapshots for line in snapshot.splitlines() if (m := LIVE_ROW.match(line))]


def tmux_run(command: str, columns: int, tmp_path: Path, timeout: float = 600) -> Screen:
    """COMMAND in a detached tmux session of its own server (this test's HOME and environment)."""
    if shutil.which("tmux") is None:
        if os.environ.get("EVALKIT_REQUIRE_TESTBED"):
            pytest.fail("tmux is missing: apt-get install tmux")
        pytest.skip("tmux is missing: apt-get install tmux")
    run_dir = Path(tempfile.mkdtemp(prefix=f"t{columns}-", dir=tmp_path))  # several runs at one width
    socket, done = run_dir / "tmux.sock", run_dir / "done"
    tmux = ["tmux", "-S", str(socket)]
    wrapped = f"{command}; echo $? > {shlex.quote(str(done))}; sleep 600"
    # the pane's size, not a COLUMNS inherited from the test run (rich would take it over the pane's)
    unsized = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    subprocess.run([*tmux, "new-session", "-d", "-x", str(columns), "-y", "40", "bash", "-c", wrapped], check=True,
                   env=unsized)
    subprocess.run([*tmux, "set-option", "-g", "history-limit", "50000"], check=True)
    screen, deadline = Screen(), time.monotonic() + timeout
    try:
        while not done.exists():
            assert time.monotonic() < deadline, "the run did not end:\n" + (screen.snapshots or [""])[-1]
            shown = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
            if not screen.snapshots or shown != screen.snapshots[-1]:
                screen.snapshots.append(shown)
            time.sleep(0.2)
        screen.history, screen.rows = (subprocess.run([*tmux, "capture-pane", "-p", *joined, "-S", "-"],
                                                      capture_output=True, text=True).stdout
                                       for joined in (["-J"], []))
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert done.read_text().strip() == "0", screen.history
    return screen


def evaluate_command(bed, *extra: str) -> str:
    return entry_command(bed, "--model-path", str(bed.checkpoint), *MODEL_ARGS, *extra)


def entry_command(bed, *args: str) -> str:
    argv = [sys.executable, str(ENTRY_SCRIPT), "--config", str(bed.config), *args]
    return f"cd {shlex.quote(str(bed.results_dir.parent))} && {shlex.join(argv)}"


def check_step_lines(screen: Screen, steps: list[str]) -> None:
    """Each step is one ✓ line with its time, in order; while it ran, only its own live row
    showed, named by it (and by the upstream loop it was in), on one line."""
    done = [m.group(3) for line in screen.history.splitlines() if (m := DONE_ROW.match(line))]
    assert done == steps, screen.history
    for snapshot in screen.snapshots:
        rows = [m for line in snapshot.splitlines() if (m := LIVE_ROW.match(line))]
        assert len(rows) <= 1, snapshot
        finished = [m.group(3) for line in snapshot.splitlines() if (m := DONE_ROW.match(line))]
        for row in rows:   # the running step is the one after the last ✓ (its row never lingers)
            assert not finished or row.group(3) == steps[steps.index(finished[-1]) + 1], snapshot
            if row.group(4):
                assert (row.group(4), row.group(6)) in PHASES[row.group(3)], snapshot


def test_the_terminal_at_80_and_120_columns_json_and_the_report_in_a_browser(testbed, tmp_path):
    # 80 columns, the default: a first run extracts, so every step runs
    quiet = tmux_run(evaluate_command(testbed), 80, tmp_path)
    check_step_lines(quiet, ["prepare output directory", "extract image + text features",
                             "check the features are complete", "KNN text→image", "KNN image→text",
                             "check the predictions are complete", "per-query hits + 95% intervals",
                             "recall text→image", "image→text annotation", "recall image→text"])
    for text in (*NEVER_SHOWN, *UPSTREAM_CHATTER):
        assert text not in quiet.history, text
    assert "│ text→image │" in quiet.history and "│ image→text │" in quiet.history
    extract_phases = {row.group(4) for row in quiet.live_rows() if row.group(3) == "extract image + text features"}
    assert extract_phases & {"texts", "images"}, quiet.snapshots  # the loop it is in, named

    # 120 columns, --verbose: other KNN settings redo KNN on the kept features; upstream's lines stream
    testbed.write_config(eval_batch_size=4096)
    verbose = tmux_run(evaluate_command(testbed, "--verbose"), 120, tmp_path)
    check_step_lines(verbose, ["prepare output directory", "KNN text→image", "KNN image→text", "check the predictions are complete",
                               "per-query hits + 95% intervals", "recall text→image", "image→text annotation",
                               "recall image→text"])
    assert "reusing the features extracted" in verbose.history
    for text in ("  Params:", "    eval_batch_size: 4096", "  Begin to compute top-10 predictions for texts...",
                 "  $ cd ", "  The evaluation finished successfully."):
        assert text in verbose.history, text
    for text in NEVER_SHOWN:
        assert text not in verbose.history, text

    # --json, stdout and stderr redirected: stdout is the document alone, and no marked line anywhere
    run = testbed.evaluate("--model-path", str(testbed.checkpoint), *MODEL_ARGS, "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["models"][0]["status"] == "ok"
    for text in (*NEVER_SHOWN, *UPSTREAM_CHATTER):
        assert text not in run.stdout + run.stderr, text
    assert re.search(r"^✓ \[\d/\d\] recall image→text  \d+\.\d s$", run.stderr, re.MULTILINE), run.stderr

    # the report, from this run's results and epochs written beside them by the store's API
    write_a_sweep_and_a_comparison(testbed)
    page, figures = tmp_path / "report.html", tmp_path / "figures"
    made = subprocess.run([sys.executable, "-m", "evalkit", "report", "--config", str(testbed.config), "--output",
                           str(page), "--figures", str(figures)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert made.returncode == 0, made.stderr
    assert len(list(figures.glob("*.png"))) == len(list(figures.glob("*.svg"))) == 2
    check_intervals_drawn(page)
    check_in_a_browser(page, tmp_path)


def check_intervals_drawn(page: Path) -> None:
    """Each chart inlined in the page carries the 95% intervals as error bars (matplotlib's lines
    named ci95-… in the SVG), and the caption under it says what they are."""
    html = page.read_text(encoding="utf-8")
    charts = [base64.b64decode(found).decode() for found in re.findall(r'data:image/svg\+xml;base64,([^"]+)', html)]
    assert len(charts) == 2 and all('id="ci95-' in chart for chart in charts)
    assert html.count("95% bootstrap interval over the split&#x27;s queries") + \
        html.count("95% bootstrap interval over the split's queries") == 2


LABEL = "muge_finetune_rn50_rbt3_team_distill"


def write_a_sweep_and_a_comparison(bed) -> None:
    """Beside the real run (epoch_latest), epochs 1 and 2 of its experiment, lower; and on another
    split, two experiments of one checkpoint each: their recall is the real run's, scaled."""
    store, real = LocalStore(bed.results_dir), bed.results_dir / "Flickr30k-CN" / "valid" / LABEL
    summary = json.loads((real / "summary.json").read_text(encoding="utf-8"))
    raw = {d: (real / f"{d}_results.json").read_bytes() for d in ("text_to_image", "image_to_text")}
    experiments = bed.checkpoint.parent
    for dataset, split, label, stem, scale in (("Flickr30k-CN", "valid", f"{LABEL}@epoch_1", "epoch_1", 0.5),
                                               ("Flickr30k-CN", "valid", f"{LABEL}@epoch_2", "epoch_2", 0.8),
                                               ("MUGE", "test", "team", "epoch_latest", 1.0),
                                               ("MUGE", "test", "large", "epoch_latest", 0.7)):
        checkpoint = str(experiments.parent.parent / label.split("@")[0] / "checkpoints" / f"{stem}.pt")
        scaled = {d: {m: value * scale for m, value in metrics.items()} for d, metrics in summary["recall"].items()}
        intervals = {d: {m: [end * scale for end in ends] for m, ends in metrics.items()}
                     for d, metrics in summary["ci95"].items()}
        evaluation = Evaluation(dataset, split, checkpoint, label=label)
        store.save_results(evaluation, label, raw, dict(summary, checkpoint=checkpoint, recall=scaled, ci95=intervals,
                                                        experiment=evaluation.experiment, epoch=evaluation.epoch))


def check_in_a_browser(page: Path, tmp_path: Path) -> None:
    """The page as chromium draws it, offline: not blank, the charts' colours on screen
    (matplotlib's first two), and each chart an image the browser decoded."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("EVALKIT_REQUIRE_TESTBED"):
            pytest.fail("chromium is missing: apt-get install chromium")
        pytest.skip("chromium is missing: apt-get install chromium")
    image = pytest.importorskip("PIL.Image")
    shot = tmp_path / "report.png"
    headless = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={tmp_path / 'chromium'}"]
    subprocess.run([*headless, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = image.open(shot).convert("RGB")
    colours = {rgb: count for count, rgb in pixels.getcolors(maxcolors=1 << 20)}
    assert len(colours) > 100, "the page is blank"
    for name, rgb in {"blue": (31, 119, 180), "orange": (255, 127, 14)}.items():
        near = sum(count for seen, count in colours.items() if sum(abs(a - b) for a, b in zip(seen, rgb)) < 40)
        assert near > 2000, f"too little of matplotlib's {name} on screen: the charts are not drawn"
    # a copy of the page with a probe: once loaded, the title lists each image's decoded width
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([*headless, "--dump-dom", "--virtual-time-budget=10000", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    widths = re.search(r"<title>images: (.*?)</title>", dom)
    assert widths and [int(w) > 0 for w in widths.group(1).split(",")] == [True, True], dom[:300]
    assert dom.count("<table>") == 2


PROBE = ("<script>window.addEventListener('load', () => { document.title = 'images: ' + "
         "[...document.images].map(i => i.complete ? i.naturalWidth : 0).join(','); });</script>")


# At 80 columns a person reads which row is which model: each label whole on a row of the terminal,
# no header cut with '…', the same warning said once, no line broken mid-word by the terminal.
LONG_EXPERIMENT = "muge_finetune_vit-b-16_roberta-base_bs512_4gpu_team_distill"
REGISTRY = ("team_distill_vit-b-16_bs512", "large_distill_vit-l-14_bs256", "baseline")
# what may be wider than the screen, alone on its line (the terminal folds it): a path (with the spaces in
# its folder names), or one word such as a label
FOLDED_ALONE = re.compile(r"(?:[·=] )?(?:/\S*(?: \S*/\S*)*|\S+)")


def check_labels_whole(screen: Screen, labels: list[str], columns: int) -> None:
    rows = screen.rows.splitlines()
    for label in labels:
        assert any(label in row for row in rows), (label, screen.rows)
    assert "…" not in screen.history, screen.history
    broken = [line for line in screen.history.splitlines()
              if display_width(line.rstrip()) > columns and not FOLDED_ALONE.fullmatch(line.strip())]
    assert broken == [], "\n".join(broken)


def test_at_80_columns_a_sweep_and_a_comparison_name_every_model_whole(testbed, second_checkpoint,
                                                                        third_checkpoint, tmp_path):
    checkpoints = (testbed.checkpoint, second_checkpoint, third_checkpoint)
    folder = tmp_path / "实验 sweep" / "experiments" / LONG_EXPERIMENT / "checkpoints"
    folder.mkdir(parents=True)
    for epoch, checkpoint in enumerate(checkpoints, 1):
        os.link(checkpoint, folder / f"epoch_{epoch}.pt")
    sweep = tmux_run(entry_command(testbed, "--model-path", str(folder), *MODEL_ARGS), 80, tmp_path)
    epochs = [f"{LONG_EXPERIMENT}@epoch_{epoch}" for epoch in (1, 2, 3)]
    check_labels_whole(sweep, epochs, 80)
    assert sweep.history.count("indistinguishable from chance") <= 1, sweep.history
    assert "text→image recall (%)" in sweep.history and "image→text recall (%)" in sweep.history

    testbed.write_config(models={name: {"path": str(path)} for name, path in zip(REGISTRY, checkpoints)})
    models = [argument for name in REGISTRY for argument in ("--model", name)]
    compared = tmux_run(entry_command(testbed, *models, *MODEL_ARGS), 80, tmp_path)
    check_labels_whole(compared, list(REGISTRY), 80)
    assert compared.history.count("indistinguishable from chance") <= 1, compared.history

    for columns in (80, 120):  # `results`: every table kept so far, read back from the results folder
        results = tmux_run(shlex.join([sys.executable, "-m", "evalkit", "results", "--config", str(testbed.config)]),
                           columns, tmp_path)
        check_labels_whole(results, [*epochs, *REGISTRY], columns)
