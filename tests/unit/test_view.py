"""What the terminal shows is text: labels and remote output with rich markup in them are
printed literally, never interpreted (nor a crash); and at 80 columns every label is whole."""
from __future__ import annotations

import re

import pytest
from rich.cells import cell_len
from rich.console import Console

from evalkit import view
from evalkit.comparison import ModelResult, build_comparison, to_markdown
from evalkit.errors import MissingInput
from evalkit.plan import Step
from evalkit.progress import LogLine, ProgressUpdate
from evalkit.references import all_references, reference_rows
from evalkit.summary import Recall

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


# At 80 columns (a default terminal, a split screen, a tmux pane) and 120, every label is whole:
# a table that does not fit changes shape, never cuts a name or a header with '…'.

CHANCE = ("recall indistinguishable from chance: every R@1/5/10 is within what a random ranking of this split "
          "(20 images, 80 texts, 80 matches) reaches with 99.9% confidence (text→image R@1: 1.25 expected, up to "
          "5.00); looks like random weights, the wrong towers or the wrong tokenizer")
SWEEP = [f"sweep_run@epoch_{epoch}" for epoch in (1, 2, 3)]
DISTILL = "muge_finetune_vit-b-16_roberta-base_bs512_4gpu_team_distill"
LONG = [f"{DISTILL}@epoch_5", f"{DISTILL}@epoch_10", "baseline"]
WIDER_THAN_THE_SCREEN = [f"{DISTILL}_{DISTILL}@epoch_5", "baseline"]


def terminal(width: int) -> Console:
    return Console(record=True, width=width, force_terminal=True, color_system=None)


def screen(out: Console) -> list[str]:
    return out.export_text(clear=False).splitlines()


def sweep_row(label: str, r1: float, hits: str) -> ModelResult:
    """A row with everything a cell can show: a 95% interval, and a delta and its mark against baseline."""
    recall = {direction: {"r1": r1, "r5": 25.0, "r10": 48.61, "mean_recall": 26.39}
              for direction in ("text_to_image", "image_to_text")}
    ci95 = {direction: {"r1": [r1 - 1.4, r1 + 1.4]} for direction in recall}
    query_hits = {direction: {"queries": len(hits), "reference_sha256": "s", "hits": {"r1": hits, "r5": hits,
                                                                                          "r10": hits}}
                  for direction in recall}
    return ModelResult(label, f"/c/{label}.pt", "ok", recall, warnings=(CHANCE,), ci95=ci95, query_hits=query_hits)


def comparison_of(labels: list[str]):
    rows = [sweep_row(label, 5.56 + index, "1" * (60 - 20 * (label == "baseline")) + "0" * 40)
            for index, label in enumerate(labels)]
    return build_comparison(rows, "Flickr30k-CN", "valid", "2026-01-01T00:00:00+00:00")


def check_readable(lines: list[str], labels: list[str], width: int) -> None:
    """Each label whole on a line, nothing cut with '…', no line wider than the screen but one word
    alone (a label wider than the screen, which the terminal folds)."""
    for label in labels:
        assert any(label in line for line in lines), (label, "\n".join(lines))
    assert not [line for line in lines if "…" in line]
    assert [line for line in lines if cell_len(line) > width and len(line.split()) > 1] == []


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("labels", [SWEEP, LONG, WIDER_THAN_THE_SCREEN], ids=["sweep", "long", "wider"])
def test_a_comparison_names_every_model_whole_at_80_and_120_columns(width, labels):
    out = terminal(width)
    view.show_comparison(out, comparison_of(labels), [])
    check_readable(screen(out), labels, width)
    text = out.export_text(clear=False)
    deltas = 8 * (len(labels) - 1) if "baseline" in labels else 0
    assert text.count("±1.4") == 2 * len(labels) and len(re.findall(r"\([+-]\d+\.\d\d\*?\)", text)) == deltas


def test_at_80_columns_a_sweep_is_a_table_per_direction_named_in_words():
    out = terminal(80)
    view.show_comparison(out, comparison_of(SWEEP[:2]), [])
    text = out.export_text(clear=False)
    assert "text→image recall (%) — Flickr30k-CN valid" in text and "image→text recall (%)" in text
    header = next(line for line in screen(out) if "R@1" in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")] == ["model", "R@1", "R@5", "R@10", "MR"]


def test_at_120_columns_one_table_names_its_directions_t_to_i_and_i_to_t():
    out = terminal(120)
    view.show_comparison(out, build_comparison([ModelResult(label, "/c/x.pt", "ok", row.recall) for label, row in
                                                zip(SWEEP, (sweep_row(label, 5.0, "1") for label in SWEEP))],
                                               "Flickr30k-CN", "valid", "2026-01-01T00:00:00+00:00"), [])
    directions = next(line for line in screen(out) if "t→i" in line)
    assert directions.count("t→i") == 4 and directions.count("i→t") == 4
    assert out.export_text(clear=False).count("Recall (%) — Flickr30k-CN valid") == 1


def test_on_a_wide_terminal_the_table_is_as_it_was():
    out = terminal(250)
    view.show_comparison(out, comparison_of(SWEEP), [])
    assert "text→image R@1" in out.export_text(clear=False) and "image→text MR" in out.export_text(clear=False)


def test_the_same_warning_for_several_rows_is_said_once_naming_the_rows():
    comparison = comparison_of(SWEEP)
    out = terminal(80)
    view.show_comparison(out, comparison, [])
    text = " ".join(line.strip() for line in screen(out))
    assert text.count("indistinguishable from chance") == 1
    assert "warning: sweep_run@epoch_1, @epoch_2, @epoch_3: recall indistinguishable from chance" in text
    assert to_markdown(comparison).count("indistinguishable from chance") == 3  # the saved files as they were


@pytest.mark.parametrize("width", [80, 120])
def test_the_published_results_name_every_row_whole(width):
    rows = [row for reference in all_references() for row in reference_rows([reference], reference.dataset,
                                                                             reference.split)]
    out = terminal(width)
    view.show_references(out, rows)
    check_readable(screen(out), [row["name"] for row in rows], width)
    assert "79.1/94.8/97.4" in out.export_text(clear=False)


@pytest.mark.parametrize("label", [f"{DISTILL}@epoch_5", WIDER_THAN_THE_SCREEN[0]])
def test_one_runs_table_keeps_its_label_whole_in_its_title(label):
    out = terminal(80)
    view.show_table(out, view.recall_table(label, {"text_to_image": Recall(52.1, 80.0, 90.0, 74.03)}, ci95=None))
    check_readable(screen(out), [label], 80)


def test_a_models_header_keeps_its_label_and_checkpoint_whole():
    checkpoint = "/root/autodl-tmp/datapath/experiments/sweep_run/checkpoints/epoch_1.pt"
    out = terminal(80)
    view.show_model_header(out, "[1/3] sweep_run@epoch_1", checkpoint)
    lines = screen(out)
    assert lines[0].startswith("[1/3] sweep_run@epoch_1 ─") and lines[1].strip() == checkpoint


@pytest.mark.parametrize("checkpoint", ["/root/autodl-tmp/datapath/experiments/sweep_run/checkpoints/epoch_1.pt",
                                        f"/root/autodl-tmp/datapath/experiments/{DISTILL}/checkpoints/epoch_1.pt", ""])
def test_a_piped_models_header_is_one_whole_line_not_a_rule_as_wide_as_the_piped_console(checkpoint):
    piped = Console(record=True, width=view.PIPED_WIDTH, force_terminal=False)  # `... > run.log`
    view.show_model_header(piped, "[1/3] sweep_run@epoch_1", checkpoint)
    [line] = screen(piped)
    title = f"[1/3] sweep_run@epoch_1  ({checkpoint})" if checkpoint else "[1/3] sweep_run@epoch_1"
    assert line.startswith(f"{title} ─") and cell_len(line) == max(80, cell_len(title) + view.RULE_ENDS)


def test_a_models_header_on_a_terminal_still_rules_across_it():
    out = terminal(120)
    view.show_model_header(out, "[1/3] sweep_run@epoch_1", "/c/epoch_1.pt")
    assert screen(out) == ["[1/3] sweep_run@epoch_1  (/c/epoch_1.pt) " + "─" * (120 - 41)]


def test_a_long_note_wraps_at_words_on_a_terminal_and_is_one_line_when_piped():
    note = ("reusing the features extracted 2026-11-27T10:00:00+00:00 for this checkpoint (20 images, 80 texts, "
            "checkpoint unchanged); --force-extraction extracts again")
    out = terminal(80)
    view.show_note(out, note)
    lines = screen(out)
    assert len(lines) == 2 and all(cell_len(line) <= 80 for line in lines)
    assert " ".join(line.strip() for line in lines) == f"· {note}"
    piped = Console(record=True, width=80, force_terminal=False)
    view.show_note(piped, note)
    assert screen(piped) == [f"· {note}"]  # for grep and log files


def test_a_dry_run_lists_each_cells_label_whole_beside_a_long_checkpoint():
    cells = [(label, "Flickr30k-CN", "valid", f"/root/autodl-tmp/datapath/experiments/{DISTILL}/checkpoints/"
                                               f"{label.split('@')[1]}.pt") for label in LONG[:2]]
    out = terminal(80)
    view.show_cells(out, cells)
    check_readable(screen(out), LONG[:2], 80)


def test_a_classification_run_table_names_its_label_whole_with_its_intervals():
    from evalkit.view import classification_table
    label = "muge_finetune_vit-b-16_roberta-base_bs512_4gpu_team_distill@epoch5"
    console = Console(width=80, record=True)
    view.show_table(console, classification_table(label, {"top1": 51.0, "top5": 80.25, "mean_per_class_recall": 49.5},
                                                  {"top1": [49.0, 53.0]}))
    shown = console.export_text()
    assert label in shown and "51.00 ±2.0" in shown and "80.25" in shown
