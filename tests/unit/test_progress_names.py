"""Each progress bar is named by its step and the upstream loop it counts, from real upstream
output; evalkit's marked lines never reach a person."""
from __future__ import annotations

import pytest

from evalkit.progress import (Bar, LogLine, ProgressUpdate, ProtocolFilter, StepBars, StreamSplitter,
                              is_protocol_line, loop_phase)

from upstream_output import (EXTRACT_ERR, EXTRACT_OUT, KNN_I2T_ERR, KNN_T2I_ERR, KNN_T2I_OUT,
                              VERIFY_OUT)


def split(stream: str, data: bytes, chunk: int | None = None) -> list:
    """The events of DATA fed in CHUNK-byte pieces (the follower reads files by offset)."""
    splitter, events = StreamSplitter(stream), []
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        events += splitter.feed(piece)
    return events + list(splitter.close())


def bars(step_name: str, err: bytes, chunk: int | None = None) -> list[tuple[str, float, float | None]]:
    step = StepBars(step_name)
    return [(bar.phase, bar.n, bar.total) for bar in
            (step.update(e) for e in split("stderr", err, chunk) if isinstance(e, ProgressUpdate))]


@pytest.mark.parametrize("step_name, err, expected", [
    ("extract", EXTRACT_ERR, [("texts", 0, 3), ("texts", 1, 3), ("texts", 2, 3), ("texts", 3, 3), ("texts", 3, 3),
                              ("images", 0, 1), ("images", 1, 1), ("images", 1, 1)]),
    ("knn_t2i", KNN_T2I_ERR, [("loading image features", 0, None), ("loading image features", 20, None),
                              ("texts", 0, None), ("texts", 15, None), ("texts", 30, None), ("texts", 45, None),
                              ("texts", 61, None), ("texts", 76, None), ("texts", 80, None)]),
    ("knn_i2t", KNN_I2T_ERR, [("loading text features", 0, None), ("loading text features", 18, None),
                              ("loading text features", 43, None), ("loading text features", 69, None),
                              ("loading text features", 80, None),
                              ("images", 0, None), ("images", 14, None), ("images", 20, None)]),
])
@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_a_real_steps_bars_are_named_by_the_loop_they_count(step_name, err, expected, chunk):
    assert bars(step_name, err, chunk) == expected


def test_the_image_loop_of_extraction_is_never_named_after_the_text_loop():
    # the issue: a bar stayed at "Make inference for texts 0/3" while images were processed
    named = {(phase, total) for phase, _, total in bars("extract", EXTRACT_ERR)}
    assert named == {("texts", 3), ("images", 1)}


def test_a_bar_is_never_named_after_a_printed_line():
    # the issue: "knn_t2i: Done!" during KNN; names come from the loop table, not from stdout
    printed = {e.text.strip().rstrip(".") for e in split("stdout", KNN_T2I_OUT + EXTRACT_OUT)}
    phases = {phase for err, step in ((KNN_T2I_ERR, "knn_t2i"), (EXTRACT_ERR, "extract"))
              for phase, _, _ in bars(step, err)}
    assert phases and not phases & printed


@pytest.mark.parametrize("updates, expected_loops", [
    ([(0, 3, ""), (3, 3, ""), (0, 1, "")], [0, 0, 1]),                     # the count goes back
    ([(0, 3, ""), (3, 3, ""), (3, 5, "")], [0, 0, 1]),                     # another total
    ([(0, 4, "scoring tiles"), (4, 4, "scoring tiles")], [0, 0]),          # fast_knn's own description
    ([(2, None, "a"), (2, None, "b")], [0, 1]),                            # another description
    ([(0, None, ""), (0, None, ""), (5, None, "")], [0, 0, 0]),            # a redraw is not a new loop
])
def test_a_new_loop_starts_when_the_count_goes_back_or_the_bar_changes(updates, expected_loops):
    step = StepBars("knn_fast")
    assert [step.update(ProgressUpdate(n, total, desc, "")).loop for n, total, desc in updates] == expected_loops


def test_a_bars_own_description_names_it():
    assert StepBars("knn_fast").update(ProgressUpdate(1, 4, "scoring tiles", "")) == Bar(0, "scoring tiles", 1, 4)


@pytest.mark.parametrize("step_name, loop, phase", [
    ("extract", 0, "texts"), ("extract", 1, "images"), ("extract", 2, ""),
    ("knn_t2i", 1, "texts"), ("knn_i2t", 1, "images"), ("transform", 0, "annotations"),
    ("recall_t2i", 0, ""), ("knn_fast", 0, ""), ("extract", -1, ""),
])
def test_loop_phase(step_name, loop, phase):
    assert loop_phase(step_name, loop) == phase


def test_evalkits_facts_line_is_not_output():
    assert split("stdout", VERIFY_OUT) == [
        LogLine("complete: image feature file and text feature file (20 images, 80 texts)", "stdout")]


@pytest.mark.parametrize("line, is_protocol", [
    ('EVALKIT-FACTS {"images": {}}', True),
    ('EVALKIT-JOB {"run_id": "x"}', True),
    ('EVALKIT-DOCTOR {}', True),
    ("EVALKIT-ACTIVATED", True),
    ("  EVALKIT-FACTS {}", True),
    ("EVALKIT-FACTSX{}", False),
    ("the EVALKIT-FACTS line", False),
    ("evalkit-facts {}", False),
    ("EVALKIT- {}", False),
    ("Done!", False),
])
def test_is_protocol_line(line, is_protocol):
    assert is_protocol_line(line) is is_protocol


def filtered(*chunks: str) -> tuple[list[str], str]:
    """What ProtocolFilter gives back after each chunk, and at the close."""
    protocol = ProtocolFilter()
    return [protocol.feed(chunk) for chunk in chunks], protocol.close()


@pytest.mark.parametrize("chunks, expected", [
    (("a\nEVALKIT-FACTS {}\nb\n",), (["a\nb\n"], "")),
    (("a\nEVALKIT-FA", "CTS {\"x\": 1}\nb\n"), (["a\n", "b\n"], "")),          # a marked line cut in two
    (("\r0it [00:00, ?it/s]",), (["\r0it [00:00, ?it/s]"], "")),               # a redraw passes at once
    (("Make infer", "ence\n"), (["Make infer", "ence\n"], "")),
    (("x ", "EVALKIT-FACTS {}\n"), (["x ", "EVALKIT-FACTS {}\n"], "")),        # mid-line: not a marked line
    (("EVALKIT-JOB {}",), ([""], "")),                                          # the last line, unterminated
    (("EVALK",), ([""], "EVALK")),                                              # never became one
    (("EVALKIT-DOCTOR {}\n" * 3,), ([""], "")),
])
def test_protocol_filter(chunks, expected):
    assert filtered(*chunks) == expected


@pytest.mark.parametrize("chunk", [1, 5, 17])
def test_protocol_filter_of_a_real_check_step_in_any_chunks(chunk):
    text = VERIFY_OUT.decode()
    given, rest = filtered(*(text[i:i + chunk] for i in range(0, len(text), chunk)))
    assert "".join(given) + rest == "complete: image feature file and text feature file (20 images, 80 texts)\n"
