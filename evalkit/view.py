"""With layout.py, the only modules that import rich: plain data in, a Console passed in.

Remote text is always printed as plain Text (never markup), so output such as "[red]" or
"[/]" from a script can neither restyle nor crash the display.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Iterable

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.console import RenderableType
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, Task, TaskID, TextColumn,
                           TimeElapsedColumn)
from rich.rule import Rule
from rich.table import Column
from rich.table import Table
from rich.text import Text

from .comparison import Comparison, notes, runner_up_note
from .diagnosis import Check
from .epochs import Trend
from .errors import EvalkitError
from .evaluation import NAMED, SERVER_LATEST
from .executors.base import JobState
from .layout import recall_table, show_classification_reference_rows, show_comparison_table, show_line, show_table
from .layout import show_references  # noqa: F401  (the CLI's, through view)
from .outcome import StepResult
from .plan import Plan, Step
from .progress import Bar, Event, LogLine, ProgressUpdate, StepBars
from .server_outputs import ServerFacts
from .significance import plus_minus
from .summary import ImageRecall, recalls, skipped

if TYPE_CHECKING:  # pipeline brings paramiko: kept out of `--help`'s start-up
    from .pipeline import Report
    from .report import ReportWritten
    from .run_record import RunRecord


RULE_ENDS = 4  # columns a rule keeps beside its title (rich cuts a longer title with …)
PIPED_WIDTH = 1000  # `references > file`, `| grep`: a row on one line, whatever its names' length
PIPED_RULE_WIDTH = 80  # a rule in a file or a pipe: its title and a short line, never PIPED_WIDTH of ─


def make_consoles(to_stderr: bool = False) -> tuple[Console, Console]:
    """(output console, stderr console): errors never mix into output meant for files.

    to_stderr: stdout is kept for one machine-readable document (--json).
    """
    output = Console(highlight=False, stderr=to_stderr)
    if not output.is_terminal and "COLUMNS" not in os.environ:  # a file or a pipe: no name is cut
        output = Console(highlight=False, stderr=to_stderr, width=PIPED_WIDTH)
    return output, Console(stderr=True, highlight=False)


class LiveReporter:
    """One line per step: while it runs, a live row named by the step (and the upstream loop it
    is in); when it ends, ✓ or ✗ and its time. Upstream's own output goes to the log only;
    VERBOSE also streams it, with each command."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self.progress = step_progress(console)
        self._task: TaskID | None = None
        self._bars = StepBars("")
        self._label = ""

    def __enter__(self) -> "LiveReporter":
        return self  # the live display starts with the first step, not before connecting

    def __exit__(self, *exc_info) -> None:
        self.done()

    def done(self) -> None:
        self.progress.stop()

    def step_started(self, step: Step, index: int, count: int) -> None:
        self._label, self._bars = f"[{index + 1}/{count}] {step.title}", StepBars(step.name)
        if self.verbose:
            self.console.print(Text(f"▶ {self._label}", style="bold"))
            self.console.print(Text(f"  $ {step.command}", style="dim"), soft_wrap=True)
        self.progress.start()
        self._task = self.progress.add_task(escape(self._label), total=None)

    def step_event(self, step: Step, event: Event) -> None:
        if isinstance(event, LogLine):
            if self.verbose:
                self.console.print(Text(f"  {event.text}", style="dim"), soft_wrap=True)
        elif isinstance(event, ProgressUpdate) and self._task is not None:
            bar = self._bars.update(event)
            self.progress.update(self._task, description=escape(bar_label(self._label, bar)),
                                 completed=bar.n, total=bar.total)

    def note(self, text: str) -> None:
        show_note(self.console, text)

    def log_opened(self, path: Path) -> None:
        show_log_location(self.console, path)

    def step_finished(self, step: Step, result: StepResult) -> None:
        for task in list(self.progress.task_ids):
            self.progress.remove_task(task)  # the ✓ line below takes the row's place
        self.progress.refresh()  # now, not at the next tick: the row never shows beside its ✓ line
        self._task = None
        mark, style = ("✓", "green") if result.exit_code == 0 else ("✗", "red")
        self.console.print(Text(f"{mark} {self._label}  {result.seconds:.1f} s", style=style))


def bar_label(step_label: str, bar: Bar) -> str:
    """A step's row: '[2/9] extract image + text features · texts'."""
    return f"{step_label} · {bar.phase}" if bar.phase else step_label


def step_progress(console: Console) -> Progress:
    """The live rows: the label gives way (…) before the bar, count and time on a narrow terminal."""
    return Progress(_Spinner(), TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")),
                    BarColumn(bar_width=24), MofNCompleteColumn(), _Elapsed(),
                    console=console, transient=True)


class _Spinner(SpinnerColumn):
    """Spins while the row lives: a full count is one loop done, not the step (it may be saving)."""

    def render(self, task: Task) -> RenderableType:
        return self.spinner.render(task.get_time())


class _Elapsed(TimeElapsedColumn):
    """The step's time so far, still running when one of its loops is full."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0
        return Text(str(timedelta(seconds=int(elapsed))), style="progress.elapsed")


def show_plan(console: Console, plan: Plan, host: str) -> None:
    """--dry-run: the exact commands, in order, for copy and paste."""
    header = [f"# dry run: nothing is executed. Host: {host}", f"# checkpoint: {plan.checkpoint}",
              f"# server output directory: {plan.output_dir}"]
    header.append("# first a read-only check of the dataset, checkpoint and earlier outputs "
                  f"({plan.manifest})")
    if plan.steps_of("extract"):
        header.append("# extract is skipped when complete features of this unchanged checkpoint "
                      "exist (--force-extraction)")
    if plan.cpu_launcher:
        header.append(f"# --device cpu: evalkit first uploads its CPU launcher to {plan.cpu_launcher}")
    for line in header:
        console.print(Text(line), soft_wrap=True)
    for step in plan.steps:
        console.print(Text(f"\n# {step.name}: {step.title}", style="dim"))
        console.print(Text(step.command), soft_wrap=True)


def classification_table(label: str, result: dict, ci95: dict | None = None) -> Table:
    """Zero-shot classification's numbers, one row: top-1, top-5, mean per-class recall (%)."""
    title = f"Zero-shot classification (%) — {label}"
    table = Table(title=Text(title), min_width=max(map(cell_len, title.split())))  # the label whole
    for column in ("top-1", "top-5", "mean per-class recall"):
        table.add_column(column, justify="right")
    table.add_row(*[f"{result[metric]:.2f}" + plus_minus((ci95 or {}).get(metric))
                    for metric in ("top1", "top5", "mean_per_class_recall")])
    return table


def show_classification(console: Console, report: Report) -> None:
    """A zero-shot classification run's table, what it was made of, and what evalkit changed."""
    plan, evaluation = report.outcome.plan, report.evaluation
    result = report.outcome.results["zeroshot_classification"]
    ci95 = ((report.summary or {}).get("ci95") or {}).get("zeroshot_classification")
    show_table(console, classification_table(plan.label, result, ci95))
    console.print(Text(f"{evaluation.dataset} {evaluation.split}: {result['num_images']} images, "
                       f"{result['num_classes']} classes, templates: {result['templates']} "
                       f"({result['num_templates']}); top-1 as cn_clip's zeroshot_evaluation.py counts it"
                       + ("; ±: half-width of the 95% bootstrap interval over the images" if ci95 else ""),
                       style="dim"), soft_wrap=True)
    for change in result.get("changes") or ():
        console.print(Text(f"upstream's code, run through its own functions: {change}", style="dim"), soft_wrap=True)
    for warning in (report.summary or {}).get("warnings", []):
        console.print(Text(f"warning: {warning}", style="bold yellow"), soft_wrap=True)
    console.print(Text(f"checkpoint: {plan.checkpoint}"), soft_wrap=True)
    console.print(Text(f"server files: {plan.output_dir}"), soft_wrap=True)
    for path in report.written:
        console.print(Text(f"saved: {path}"), soft_wrap=True)


def show_results(console: Console, report: Report) -> None:
    plan, evaluation = report.outcome.plan, report.evaluation
    if "zeroshot_classification" in report.outcome.results:
        show_classification(console, report)
        return
    ci95 = (report.summary or {}).get("ci95")
    show_table(console, recall_table(plan.label, recalls(report.outcome), evaluation.chosen_by, ci95))
    if ci95:
        console.print(Text("±: half-width of the 95% bootstrap interval over the queries", style="dim"))
    for reason in skipped(report.outcome).values():
        show_line(console, reason, "yellow")
    for warning in (report.summary or {}).get("warnings", []):
        show_line(console, f"warning: {warning}", "bold yellow")
    image = recalls(report.outcome).get("image_to_image")
    if isinstance(image, ImageRecall):
        show_line(console, f"image→image: {image.num_queries} query images (those with a relevant other image)", "dim")
    show_line(console, f"checkpoint: {plan.checkpoint}")
    if evaluation.chosen_by == SERVER_LATEST:
        show_line(console, "  not named by you: the server's most recent extraction, by anyone; pass "
                           "--model-path to evaluate another", "bold yellow")
    show_line(console, f"server files: {plan.output_dir}")
    for path in report.written:
        show_line(console, f"saved: {path}")


def show_report(console: Console, report: Report) -> None:
    """What one evaluation ends with: its recall table, or what the stage it ran left ready."""
    plan = report.outcome.plan
    if report.summary is None:
        show_stage_done(console, report.evaluation.stages[-1], report.facts, plan, report.evaluation.chosen_by)
    else:
        show_results(console, report)


def show_stage_done(console: Console, stage: str, facts: ServerFacts | None, plan: Plan,
                    chosen_by: str = NAMED) -> None:
    """After --step extract or knn: what is ready on the server, and the next command."""
    if stage == "extract":
        counts = f": {facts.image_count} images, {facts.text_count} texts" if facts else ""
        ready, following = f"features ready{counts}", "knn"
    else:
        ready, following = "KNN predictions ready", "recall"
    show_line(console, f"✓ {ready} for {plan.checkpoint}", "green")
    if chosen_by != NAMED:
        console.print(Text(f"  ({chosen_by})", style="bold yellow" if chosen_by == SERVER_LATEST else "dim"))
    show_line(console, f"server files: {plan.output_dir}")
    console.print(Text(f"next: --step {following}", style="dim"))


class QuietReporter:
    """--detach: only evalkit's own notes; the steps run on without us."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def note(self, text: str) -> None:
        show_note(self.console, text)

    def step_started(self, step: Step, index: int, count: int) -> None: ...

    def step_event(self, step: Step, event: Event) -> None: ...

    def step_finished(self, step: Step, result: StepResult) -> None: ...

    def log_opened(self, path: Path) -> None: ...

    def done(self) -> None: ...


def show_detached(console: Console, run_id: str, label: str) -> None:
    console.print(Text(f"started run {run_id} ({label}) on the server; it goes on without this terminal",
                       style="green"), soft_wrap=True)
    for verb, what in (("attach", "follow it and pull the results"), ("logs -f", "its output"),
                       ("status", "where it stands"), ("cancel", "stop it")):
        console.print(Text(f"  python -m evalkit {verb} {run_id}    # {what}", style="dim"), soft_wrap=True)


def show_job_script(console: Console, script: str) -> None:
    """--dry-run with `executor: slurm`: the batch script each evaluation's job runs."""
    console.print(Text("Slurm job script (RUN_ID is the run's id):", style="bold"))
    console.print(Text(script), soft_wrap=True)


def show_runs(console: Console, rows: list[tuple[RunRecord, JobState]]) -> None:
    """`status`: one row per run record, with what the server says about it."""
    table = Table(title="runs")
    for column in ("run", "label", "dataset / split", "started", "state"):
        table.add_column(column, no_wrap=column in ("run", "label"))  # the others wrap before a label is cut
    for record, state in rows:
        table.add_row(record.run_id, Text(record.label), Text(f"{record.evaluation.dataset} / {record.evaluation.split}"),
                      record.created_at, Text(describe_state(state, record.state)))
    console.print(table)


def describe_state(state: JobState, recorded: str = "started") -> str:
    """What the server says; RECORDED: the local record's state ("starting" until launched)."""
    if state.unknown:
        return f"unknown: {state.unknown}"
    if state.state == "failed":
        return f"failed at step {state.failed_step}"
    if state.state:
        return state.state
    if state.driver_alive:
        return state.detail or "running"
    if state.detail:  # a scheduler's word on how the run's job ended, its files silent
        return state.detail
    if recorded == "starting":
        return "never started (evalkit stopped while starting it)"
    return "gone (driver died or server rebooted)"


def show_log_location(console: Console, path: Path) -> None:
    show_line(console, f"full remote log: {path}", "dim")


def show_error(console: Console, error: EvalkitError) -> None:
    # soft_wrap: a command inside a message must survive copy and paste unbroken
    console.print(Text(f"error: {error.message}", style="bold red"), soft_wrap=True)
    if error.hint:
        console.print(Text(f"fix: {error.hint}", style="yellow"), soft_wrap=True)


def show_interrupted(console: Console) -> None:
    console.print(Text("interrupted", style="bold red"))


def show_note(console: Console, text: str) -> None:
    show_line(console, f"· {text}", "cyan")


class ConcurrentReporter:
    """A row per evaluation while several run at once; their upstream output goes to their logs.
    A failed step prints its line; a finished evaluation prints one line with its time."""

    def __init__(self, console: Console, progress: Progress, label: str) -> None:
        self.console, self.progress, self.label = console, progress, label
        # a task's description is rich markup: a label such as "lr[/]1e-4" must stay text
        self._task = progress.add_task(f"{escape(label)}: waiting", total=None)
        self._bars, self._step_label = StepBars(""), ""
        self._seconds, self._is_last_step, self._is_complete = 0.0, False, False

    def step_started(self, step: Step, index: int, count: int) -> None:
        self._step_label, self._bars = f"{self.label}: [{index + 1}/{count}] {step.title}", StepBars(step.name)
        self._is_last_step = index + 1 == count
        self.progress.reset(self._task, description=escape(self._step_label), total=None)

    def step_event(self, step: Step, event: Event) -> None:
        if isinstance(event, ProgressUpdate):
            bar = self._bars.update(event)
            self.progress.update(self._task, description=escape(bar_label(self._step_label, bar)),
                                 completed=bar.n, total=bar.total)

    def step_finished(self, step: Step, result: StepResult) -> None:
        self._seconds += result.seconds
        if result.exit_code != 0:
            self.console.print(Text(f"✗ {self._step_label}  {result.seconds:.1f} s", style="red"))
        self._is_complete = result.exit_code == 0 and self._is_last_step

    def note(self, text: str) -> None:
        show_note(self.console, f"{self.label}: {text}")

    def log_opened(self, path: Path) -> None:
        show_log_location(self.console, path)

    def done(self) -> None:
        self.progress.remove_task(self._task)
        self.progress.refresh()
        if self._is_complete:
            self.console.print(Text(f"✓ {self.label}  {self._seconds:.1f} s", style="green"))
        for task in self.progress.tasks:
            if task.fields.get("overall"):
                self.progress.advance(task.id)


def concurrent_progress(console: Console, total: int | None = None) -> Progress:
    """The live rows of several evaluations at once; with TOTAL, an overall row first."""
    progress = step_progress(console)
    if total:
        progress.add_task("all evaluations", total=total, overall=True)
    return progress


def show_cells(console: Console, cells: list[tuple[str, str, str, str]]) -> None:
    """--dry-run of a sweep or a matrix: each cell (label, dataset, split, checkpoint), in order."""
    table = Table(title=f"{len(cells)} cells")
    for column in ("#", "label", "dataset", "split", "checkpoint"):
        table.add_column(column, no_wrap=column == "label", overflow="fold")  # the others wrap before a label is cut
    for index, (label, dataset, split, checkpoint) in enumerate(cells, 1):
        table.add_row(str(index), Text(label), Text(dataset), split, Text(checkpoint))
    console.print(table)


def show_trends(console: Console, trends: list[Trend]) -> None:
    """Each experiment's mean recall (both directions' average) over its epochs, as a sparkline."""
    for trend in trends:
        line = Text(f"{trend.experiment}  ", style="bold")
        line.append(trend.sparkline, style="green")
        line.append(f"  {trend.scores[0]:.2f} → {trend.scores[-1]:.2f} over {len(trend.scores)} checkpoints; "
                    f"best: {trend.best_label}{runner_up_note(trend.versus_runner_up)}", style="default")
        console.print(line)  # wrapped at words


def show_checkpoint_set(console: Console, searched: str, count: int, aliases: list[str],
                        notes: Iterable[str] = ()) -> None:
    """A sweep's directory or glob: how many checkpoints it holds, each alias left out, and
    NOTES (a file holding an epoch its name does not say, a file the server could not list)."""
    show_note(console, f"{searched}: {count} checkpoint{'s' if count != 1 else ''}")
    for alias in aliases:
        show_line(console, f"  alias: {alias}", "dim")
    for note in notes:
        show_line(console, f"  {note}", "dim")


def show_model_header(console: Console, label: str, checkpoint: str) -> None:
    """A rule named by the evaluation and its checkpoint; when they do not fit in it (a rule cuts its
    title), the checkpoint on a line of its own under it, and a label wider still above it."""
    whole = f"{label}  ({checkpoint})" if checkpoint else label
    if cell_len(whole) + RULE_ENDS <= console.width:
        _rule(console, whole)
        return
    if cell_len(label) + RULE_ENDS <= console.width:
        _rule(console, label)
    else:
        show_line(console, label, "bold")
        _rule(console)
    if checkpoint:
        show_line(console, f"  {checkpoint}", "dim")


def _rule(console: Console, title: str = "") -> None:
    """A rule across the terminal, TITLE at its left. In a file or a pipe the console is
    PIPED_WIDTH wide so that rows stay whole; a rule there is only as wide as its title needs, or
    PIPED_RULE_WIDTH, so a log holds no lines of a thousand box characters."""
    width = console.width
    if not console.is_terminal:
        width = min(width, max(PIPED_RULE_WIDTH, cell_len(title) + RULE_ENDS))
    console.print(Rule(Text(title), align="left"), width=width)


def show_unchanged(console: Console, label: str, run_id: str | None) -> None:
    """A sweep's cell not evaluated again: its checkpoint, dataset and commands are as they were."""
    show_line(console, f"= {label}: unchanged since run {run_id}, its numbers kept", "cyan")


def show_model_failed(console: Console, label: str, error: EvalkitError) -> None:
    console.print(Text(f"✗ {label} failed (exit {error.exit_code}): {error.message}", style="bold red"),
                  soft_wrap=True)
    if error.hint:
        console.print(Text(f"  fix: {error.hint}", style="yellow"), soft_wrap=True)


def show_comparison(console: Console, comparison: Comparison, written: Iterable[Path]) -> None:
    show_comparison_table(console, comparison)
    show_notes(console, notes(comparison, once=True))
    for path in written:
        show_line(console, f"saved: {path}")


def show_report_written(console: Console, written: ReportWritten) -> None:
    """`report`: where the page (and figures) went; without matplotlib, how to get the charts."""
    for path in (written.page, *written.figures):
        show_line(console, f"saved: {path}")
    if not written.has_charts:
        from .charts import INSTALL  # the charts' modules stay out of every other command's start-up
        show_note(console, f"the page has the tables only: for charts of recall against epoch, {INSTALL} "
                           "(matplotlib) and run report again")


def show_notes(console: Console, lines: list[str]) -> None:
    """Footnotes, warnings and sources under a comparison table."""
    for line in lines:
        show_line(console, line, "bold yellow" if line.startswith(("warning:", "†")) else "dim")


SHORT_METRICS = {"top-1 accuracy": "top-1", "mean per-class accuracy": "per-class", "11-point mAP": "11-pt mAP"}


CLASSIFICATION_TITLE = "Chinese-CLIP's published zero-shot image classification (%)"


def show_classification_references(console: Console, rows: list[dict], notes_below: list[str]) -> None:
    """`references`: Chinese-CLIP's zero-shot classification results. In a terminal, a row per
    dataset (with the metric it was published in), a column per model, and how the numbers are
    named; piped or in a file, a line per number with its name (`| grep NAME` finds it). A dataset
    not comparable with top-1 is marked †."""
    if console.is_terminal:
        _show_classification_grid(console, rows)
        naming = ["names for --reference: <model>-<dataset>-zeroshot-classification, e.g. "
                  "vit-b-16-cifar100-zeroshot-classification (piped: a line per name)"]
    else:
        show_classification_reference_rows(console, CLASSIFICATION_TITLE, rows,
                                           lambda row: SHORT_METRICS.get(row["metric"], row["metric"]))
        naming = []
    for line in [*naming, *(f"† {note}" for note in notes_below),
                 "source: OFA-Sys/Chinese-CLIP Results.md, “Zero-shot Image Classification” (CN-CLIP models); "
                 "references --classification --json lists each number"]:
        show_line(console, line, "dim")


def _show_classification_grid(console: Console, rows: list[dict]) -> None:
    models = list(dict.fromkeys(row["model"] for row in rows))
    table = Table(title=CLASSIFICATION_TITLE)
    table.add_column("dataset", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    for model in models:
        table.add_column(model.removeprefix("CN-CLIP ").replace("@336px", "@336"), justify="right", no_wrap=True)
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        found = [row for row in rows if row["dataset"] == dataset]
        values = {row["model"]: row["value"] for row in found}
        table.add_row(dataset + ("†" if found[0]["warnings"] else ""), SHORT_METRICS.get(found[0]["metric"], found[0]["metric"]),
                      *[f"{values[m]:.1f}" if m in values else "–" for m in models])
    console.print(table)


def show_check(console: Console, check: Check) -> None:
    """One doctor line: ✓ or ✗, the check, what it found; under a ✗, its fix."""
    mark, style = ("✓", "green") if check.ok else ("✗", "red")
    line = Text(f"{mark} {check.name}: ", style=style)
    line.append(check.found, style="default" if check.ok else "red")
    console.print(line, soft_wrap=True)
    if not check.ok and check.fix:
        console.print(Text(f"  fix: {check.fix}", style="yellow"), soft_wrap=True)


def show_doctor_passed(console: Console, count: int) -> None:
    console.print(Text(f"all {count} checks passed", style="bold green"))
