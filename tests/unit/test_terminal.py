"""What a person sees while steps run: one line per step, upstream's output only with --verbose,
a live row per running evaluation and an overall row."""
from __future__ import annotations

from rich.console import Console

from evalkit import view
from evalkit.outcome import StepResult
from evalkit.plan import Step
from evalkit.progress import StreamSplitter

from upstream_output import EXTRACT_ERR, EXTRACT_OUT, VERIFY_OUT

EXTRACT = Step("extract", "extract image + text features", "extract", "python -u cn_clip/eval/extract_features.py")
VERIFY = Step("verify", "check the features are complete", "extract", "python -u inspect_outputs.py")


def console() -> Console:
    return Console(record=True, width=120, force_terminal=False)


def result(step: Step, seconds: float, exit_code: int = 0) -> StepResult:
    return StepResult(step.name, step.title, step.command, exit_code, seconds, "t0", "t1")


def feed(reporter, step: Step, stream: str, data: bytes) -> None:
    for event in StreamSplitter(stream).feed(data):
        reporter.step_event(step, event)


def live_rows(progress) -> list[str]:
    shown = Console(record=True, width=120, force_terminal=False)
    shown.print(progress.get_renderable())
    return [line.rstrip() for line in shown.export_text().splitlines() if line.strip()]


def run_two_steps(verbose: bool) -> tuple[str, list[str]]:
    out = console()
    with view.LiveReporter(out, verbose) as reporter:
        reporter.step_started(EXTRACT, 1, 9)
        feed(reporter, EXTRACT, "stdout", EXTRACT_OUT)
        feed(reporter, EXTRACT, "stderr", EXTRACT_ERR)
        rows = live_rows(reporter.progress)
        reporter.step_finished(EXTRACT, result(EXTRACT, 46.3))
        reporter.step_started(VERIFY, 2, 9)
        feed(reporter, VERIFY, "stdout", VERIFY_OUT)
        reporter.step_finished(VERIFY, result(VERIFY, 0.2))
    return out.export_text(), rows


def lines(out: Console) -> list[str]:
    return [line for line in out.export_text().splitlines() if line.strip()]


def test_by_default_each_step_is_one_line_with_its_time_and_upstreams_output_stays_out():
    text, rows = run_two_steps(verbose=False)
    assert [line for line in text.splitlines() if line.strip()] == ["✓ [2/9] extract image + text features  46.3 s",
                                 "✓ [3/9] check the features are complete  0.2 s"]
    assert len(rows) == 1 and "[2/9] extract image + text features · images" in rows[0] and "1/1" in rows[0]


def test_verbose_streams_upstreams_lines_and_commands_but_never_evalkits_facts():
    text, _ = run_two_steps(verbose=True)
    assert "  Params:" in text and "pin_memory" in text and "  Make inference for images..." in text
    assert "  $ python -u cn_clip/eval/extract_features.py" in text
    assert "  complete: image feature file and text feature file (20 images, 80 texts)" in text
    assert "EVALKIT-" not in text
    assert "✓ [2/9] extract image + text features  46.3 s" in text


def test_a_failed_step_is_its_own_line_with_a_cross():
    out = console()
    with view.LiveReporter(out) as reporter:
        reporter.step_started(EXTRACT, 0, 1)
        reporter.step_finished(EXTRACT, result(EXTRACT, 3.0, exit_code=1))
    assert lines(out) == ["✗ [1/1] extract image + text features  3.0 s"]


def test_several_at_once_a_row_per_running_evaluation_and_an_overall_row():
    out = console()
    with view.concurrent_progress(out, total=3) as progress:
        team, large = (view.ConcurrentReporter(out, progress, label) for label in ("team", "large"))
        team.step_started(EXTRACT, 1, 2)
        feed(team, EXTRACT, "stderr", EXTRACT_ERR[:EXTRACT_ERR.index(b"2/3")])
        large.step_started(VERIFY, 0, 2)
        rows = live_rows(progress)
        assert len(rows) == 3
        assert rows[0].lstrip("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ").startswith("all evaluations") and "0/3" in rows[0]
        assert "team: [2/2] extract image + text features · texts" in rows[1] and "1/3" in rows[1]
        assert "large: [1/2] check the features are complete" in rows[2]
        team.step_finished(EXTRACT, result(EXTRACT, 40.0))
        team.done()
        rows = live_rows(progress)
        assert len(rows) == 2 and "1/3" in rows[0] and "large:" in rows[1]
        large.step_finished(VERIFY, result(VERIFY, 0.5, exit_code=2))
        large.done()
    assert lines(out) == ["✓ team  40.0 s",
                          "✗ large: [1/2] check the features are complete  0.5 s"]
