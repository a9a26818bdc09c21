"""PURE: split a remote byte stream into log lines and tqdm progress updates, name each bar by
the upstream loop it counts, and find (or drop) the JSON evalkit's own server-side scripts print.

tqdm redraws its bar with carriage returns on stderr; everything else is ordinary lines.
"""
from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Iterator, Union

_NUMBER = r"\d+(?:\.\d+)?[kMGTP]?"
_TQDM = re.compile(
    r"^\s*(?:(?P<desc>.*?):\s+)?"
    r"(?:(?P<percent>\d{1,3})%\|[^|]*\|\s*)?"
    rf"(?P<n>{_NUMBER})(?:/(?P<total>{_NUMBER})|(?P<unit>[A-Za-z]+))?\s+"
    r"\[(?P<elapsed>[\d:]+)(?:<(?P<remaining>[\d:?]+))?,\s*(?P<rate>[^\]]*)\]"
)
_SCALE = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
# evalkit's server scripts mark their one line for the laptop: EVALKIT-FACTS {...}, EVALKIT-JOB
# {...}, EVALKIT-DOCTOR {...}, EVALKIT-ACTIVATED. Protocol, not output: never shown to a person.
PROTOCOL_PREFIX = "EVALKIT-"
_PROTOCOL_LINE = re.compile(r"EVALKIT-[A-Z]+(?:\s|$)")
# Upstream's tqdm loops, in the order each cn_clip/eval script runs them. A bar is named by its
# step and this table, never by the line printed last: stdout and stderr are separate files on
# the server, so which of a print and a redraw came first is lost.
UPSTREAM_LOOPS = {
    "extract": ("texts", "images"),                  # extract_features.py: texts, then images
    "knn_t2i": ("loading image features", "texts"),  # make_topk_predictions.py
    "knn_i2t": ("loading text features", "images"),  # make_topk_predictions_tr.py
    "transform": ("annotations",),                   # transform_ir_annotation_to_tr.py
}


@dataclass(frozen=True)
class LogLine:
    text: str
    stream: str  # "stdout" or "stderr"


@dataclass(frozen=True)
class ProgressUpdate:
    """One redraw of a tqdm bar."""

    n: float
    total: float | None
    description: str
    rate: str


Event = Union[LogLine, ProgressUpdate]


def parse_tqdm(text: str) -> ProgressUpdate | None:
    """The progress a tqdm line shows, or None when the line is not (only) a tqdm bar."""
    update, rest = _split_tqdm(text)
    return None if rest.strip() else update


def _split_tqdm(text: str) -> tuple[ProgressUpdate | None, str]:
    """(the tqdm bar a line starts with, the text glued after it: e.g. a warning on stderr)."""
    match = _TQDM.match(text)
    return (_update(match), text[match.end():]) if match else (None, text)


def _update(match: re.Match) -> ProgressUpdate:
    total = match["total"]
    return ProgressUpdate(n=_number(match["n"]), total=_number(total) if total else None,
                          description=(match["desc"] or "").strip(), rate=match["rate"].strip())


def _number(text: str) -> float:
    unit = text[-1] if text[-1] in _SCALE and not text[-1].isdigit() else ""
    return float(text[: len(text) - len(unit)]) * _SCALE[unit]


class StreamSplitter:
    """Feed raw chunks of one stream; get LogLines and ProgressUpdates in order.

    Decodes UTF-8 incrementally, so a Chinese character split across two chunks survives.
    """

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, chunk: bytes) -> Iterator[Event]:
        self._pending += self._decoder.decode(chunk)
        while True:
            cut = _first_break(self._pending)
            if cut < 0:
                return
            piece, self._pending = self._pending[:cut], self._pending[cut + 1:]
            yield from self._classify(piece)

    def close(self) -> Iterator[Event]:
        self._pending += self._decoder.decode(b"", final=True)
        piece, self._pending = self._pending, ""
        if piece:
            yield from self._classify(piece)

    def _classify(self, piece: str) -> Iterator[Event]:
        update, rest = _split_tqdm(piece)
        if update is not None:
            yield update
        if rest.strip() and not is_protocol_line(rest):
            yield LogLine(rest.rstrip(), self.stream)


def _first_break(text: str) -> int:
    positions = [i for i in (text.find("\r"), text.find("\n")) if i >= 0]
    return min(positions) if positions else -1


def last_marked_json(stdout: bytes, marker: bytes) -> dict | None:
    """The JSON object on the last stdout line starting with MARKER, or None.

    evalkit's helpers mark their one line of facts, so whatever the env's activation prints
    around it is ignored.
    """
    lines = [line for line in stdout.splitlines() if line.startswith(marker)]
    if not lines:
        return None
    try:
        found = json.loads(lines[-1][len(marker):])
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def is_protocol_line(text: str) -> bool:
    """Whether TEXT is one of evalkit's marked lines (EVALKIT-FACTS {...}): for the laptop only."""
    return bool(_PROTOCOL_LINE.match(text.lstrip()))


class ProtocolFilter:
    """Feed the text of one stream in chunks; get it back without evalkit's marked lines.

    A partial last line is held back only while it could still become a marked line, so a tqdm
    redraw (no newline) passes at once.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._at_line_start = True

    def feed(self, text: str) -> str:
        lines = (self._pending + text).split("\n")
        self._pending, kept = lines.pop(), []
        for line in lines:
            if not (self._at_line_start and is_protocol_line(line)):
                kept.append(line + "\n")
            self._at_line_start = True
        if self._pending and not (self._at_line_start and _may_become_protocol(self._pending)):
            kept.append(self._pending)
            self._pending, self._at_line_start = "", False
        return "".join(kept)

    def close(self) -> str:
        rest, self._pending = self._pending, ""
        return "" if is_protocol_line(rest) else rest


def _may_become_protocol(partial: str) -> bool:
    start = partial.lstrip()
    return PROTOCOL_PREFIX.startswith(start) or is_protocol_line(start) or (
        start.startswith(PROTOCOL_PREFIX) and start[len(PROTOCOL_PREFIX):].isupper())


@dataclass(frozen=True)
class Bar:
    """What a step's progress row shows: which of its tqdm loops runs, named, and how far."""

    loop: int     # 0: the step's first tqdm loop
    phase: str    # what that loop goes over ("texts"), or "" when unknown
    n: float
    total: float | None


class StepBars:
    """One step's ProgressUpdates as Bars: a loop starts when the count goes back, or the total
    or the description changes."""

    def __init__(self, step_name: str) -> None:
        self.step_name = step_name
        self._loop, self._last = -1, None

    def update(self, update: ProgressUpdate) -> Bar:
        if self._last is None or _starts_a_loop(self._last, update):
            self._loop += 1
        self._last = update
        return Bar(self._loop, update.description or loop_phase(self.step_name, self._loop), update.n, update.total)


def _starts_a_loop(last: ProgressUpdate, update: ProgressUpdate) -> bool:
    return update.n < last.n or update.total != last.total or update.description != last.description


def loop_phase(step_name: str, loop: int) -> str:
    """What upstream's LOOP-th tqdm loop of STEP_NAME goes over; "" for a loop not in the table."""
    loops = UPSTREAM_LOOPS.get(step_name, ())
    return loops[loop] if 0 <= loop < len(loops) else ""
