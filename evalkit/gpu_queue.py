"""Several evaluations in one command, handed to GPUs as a work queue: a GPU that frees up
takes the next evaluation (one GPU: one after another). Under a scheduler, up to
slurm.jobs_at_once evaluations are checked, submitted and followed at once.

Each GPU has a lane (gpu_lane.py) and two workers: while one evaluation's GPU steps run, the
next one on that GPU makes its checks, and it starts the moment the GPU is free, while the one
before it finishes its recall on the CPU. (A scheduler places its jobs itself: one worker each.)

Each evaluation is complete and isolated (its own server directory, log and results folder);
one failing never stops the others, it becomes a failed row. They share SSH connections.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from pathlib import Path
from typing import Callable

from . import clock, pipeline
from .comparison import Comparison, ModelResult, build_comparison, with_references
from .config import Settings
from .crashes import keep_traceback, where_it_is
from .epochs import annotate
from .errors import ComparisonIncomplete, EvalkitError, RemoteStepFailed
from .evaluation import Evaluation
from .executors import GPUS_FROM_SCHEDULER
from .executors.base import CancelResult, RunGroup
from .gpu_lane import GpuLane, LaneHold
from .outcome import Reporter
from .store import LocalStore
from .significance import ci95_of, parse_query_hits
from .summary import recalls
from .sweep import Listing
from .unchanged import remember

ReporterFactory = Callable[[Evaluation], Reporter]
FailureHandler = Callable[[Evaluation, EvalkitError], None]
CancelHandler = Callable[[dict[str, CancelResult]], None]
# OpenSSH serves 10 sessions per connection (MaxSessions' default) and a running evaluation holds
# up to 3 (its starter, its thread's SFTP client, a short command such as a cancel)
EVALUATIONS_PER_CONNECTION = 3
WORKERS_PER_GPU = 2  # one running on the GPU, one making its checks meanwhile (gpu_lane.py)


def evaluate_all(settings: Settings, evaluations: list[Evaluation], gpus: list[int],
                 make_reporter: ReporterFactory, on_failure: FailureHandler,
                 on_cancelled: CancelHandler = lambda results: None, listing: Listing = Listing()
                 ) -> list[ModelResult]:
    """Every evaluation's row, in the order given; with several GPUs, that many at a time.
    One connection serves up to EVALUATIONS_PER_CONNECTION workers' evaluations (reconnecting as
    one run does). With the sweep's LISTING, each evaluation that succeeds is remembered
    (unchanged.py) as soon as it has. On Ctrl-C every run still going is cancelled at once
    (ON_CANCELLED hears how) before KeyboardInterrupt goes on."""
    group = pipeline.new_group(settings)
    try:
        return _evaluate_all(settings, evaluations, gpus, make_reporter, on_failure, group, listing)
    except KeyboardInterrupt:
        on_cancelled(pipeline.cancel_group(settings, group))
        raise


def _evaluate_all(settings: Settings, evaluations: list[Evaluation], gpus: list[int], make_reporter: ReporterFactory,
                  on_failure: FailureHandler, group: RunGroup, listing: Listing) -> list[ModelResult]:
    results: dict[int, ModelResult] = {}
    work: queue.Queue = queue.Queue()
    for index in queue_order(settings, evaluations):
        work.put((index, evaluations[index]))
    lanes = workers_of(settings, gpus or [settings.gpu], len(evaluations))
    connections = [_sweep_connection(settings) for _ in range(0, len(lanes), EVALUATIONS_PER_CONNECTION)]
    taking = threading.Lock()  # an evaluation and its lane ticket leave the queue together

    def worker(lane: GpuLane | None, gpu: int, shared: pipeline.Connection | None) -> None:
        # after Ctrl-C no evaluation starts; nor on a GPU an abandoned run may still use
        while not group.is_closed and not (lane is not None and lane.is_closed):
            with taking:
                try:
                    index, evaluation = work.get_nowait()
                except queue.Empty:
                    return
                hold = lane.hold() if lane is not None else None
            on_gpu = dataclasses.replace(settings, gpu=gpu)
            results[index] = evaluate_one(on_gpu, evaluation, make_reporter(evaluation), on_failure, shared, group,
                                          listing, hold)

    if len(lanes) == 1:
        worker(*lanes[0], connections[0])
    else:
        # daemon threads: Ctrl-C ends the command without waiting for them (their runs: cancel_group)
        threads = [threading.Thread(target=worker, args=(*lane, connections[number // EVALUATIONS_PER_CONNECTION]),
                                    daemon=True) for number, lane in enumerate(lanes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)  # short joins keep the main thread responsive to Ctrl-C
    # not on Ctrl-C: closed under the threads still following, their sessions would reconnect
    for shared in connections:
        if shared is not None:
            shared.close()
    for index, evaluation in _left_in(work):  # every GPU closed (LaneHold.keep) before their turn
        results[index] = _not_started(evaluation, lanes, on_failure)
    return [results[index] for index in range(len(evaluations))]


def _left_in(work: queue.Queue) -> list[tuple[int, Evaluation]]:
    left = []
    while not work.empty():
        left.append(work.get_nowait())
    return left


def _not_started(evaluation: Evaluation, lanes: list, on_failure: FailureHandler) -> ModelResult:
    why = "; ".join(sorted({f"GPU {lane.gpu}: {lane.closed_by}" for lane, _ in lanes if lane is not None
                            and lane.closed_by}))
    error = RemoteStepFailed(f"{evaluation.label} was not started: no GPU is free of runs evalkit stopped "
                             f"following ({why})", "evaluate it again once those runs have ended")
    on_failure(evaluation, error)
    now = clock.timestamp()
    return ModelResult(evaluation.label, evaluation.checkpoint, "failed", {}, error=error.message,
                       exit_code=error.exit_code, started_at=now, finished_at=now, **placed(evaluation))


def workers_of(settings: Settings, gpus: list[int], count: int) -> list[tuple[GpuLane | None, int]]:
    """(lane, GPU) of each worker: two per GPU, sharing its lane, when the laptop places the
    evaluations; one per GPU without a lane when a scheduler does, at most slurm.jobs_at_once
    (each makes its checks on the shared login node, and holds SSH sessions while its job runs);
    never more than COUNT."""
    if settings.executor in GPUS_FROM_SCHEDULER:
        return [(None, gpu) for gpu in gpus][:min(count, settings.slurm.jobs_at_once)]
    lanes = [GpuLane(gpu) for gpu in gpus]
    return [(lane, lane.gpu) for _ in range(WORKERS_PER_GPU) for lane in lanes][:count]


def queue_order(settings: Settings, evaluations: list[Evaluation]) -> list[int]:
    """The indexes of EVALUATIONS in the order the workers take them. When a scheduler places the
    jobs, a checkpoint's cells (its datasets and splits) are spread out: the workers' checks at
    once hash different files, and a checkpoint's next cell finds its hash in the server's cache."""
    if settings.executor not in GPUS_FROM_SCHEDULER:
        return list(range(len(evaluations)))
    ranks: dict[str, int] = {}
    rank_of = []
    for evaluation in evaluations:
        rank_of.append(ranks.get(evaluation.checkpoint, 0))
        ranks[evaluation.checkpoint] = rank_of[-1] + 1
    return sorted(range(len(evaluations)), key=lambda index: (rank_of[index], index))


def _sweep_connection(settings: Settings) -> pipeline.Connection | None:
    try:
        return pipeline.sweep_connection(settings)
    except EvalkitError:
        return None  # the host cannot be resolved: each evaluation reports it as its failed row


def evaluate_one(settings: Settings, evaluation: Evaluation, reporter: Reporter, on_failure: FailureHandler,
                 shared: pipeline.Connection | None = None, group: RunGroup | None = None,
                 listing: Listing = Listing(), hold: LaneHold | None = None) -> ModelResult:
    started = clock.timestamp()
    try:
        result = model_result(pipeline.evaluate(settings, evaluation, reporter, shared=shared, group=group,
                                                hold=hold), started)
        remember(settings, evaluation, listing, result)  # a cell of a listed sweep only (unchanged.py)
        return result
    except Exception as exc:  # one model's failure, even a bug, must not stop the others
        error = exc if isinstance(exc, EvalkitError) else EvalkitError(
            f"unexpected error: {type(exc).__name__}: {exc}", f"{where_it_is(keep_traceback())}; please report it")
        if group is None or not group.is_closed:  # after Ctrl-C, cancel_group says what became of each run
            on_failure(evaluation, error)
        return ModelResult(evaluation.label, evaluation.checkpoint, "failed", {}, error=error.message,
                           exit_code=error.exit_code, started_at=started, finished_at=clock.timestamp(),
                           **placed(evaluation))
    finally:
        reporter.done()  # a model run one after another must not leave its live display running


def model_result(report: pipeline.Report, started_at: str | None = None) -> ModelResult:
    plan = report.outcome.plan
    recall = {direction: dataclasses.asdict(value) for direction, value in recalls(report.outcome).items()}
    raw_hits = report.outcome.raw_query_hits
    query_hits = parse_query_hits(raw_hits) if raw_hits else None
    return ModelResult(plan.label, plan.checkpoint, "ok", recall, started_at=started_at,
                       finished_at=clock.timestamp(), server_output_dir=plan.output_dir,
                       checkpoint_chosen_by=report.evaluation.chosen_by,
                       provenance=(report.summary or {}).get("provenance"),
                       warnings=tuple((report.summary or {}).get("warnings") or ()),
                       ci95=ci95_of(query_hits), query_hits=query_hits,
                       run_id=(report.summary or {}).get("run_id"), **placed(report.evaluation))


def placed(evaluation: Evaluation) -> dict:
    """A row's experiment, epoch and step: the evaluation's own."""
    return {"experiment": evaluation.experiment or None, "epoch": evaluation.epoch, "step": evaluation.step}


def compare(store: LocalStore, results: list[ModelResult], dataset: str, split: str,
            save: bool, references: tuple = ()) -> tuple[Comparison, list[Path]]:
    """The comparison document of RESULTS, with the published REFERENCES as rows; with SAVE
    (several models' recall), kept in the store unless every model failed."""
    document = with_references(build_comparison(annotate(results), dataset, split, clock.timestamp()), list(references))
    written = store.save_comparison(document) if save and any(result.ok for result in results) else []
    return document, written


def check_all_succeeded(results: list[ModelResult], what: str = "") -> None:
    """Exit 14 naming each failed row; WHAT: how to count them when RESULTS are the failures only."""
    failures = [result for result in results if not result.ok]
    if failures:
        raise ComparisonIncomplete(
            (f"{len(failures)} {what}: " if what else f"{len(failures)} of {len(results)} models failed: ")
            + "; ".join(f"{r.label} (exit {r.exit_code})" for r in failures),
            "read each model's error above; rerun just those with --model NAME")
