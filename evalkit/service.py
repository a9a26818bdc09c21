"""One evaluation, start to finish: connect, run the plan, save the results locally."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .config import Settings
from .pipeline import Reporter, RunOutcome, execute
from .plan import Request, build_plan
from .results import build_summary, local_result_dir, save_results
from .ssh import Connection, resolve_target


@dataclass(frozen=True)
class Report:
    outcome: RunOutcome
    summary: dict
    written: list[Path]
    log_path: Path


def log_path_for(settings: Settings, request: Request, label: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(settings.results_dir) / "logs" / f"{request.dataset}-{request.split}-{label}-{stamp}.log"


def evaluate(settings: Settings, request: Request, reporter: Reporter,
             on_log_opened=lambda path: None) -> Report:
    """Run every step of REQUEST on the server; results land under settings.results_dir."""
    plan = build_plan(settings, request)
    target = resolve_target(settings.host, Path(settings.ssh_config) if settings.ssh_config else None)
    with Connection(target, settings.connect_timeout).open() as connection:
        # connected (host key and auth checked) before any local file is created
        log_path = log_path_for(settings, request, plan.label)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        on_log_opened(log_path)
        with log_path.open("wb") as log:
            outcome = execute(plan, connection, settings, reporter, log)
    summary = build_summary(outcome, request, settings.host, log_path)
    destination = local_result_dir(Path(settings.results_dir), request, plan.label)
    return Report(outcome, summary, save_results(outcome, destination, summary), log_path)
