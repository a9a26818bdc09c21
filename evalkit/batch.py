"""Several models in one command: one after another, or concurrently with one GPU slot each.

Each model is a complete, isolated evaluation (its own connection, server directory, log and
results folder); one failing never stops the others, it becomes a failed row.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable

from . import service
from .comparison import ModelResult, now_utc
from .config import Settings
from .errors import EvalkitError
from .pipeline import Reporter
from .plan import Request, checkpoint_label, resolve_checkpoint
from .results import recalls

ReporterFactory = Callable[[Request], Reporter]
FailureHandler = Callable[[Request, EvalkitError], None]


def evaluate_many(settings: Settings, requests: list[Request], slots: list[int],
                  make_reporter: ReporterFactory, on_failure: FailureHandler) -> list[ModelResult]:
    """Evaluate every request; with several slots (GPU indices), that many at a time."""
    results: dict[int, ModelResult] = {}
    work: queue.Queue = queue.Queue()
    for index, request in enumerate(requests):
        work.put((index, request))

    def worker(gpu: int) -> None:
        while True:
            try:
                index, request = work.get_nowait()
            except queue.Empty:
                return
            slot_settings = dataclasses.replace(settings, gpu=gpu)
            results[index] = evaluate_one(slot_settings, request, make_reporter(request), on_failure)

    if len(slots) <= 1:
        worker(slots[0] if slots else settings.gpu)
    else:
        # daemon threads: Ctrl-C ends the command without waiting for them
        threads = [threading.Thread(target=worker, args=(gpu,), daemon=True) for gpu in slots]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)  # short joins keep the main thread responsive to Ctrl-C
    return [results[index] for index in range(len(requests))]


def evaluate_one(settings: Settings, request: Request, reporter: Reporter,
                 on_failure: FailureHandler) -> ModelResult:
    started = now_utc()
    try:
        report = service.evaluate(settings, request, reporter)
    except Exception as exc:  # one model's failure, even a bug, must not stop the others
        error = exc if isinstance(exc, EvalkitError) else EvalkitError(
            f"unexpected error: {type(exc).__name__}: {exc}", "rerun this model alone with --debug and report it")
        on_failure(request, error)
        checkpoint = resolve_checkpoint(settings, request.model_path) if request.model_path else ""
        return ModelResult(request.label or checkpoint_label(checkpoint), checkpoint, "failed", {},
                           error=error.message, exit_code=error.exit_code, started_at=started,
                           finished_at=now_utc())
    finally:
        reporter.done()  # a model run one after another must not leave its live display running
    return model_result(report, started)


def model_result(report: service.Report, started_at: str | None = None) -> ModelResult:
    plan = report.outcome.plan
    recall = {direction: dataclasses.asdict(value) for direction, value in recalls(report.outcome).items()}
    return ModelResult(plan.label, plan.checkpoint, "ok", recall, started_at=started_at,
                       finished_at=now_utc(), server_output_dir=plan.output_dir)
