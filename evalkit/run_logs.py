"""`logs` of a run, without --follow: every step's output in one ask to the server (the
executor's step_logs: remote/job.py logs), shown as the follower shows it (follow.read_logs), so a
far server costs one round trip, not a dozen SFTP requests per step."""
from __future__ import annotations

from typing import Iterator

from .follow import STREAMS
from .plan import Step
from .progress import ProtocolFilter


def logs_text(steps: tuple[Step, ...] | list[Step], answered: list[dict]) -> Iterator[str]:
    """ANSWERED: each started step's files ({"out", "err", "exit"}: text, or None), in order.
    Each step's heading, its stdout then stderr without evalkit's marked lines, and how it
    exited; up to the first step still running or failed."""
    for step, files in zip(steps, answered):
        yield f"### step {step.name}: {step.title}\n"
        filters = {stream: ProtocolFilter() for stream in STREAMS}
        for stream, suffix in STREAMS.items():
            yield filters[stream].feed(_as_read(files.get(suffix)))
        if not (files.get("exit") or "").split():
            return  # running: what it printed so far
        yield "".join(f.close() for f in filters.values())
        code = int(files["exit"].split()[0])
        yield f"### step {step.name} exited {code}\n"
        if code != 0:
            return


def _as_read(text: str | None) -> str:
    """The file's bytes (sent as text with surrogates) as follow.read_logs decodes them."""
    return (text or "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
