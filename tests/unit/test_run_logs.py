"""`logs` from one answer of the server (run_logs.logs_text): each started step's heading, its
stdout then stderr without evalkit's marked lines, how it exited; up to a running or failed step.
`logs --follow` (run_logs.EventsText) says the same of the run's events, however they are cut."""
from __future__ import annotations

import pytest

from evalkit.errors import DriverGone, RemoteStepFailed
from evalkit.events import Beat, Output, RunEnded, StepEnded, StepStarted
from evalkit.executors.base import RemoteRun
from evalkit.plan import Plan, Step
from evalkit.run_logs import FILE_SUFFIXES, EventsText, logs_text

STEPS = [Step("extract", "extract features", "extract", "x"), Step("knn", "KNN search", "knn", "k"),
         Step("recall", "recall", "recall", "r")]


def _done(out: str, err: str = "", code: int = 0) -> dict:
    return {"out": out, "err": err, "exit": f"{code} 1.5\n"}


@pytest.mark.parametrize("answered, expected", [
    ([], ""),
    ([_done("features\n", "warn\n"), _done("k\n"), _done("r\n")],
     "### step extract: extract features\nfeatures\nwarn\n### step extract exited 0\n"
     "### step knn: KNN search\nk\n### step knn exited 0\n### step recall: recall\nr\n### step recall exited 0\n"),
    ([_done("a\n"), {"out": "50%|#####", "err": None, "exit": None}],
     "### step extract: extract features\na\n### step extract exited 0\n### step knn: KNN search\n50%|#####"),
    ([_done("", "Traceback\n", code=1), _done("never\n")],
     "### step extract: extract features\nTraceback\n### step extract exited 1\n"),
    ([_done('EVALKIT-FACTS {"a": 1}\nkept\n', "EVALKIT-FACTS")],
     "### step extract: extract features\nkept\n### step extract exited 0\n"),
    ([_done("bytes \udcff kept\n")], "### step extract: extract features\nbytes \ufffd kept\n### step extract exited 0\n"),
], ids=["nothing started", "three steps ended", "one running", "one failed: the rest never ran",
        "marked lines are the laptop's", "undecodable bytes replaced, as the follower does"])
def test_logs_text(answered, expected):
    assert "".join(logs_text(STEPS, answered)) == expected


# --- `logs --follow`: the same words from the run's events (run_logs.EventsText) ----------------

def _followed(answered: list[dict], piece: int, status: dict | None = None) -> str:
    """What `logs -f` prints of a run whose step files are ANSWERED, its events sent as job.py
    sends those of a run that has ended: each stream's bytes in PIECE-byte events, stdout first."""
    said = EventsText(RUN)
    events: list = []
    for index, files in enumerate(answered):
        events.append(StepStarted(index))
        for stream, suffix in FILE_SUFFIXES.items():
            data = (files.get(suffix) or "").encode("utf-8", "surrogateescape")
            events += [Output(index, stream, at, data[at:at + piece]) for at in range(0, len(data), piece)]
        if files.get("exit"):
            events.append(StepEnded(index, int(files["exit"].split()[0]), 1.5))
    events.append(RunEnded(status or {"state": "succeeded"}))
    text = ""
    for event in events:
        text += said.text_of(event)
        if said.is_done:
            break
    return text


RUN = RemoteRun("20261207-000000-abcdef", "/srv/.evalkit/runs/20261207-000000-abcdef",
                Plan("team", "/ckpt/epoch1.pt", "/out", None, tuple(STEPS), {}, None))
ENDED_RUNS = [
    [],
    [_done("features\n", "warn\n"), _done("k\n"), _done("r\n")],
    [_done("", "Traceback\n", code=1), _done("never\n")],
    [_done('EVALKIT-FACTS {"a": 1}\nkept\n', "EVALKIT-FACTS")],
    [_done("bytes \udcff kept\n")],
    [_done("中文 ✓ 50%|#####\r60%|######", "EVALKIT-PROGRESS x\nwarn\n"), _done("k")],
]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1 << 16])
@pytest.mark.parametrize("answered", ENDED_RUNS, ids=["nothing started", "three steps ended", "one failed",
                                                      "marked lines", "undecodable bytes",
                                                      "characters and marked lines cut between events"])
def test_a_followed_run_that_ended_says_what_logs_says_at_once(answered, piece):
    assert _followed(answered, piece) == "".join(logs_text(STEPS, answered))


def test_a_followed_step_shows_each_stream_as_it_comes_and_its_end_after_the_last_byte():
    said = EventsText(RUN)
    shown = [said.text_of(event) for event in [
        StepStarted(0), Output(0, "stdout", 0, b"50%|###"), Output(0, "stderr", 0, b"warn\n"),
        Output(0, "stdout", 7, b"##\n\xe4\xb8"), Beat(True), Output(0, "stdout", 12, b"\xad\n"),
        Output(0, "stdout", 14, b"EVALKIT-FACTS {}\n"), StepEnded(0, 0, 2.0), StepStarted(1)]]
    assert shown == ["### step extract: extract features\n", "50%|###", "warn\n", "##\n", "", "中\n", "",
                     "### step extract exited 0\n", "### step knn: KNN search\n"]
    assert not said.is_done


@pytest.mark.parametrize("status, error, says", [
    ({"state": "cancelled"}, RemoteStepFailed, "was cancelled on the server"),
    ({"state": "crashed", "error": "MemoryError"}, DriverGone, "crashed on the server during step 'knn': MemoryError"),
])
def test_a_run_that_ended_in_the_middle_of_a_step_says_how_as_attach_does(status, error, says):
    running = [_done("a\n"), {"out": "50%", "err": None, "exit": None}]
    with pytest.raises(error, match=says):
        _followed(running, 4, status)


def test_a_run_that_ended_between_steps_ends_its_logs_quietly():
    assert _followed([_done("a\n")], 4, {"state": "cancelled"}) == \
        "### step extract: extract features\na\n### step extract exited 0\n"
