"""PURE: split a remote byte stream into log lines and tqdm progress updates, and find the
JSON evalkit's own server-side scripts print.

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
        if rest.strip():
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
