"""evalkit's own lines at a terminal's width: broken at spaces, never inside a word or a path; the
same warning for several rows said once, naming the rows."""
from __future__ import annotations

import pytest

from evalkit.terminal_text import display_width, named_rows, said_once, wrap_words

NOTE = ("· reusing the features extracted 2026-11-27T10:00:00+00:00 for this checkpoint (20 images, 80 texts, "
        "checkpoint unchanged); --force-extraction extracts again")
SPACED_PATH = "/tmp/pytest-of-me/实验 sweep/experiments/sweep_run/checkpoints/epoch_1.pt"


@pytest.mark.parametrize("width", [30, 50, 80])
def test_a_long_note_breaks_at_spaces_within_the_width(width):
    lines = wrap_words(NOTE, width)
    assert len(lines) > 1 and all(display_width(line) <= width for line in lines)
    assert " ".join(line.strip() for line in lines) == NOTE  # every word whole, in order
    assert all(line.startswith("  ") for line in lines[1:])  # the lines after the first are indented


def test_a_line_that_fits_is_left_as_it_is():
    assert wrap_words("✓ [1/3] extract image + text features  46.3 s", 80) == [
        "✓ [1/3] extract image + text features  46.3 s"]


@pytest.mark.parametrize("text, width, lines", [
    (f"saved: {SPACED_PATH}", 80, [f"saved: {SPACED_PATH}"]),
    (f"saved: {SPACED_PATH}", 79, ["saved:", f"  {SPACED_PATH}"]),   # on a line of its own, its space kept
    (f"checkpoint: {SPACED_PATH}", 40, ["checkpoint:", f"  {SPACED_PATH}"]),  # wider than the line: whole
    ("every R@1/5/10 is within chance", 16, ["every R@1/5/10", "  is within", "  chance"]),
    ("see /c/x.pt (20 images)", 12, ["see /c/x.pt", "  (20", "  images)"]),
    (f"· {SPACED_PATH}: 3 checkpoints", 40, [f"· {SPACED_PATH}:", "  3 checkpoints"]),  # never a lone mark
])
def test_a_path_stays_whole_for_copy_and_paste(text, width, lines):
    assert wrap_words(text, width) == lines


def test_chinese_characters_take_two_columns():
    assert display_width("实验 sweep") == 10
    assert wrap_words("数据 数据 数据", 9) == ["数据 数据", "  数据"]


@pytest.mark.parametrize("labels, named", [
    (["sweep_run@epoch_1", "sweep_run@epoch_2", "sweep_run@epoch_3"], "sweep_run@epoch_1, @epoch_2, @epoch_3"),
    (["team", "large"], "team, large"),
    (["a@epoch_1", "a@epoch_2", "b@epoch_1", "team"], "a@epoch_1, @epoch_2, b@epoch_1, team"),
])
def test_rows_are_named_with_an_experiments_later_epochs_as_their_epoch(labels, named):
    assert named_rows(labels) == named


def test_the_same_warning_for_several_rows_is_said_once_naming_them():
    chance, context = "recall indistinguishable from chance: every R@1/5/10 ...", "context_length 24 on MUGE: ..."
    rows = [("sweep_run@epoch_1", (chance,)), ("sweep_run@epoch_2", (chance, context)),
            ("team", ()), ("sweep_run@epoch_3", (chance,))]
    assert said_once(rows) == [f"warning: sweep_run@epoch_1, @epoch_2, @epoch_3: {chance}",
                               f"warning: sweep_run@epoch_2: {context}"]
