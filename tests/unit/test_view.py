"""What the terminal shows is text: labels and remote output with rich markup in them are
printed literally, never interpreted (nor a crash)."""
from __future__ import annotations

from rich.console import Console

from evalkit import view
from evalkit.comparison import ModelResult, build_comparison
from evalkit.errors import MissingInput
from evalkit.plan import Step
from evalkit.progress import LogLine, ProgressUpdate

MARKUP_LABEL = "lr[/]1e-4[bold]"
STEP = Step("extract", "extract image + text features", "extract", "true")


def console() -> Console:
    return Console(record=True, width=200, force_terminal=False)


def test_a_failed_models_label_with_markup_is_shown_literally():
    out = console()
    view.show_model_header(out, MARKUP_LABEL, "/c/x.pt")
    view.show_model_failed(out, MARKUP_LABEL, MissingInput("checkpoint not found on the server: /c/x.pt", "check it"))
    failed = ModelResult(MARKUP_LABEL, "/c/x.pt", "failed", {}, error="x", exit_code=12)
    view.show_comparison(out, build_comparison([failed], "Flickr30k-CN", "valid", "2026-01-01T00:00:00+00:00"), [])
    text = out.export_text()
    assert text.count(MARKUP_LABEL) == 3
    assert "failed (exit 12)" in text


def test_concurrent_rows_keep_a_markup_label_and_remote_text_literal():
    out = console()
    with view.concurrent_progress(out) as progress:
        reporter = view.ConcurrentReporter(out, progress, MARKUP_LABEL)
        reporter.step_started(STEP, 0, 3)
        reporter.note("reusing [red]features[/]")
        reporter.done()
    assert f"{MARKUP_LABEL}: reusing [red]features[/]" in out.export_text()


def test_a_progress_bar_named_after_remote_output_keeps_its_markup_literal():
    out = console()
    with view.LiveReporter(out, verbose=True) as reporter:
        reporter.step_started(STEP, 0, 1)
        reporter.step_event(STEP, LogLine("Make inference for [/]images", "stdout"))
        reporter.step_event(STEP, ProgressUpdate(1, 3, "scoring [/]tiles", ""))
        out.print(reporter.progress.get_renderable())
    text = out.export_text()
    assert "Make inference for [/]images" in text
    assert "extract image + text features · scoring [/]tiles" in text



def test_names_with_markup_in_table_titles_are_shown_as_typed_not_parsed_nor_a_crash():
    recall = {"text_to_image": {"r1": 52.1, "r5": 80.0, "r10": 90.0, "mean_recall": 74.0}}
    rows = [ModelResult("exp[lr=1e-4]", "/c/a.pt", "ok", recall), ModelResult("lr[/]1e-4", "/c/b.pt", "ok", recall)]
    out = console()
    view.show_comparison(out, build_comparison(rows, "MUGE[v2]", "valid", "2026-01-01T00:00:00+00:00",
                                               baseline_label="lr[/]1e-4"), [])
    out.print(view.recall_table("lr[/]1e-4", {}))
    text = out.export_text()
    assert "Recall (%) — MUGE[v2] valid (±: against lr[/]1e-4)" in text and "exp[lr=1e-4]" in text
    assert "Recall (%) — lr[/]1e-4" in text


def test_the_comparison_table_shows_half_widths_marks_and_says_what_they_mean():
    def hits(r1: str) -> dict:
        return {"image_to_text": {"queries": len(r1), "reference_sha256": "s", "hits": {"r1": r1, "r5": r1, "r10": r1}}}
    recall = {"image_to_text": {"r1": 52.1, "r5": 80.0, "r10": 90.0, "mean_recall": 74.0}}
    ci95 = {"image_to_text": {"r1": [50.7, 53.5]}}
    rows = [ModelResult("team", "/c/t.pt", "ok", recall, ci95=ci95, query_hits=hits("1" * 60 + "0" * 40)),
            ModelResult("baseline", "/c/b.pt", "ok", {"image_to_text": dict(recall, r1=12.1)},
                        query_hits=hits("1" * 20 + "0" * 80))]
    out = console()
    view.show_comparison(out, build_comparison(rows, "Flickr30k-CN", "valid", "2026-01-01T00:00:00+00:00"), [])
    text = out.export_text()
    assert "52.10 ±1.4 (+40.00*)" in text
    assert "±: half-width of the 95% bootstrap interval over the queries; *: differs from baseline with p < 0.05" in text
