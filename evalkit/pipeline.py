"""The evaluation steps over a Connection: run each planned command, then fetch the results.

A run succeeds only when every step exits 0 and every result JSON says `success: true`
(upstream evaluation.py exits 0 even when it fails).
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Protocol

from .config import Settings
from .errors import EvaluationFailed, RemoteStepFailed
from .outputs import ServerFacts
from .plan import CPU_LAUNCHER_NAME, FAST_KNN_NAME, INSPECTOR_NAME, JOB_RUNNER_NAME, Plan, Step, helper_path
from .progress import Event, LogLine, ProgressUpdate, last_marked_json
from .ssh import Connection

TAIL_LINES = 30
FACTS_MARKER = b"EVALKIT-FACTS "  # remote/inspect_outputs.py prints its JSON after this


class Reporter(Protocol):
    """What the pipeline tells the user about; the view implements it."""

    def step_started(self, step: Step, index: int, count: int) -> None: ...

    def step_event(self, step: Step, event: Event) -> None: ...

    def step_finished(self, step: Step, result: "StepResult") -> None: ...

    def note(self, text: str) -> None: ...

    def log_opened(self, path: Path) -> None: ...

    def done(self) -> None:
        """The evaluation ended (either way): stop any live display."""


@dataclass(frozen=True)
class StepResult:
    name: str
    title: str
    command: str
    exit_code: int
    seconds: float
    started_at: str
    finished_at: str


@dataclass
class RunOutcome:
    plan: Plan
    steps: list[StepResult] = field(default_factory=list)
    raw_results: dict[str, bytes] = field(default_factory=dict)  # direction -> the JSON, unchanged
    results: dict[str, dict] = field(default_factory=dict)       # direction -> parsed JSON


def helper_source(name: str) -> bytes:
    return resources.files("evalkit.remote").joinpath(name).read_bytes()


def helper_sources(names: list[str]) -> dict[str, bytes]:
    return {name: helper_source(name) for name in names}


def helper_names(settings: Settings, extra: tuple[str, ...] = ()) -> list[str]:
    """evalkit's own server-side scripts a run needs: the read-only inspector, the job runner,
    the CPU launcher (--device cpu), the fast KNN (--knn fast), EXTRA."""
    names = [INSPECTOR_NAME, JOB_RUNNER_NAME, *extra]
    if settings.device == "cpu":
        names.append(CPU_LAUNCHER_NAME)
    if settings.knn == "fast":
        names.append(FAST_KNN_NAME)
    return names


def upload_helpers(connection: Connection, settings: Settings, extra: tuple[str, ...] = ()) -> None:
    """helper_names' scripts, each uploaded over SFTP (the starter's bootstrap sends only changed
    ones: see jobs.prepare_start)."""
    for name in helper_names(settings, extra):
        upload_helper(connection, settings, name)


def upload_helper(connection: Connection, settings: Settings, name: str) -> None:
    """One of evalkit/remote/*.py, to REMOTE_OUTPUT_DIR/.evalkit/ (atomically)."""
    connection.write_bytes(helper_path(settings, name), helper_source(name))


def read_facts(connection: Connection, command: str, settings: Settings) -> ServerFacts:
    """Run the inspector; its stdout is one JSON object (see remote/inspect_outputs.py)."""
    return facts_from(connection.capture(command, timeout=settings.step_timeout), command)


def facts_from(ran: tuple[int, bytes, bytes], command: str) -> ServerFacts:
    """The inspector's facts from (exit status, stdout, stderr) of COMMAND."""
    exit_code, stdout, stderr = ran
    if exit_code != 0:
        tail = stderr.decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
        raise RemoteStepFailed(
            f"checking the server's files failed with status {exit_code}\ncommand: {command}\n"
            "its output:\n" + "\n".join(f"  {line}" for line in tail),
            "check the `activate` and `python` settings: the env must start in a login shell")
    return facts_printed(stdout)


def facts_printed(stdout: bytes) -> ServerFacts:
    """The facts in the inspector's output (a check step's, too)."""
    try:
        return ServerFacts.from_dict(last_marked_json(stdout, FACTS_MARKER))
    except (KeyError, TypeError) as exc:  # no marked line (None), or not the facts we expect
        raise RemoteStepFailed(f"the server's file check printed no facts: {stdout[-300:]!r}",
                               "rerun with --debug and report it") from exc


def remember(tail: collections.deque, event: Event) -> None:
    if isinstance(event, LogLine):
        tail.append(event.text)
    elif isinstance(event, ProgressUpdate):
        total = f"/{event.total:g}" if event.total is not None else ""
        tail.append(f"{event.description + ': ' if event.description else ''}{event.n:g}{total}")


def fetch_results(plan: Plan, connection: Connection, outcome: RunOutcome) -> None:
    """Read each result JSON from the server; raise EvaluationFailed unless it says success."""
    for direction, path in plan.result_files.items():
        try:
            raw = connection.read_bytes(path)
        except FileNotFoundError as exc:
            raise EvaluationFailed(f"the {direction} evaluation wrote no result file {path}",
                                   "read the step output above") from exc
        parsed = parse_result(raw, path, direction)
        outcome.raw_results[direction] = raw
        outcome.results[direction] = parsed


def parse_result(raw: bytes, path: str, direction: str) -> dict:
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise EvaluationFailed(f"{path} is not valid JSON", "rerun the evaluation") from exc
    if not isinstance(parsed, dict) or parsed.get("success") is not True:
        reason = parsed.get("errorMsg", "no reason given") if isinstance(parsed, dict) else "not an object"
        raise EvaluationFailed(f"upstream {direction} evaluation reported failure: {reason} ({path})",
                               "the predictions do not match the annotations: check the dataset "
                               "split, top_k (upstream evaluation requires 10) and the step output")
    return parsed


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
