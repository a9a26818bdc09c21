"""What a run produces step by step, and what the user is told about as it goes (Reporter: the
view implements it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .plan import Plan, Step
from .progress import Event


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
    raw_query_hits: bytes | None = None  # query_hits.json, unchanged, when the run wrote one


class Reporter(Protocol):
    """What a run tells the user about; the view implements it."""

    def step_started(self, step: Step, index: int, count: int) -> None: ...

    def step_event(self, step: Step, event: Event) -> None: ...

    def step_finished(self, step: Step, result: StepResult) -> None: ...

    def note(self, text: str) -> None: ...

    def log_opened(self, path: Path) -> None: ...

    def done(self) -> None:
        """The evaluation ended (either way): stop any live display."""
