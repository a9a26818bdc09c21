"""The run's event stream, as the laptop reads it: remote/run_events.py (stream_events, run by
job.py) pushes one `EVALKIT-EVENT {json}` line per event while it follows the run's files on the
server; this turns those lines back into events, drops what the laptop already has (after a
reconnect the server starts again from the laptop's Position), and builds the laptop's requests on
the same channel.

Pure: no I/O, no clock.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Union

MARKER = b"EVALKIT-EVENT "
STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class StepStarted:
    step: int


@dataclass(frozen=True)
class Output:
    step: int
    stream: str
    at: int      # the byte offset of DATA in the step's file for STREAM
    data: bytes


@dataclass(frozen=True)
class StepEnded:
    step: int
    code: int
    seconds: float | None  # as the driver measured it (None from an older driver)


@dataclass(frozen=True)
class RunEnded:
    status: dict  # status.json


@dataclass(frozen=True)
class Beat:
    alive: bool  # whether the run's driver lives (remote/run_processes.py is_alive)


@dataclass(frozen=True)
class Wrote:
    path: str
    error: str | None = None
    errno: int | None = None


@dataclass(frozen=True)
class Bundle:
    files: dict[str, tuple[int, bytes] | None]  # path -> (mtime, content), None when unreadable


Event = Union[StepStarted, Output, StepEnded, RunEnded, Beat, Wrote, Bundle]


class StreamBroken(ValueError):
    """A marked line that is no event: the stream is cut (the server's end killed mid-line)."""


def decode(line: bytes) -> Event | None:
    """The event on LINE (without its newline); None for a line that is not one (a login
    shell's chatter). StreamBroken for a marked line that does not parse."""
    if not line.startswith(MARKER):
        return None
    try:
        found = json.loads(line[len(MARKER):])
        return _event(found)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise StreamBroken(f"an event line did not parse ({exc}): {line[:80]!r}") from exc


def _event(found: dict) -> Event | None:
    kind = found["e"]
    if kind == "started":
        return StepStarted(int(found["step"]))
    if kind == "output":
        if found["stream"] not in STREAMS:
            raise ValueError(f"no stream {found['stream']!r}")
        return Output(int(found["step"]), found["stream"], int(found["at"]), base64.b64decode(found["b64"]))
    if kind == "ended":
        seconds = found.get("seconds")
        return StepEnded(int(found["step"]), int(found["code"]), float(seconds) if seconds is not None else None)
    if kind == "end":
        return RunEnded(dict(found["status"]))
    if kind == "beat":
        return Beat(bool(found["alive"]))
    if kind == "wrote":
        return Wrote(found["path"], found.get("error"), found.get("errno"))
    if kind == "bundle":
        return Bundle({path: (int(got["mtime"]), base64.b64decode(got["b64"])) if got else None
                       for path, got in found["files"].items()})
    return None  # a kind from a newer server: nothing this laptop needs


class Lines:
    """Bytes from the channel in, complete lines out: a line cut between two reads waits for its end."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        return lines

    def drop(self) -> None:
        """The channel is gone: its unfinished line never will be."""
        self._partial = b""


@dataclass
class Position:
    """Where the laptop is in the run: the step it follows, whether it saw that step start, and
    the bytes of each stream of it it has. accept() keeps it, and drops what it has already."""

    step: int = 0
    started: bool = False
    offsets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))

    def as_argument(self) -> str:
        """`job.py events --from`'s value: the stream starts again right here."""
        return f"{self.step},{self.offsets['stdout']},{self.offsets['stderr']}"

    def accept(self, event: Event) -> Event | None:
        """EVENT, trimmed to what the laptop lacks, with the position moved past it; None when
        the laptop has all of it already (a stream resumed from an older position)."""
        if isinstance(event, StepStarted):
            if event.step != self.step or self.started:
                return None
            self.started = True
        elif isinstance(event, Output):
            have = self.offsets[event.stream]
            if event.step != self.step or event.at + len(event.data) <= have:
                return None
            if event.at > have:
                raise StreamBroken(f"step {event.step}'s {event.stream} skipped bytes {have} to {event.at}")
            event = Output(event.step, event.stream, have, event.data[have - event.at:])
            self.offsets[event.stream] += len(event.data)
        elif isinstance(event, StepEnded):
            if event.step != self.step:
                return None
            self.step, self.started, self.offsets = self.step + 1, False, dict.fromkeys(STREAMS, 0)
        return event


def write_request(path: str, data: bytes, mode: int = 0o644) -> bytes:
    """Ask the server to write DATA (UTF-8 text) to PATH atomically, its folders made; answered by Wrote."""
    return _request({"write": {"path": path, "data": data.decode("utf-8"), "mode": mode}})


def collect_request(paths: list[str]) -> bytes:
    """Ask the server for PATHS' contents and times, in one answer (Bundle)."""
    return _request({"collect": paths})


def _request(message: dict) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
