"""One evaluation command, start to finish: connect, check, run the stages, save the results.

Both entry scripts come here: the one-shot run asks for every stage, quick_evaluation.py for one.
Before anything runs, the server's files are inspected (remote/inspect_outputs.py) and outputs.py
decides whether the stage may run: features are reused only when complete and made from the same
checkpoint, and KNN and recall only ever read files of one recorded extraction. Before an
extraction, the checkpoint is loaded on the server and its towers compared with the request.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from . import jobs, outputs, runs
from .config import Settings
from .doctor import PROBE_NAME, preflight_call
from .doctor_service import preflight
from .errors import EvalkitError, OutputsNotReady
from .jobs import RemoteRun
from .outputs import ServerFacts
from .pipeline import (Reporter, RunOutcome, facts_from, facts_printed, fetch_results, helper_names,
                       helper_sources, read_facts, upload_helper)
from .plan import (JOB_RUNNER_NAME, Plan, Request, Step, build_plan, checkpoint_output_dir, inspect_call,
                   inspect_command, resolve_checkpoint, run_dir)
from .runs import RunRecord
from .results import build_summary, local_result_dir, save_results
from .ssh import Connection, PendingCommand, resolve_target


@dataclass(frozen=True)
class Report:
    request: Request        # as run: the checkpoint chosen, extraction skipped when reused
    outcome: RunOutcome
    facts: ServerFacts | None  # the server's files after extraction / KNN, when they ran
    summary: dict | None    # only when recall ran
    written: list[Path]
    log_path: Path


def log_path_for(settings: Settings, request: Request, label: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stages = "" if len(request.stages) == 3 else f"-{'-'.join(request.stages)}"
    name = f"{request.dataset}-{request.split}-{label}{stages}-{stamp}.log"
    return Path(settings.results_dir) / "logs" / name


def evaluate(settings: Settings, request: Request, reporter: Reporter,
             detach: bool = False) -> Report | RunRecord:
    """Run REQUEST's stages on the server; recall results land under settings.results_dir.

    The steps run detached on the server (remote/job.py); with DETACH the run record is
    returned as soon as they started, else they are followed to the end.
    """
    with _connect(settings) as connection:
        # connected (host key and auth checked) before any local file is created.
        # Every remote command waits on a login shell of its own (~/.bashrc, conda init): the
        # run's starter is begun first; it brings evalkit's scripts up to date, and its activated
        # env runs the checks before the run.
        helpers = helper_sources(helper_names(settings, extra=(PROBE_NAME,) if request.runs_extraction else ()))
        starter = jobs.prepare_start(connection, settings, helpers)
        try:
            return _check_start_follow(connection, settings, request, reporter, detach, starter)
        finally:
            starter.abandon()  # when no run was started: the starter sees EOF and ends


def _check_start_follow(connection: Connection, settings: Settings, request: Request, reporter: Reporter,
                        detach: bool, starter: PendingCommand) -> Report | RunRecord:
    checks = _first_checks(settings, request, starter)
    request, facts = _locate(connection, settings, request, reporter, checks.get("inspect"))
    request = _decide(settings, request, facts, reporter)
    if request.runs_extraction:  # before any GPU time
        preflight(connection, settings, request, ran=checks.get("preflight"))
    plan = build_plan(settings, request)
    run_id = runs.new_run_id()
    record = runs.new_record(settings, request, plan, run_id, run_dir(settings, run_id))
    remote = RemoteRun(run_id, record.server_run_dir, plan.steps)
    driver = jobs.start(connection, settings, plan, remote, starter)
    runs.save(record)
    if driver.get("took_over_stale_lock"):
        reporter.note("took over a stale lock on this checkpoint's directory (its run is gone)")
    if detach:
        return record
    return _follow_to_end(connection, record, plan, reporter, facts, doorbell=starter)


def _first_checks(settings: Settings, request: Request, starter: PendingCommand) -> dict:
    """The inspection of --model-path's files and, when it may be extracted, the doctor's cheap
    checks, both at once in the starter's env. Without --model-path the latest extraction is
    looked for first (_locate)."""
    if not request.model_path:
        return {}
    checkpoint = resolve_checkpoint(settings, request.model_path)
    calls = {"inspect": inspect_call(settings, request, checkpoint)}
    if request.runs_extraction:  # the checks count only if the features cannot be reused
        calls["preflight"] = preflight_call(settings, request, checkpoint)
    ran = jobs.run_helpers(starter, calls, timeout=settings.step_timeout)
    # the inspection's command names it in a failure message
    return {**ran, "inspect": (ran["inspect"], inspect_command(settings, request, checkpoint))}


def attach(record: RunRecord, reporter: Reporter) -> Report:
    """Follow a run started earlier (perhaps with --detach) to its end, exactly as if attached."""
    settings = record.settings
    with _connect(settings) as connection:
        return _follow_to_end(connection, record, build_plan(settings, record.request), reporter)


def cancel(record: RunRecord, grace: float = 10.0) -> dict:
    with _connect(record.settings) as connection:
        upload_helper(connection, record.settings, JOB_RUNNER_NAME)  # only job.py answers these
        return jobs.cancel(connection, record.settings, _remote(record), grace)


def state(record: RunRecord) -> dict:
    with _connect(record.settings) as connection:
        upload_helper(connection, record.settings, JOB_RUNNER_NAME)
        return jobs.job_state(connection, record.settings, _remote(record))


def logs(record: RunRecord, follow: bool) -> Iterator[str]:
    """Each step's output as text, step by step; with FOLLOW until the run ends."""
    settings = record.settings
    with _connect(settings) as connection:
        yield from jobs.read_logs(connection, settings, _remote(record), follow)


def _remote(record: RunRecord) -> RemoteRun:
    return RemoteRun(record.run_id, record.server_run_dir, build_plan(record.settings, record.request).steps)


def _connect(settings: Settings) -> Connection:
    target = resolve_target(settings.host, Path(settings.ssh_config) if settings.ssh_config else None)
    return Connection(target, settings.connect_timeout).open()


def _follow_to_end(connection: Connection, record: RunRecord, plan: Plan, reporter: Reporter,
                   facts: ServerFacts | None = None, doorbell: PendingCommand | None = None) -> Report:
    settings, request = record.settings, record.request
    log_path = log_path_for(settings, request, plan.label)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    reporter.log_opened(log_path)
    outcome = RunOutcome(plan)
    with log_path.open("wb") as log:
        follower = jobs.Follower(connection, settings, RemoteRun(record.run_id, record.server_run_dir, plan.steps),
                                 reporter, log, reconnect_for=settings.reconnect_timeout, doorbell=doorbell)
        recorder = _OutputRecorder(connection, settings, request, plan, follower, facts)
        try:
            follower.follow(outcome, list(plan.steps), recorder.step_done)
        except KeyboardInterrupt:
            _cancel_after_interrupt(connection, record, reporter)
            raise
        if plan.result_files:
            follower.safely(lambda: fetch_results(plan, connection, outcome))
    facts = recorder.facts
    if "recall" not in request.stages:
        return Report(request, outcome, facts, None, [], log_path)
    summary = build_summary(outcome, request, settings.host, log_path)
    destination = local_result_dir(Path(settings.results_dir), request, plan.label)
    return Report(request, outcome, facts, summary, save_results(outcome, destination, summary), log_path)


def _cancel_after_interrupt(connection: Connection, record: RunRecord, reporter: Reporter) -> None:
    """Ctrl-C while attached: nothing of the run may go on holding the server's GPU."""
    try:
        result = jobs.cancel(connection, record.settings, _remote(record))
    except EvalkitError as error:
        reporter.note(f"could not cancel run {record.run_id} ({error.message}): "
                      f"python -m evalkit cancel {record.run_id}")
        return
    reporter.note(describe_cancel(record.run_id, result))


def describe_cancel(run_id: str, result: dict) -> str:
    if result.get("remaining"):
        return (f"run {run_id}: processes {result['remaining']} survived SIGKILL on the server "
                f"(GPU: {result.get('gpu_processes') or 'none'})")
    gpu = "; no GPU process of it either" if not result.get("gpu_processes") else ""
    return f"cancelled run {run_id}: no process of it remains on the server{gpu}"


class _OutputRecorder:
    """Writes the manifest once the features are verified, and the KNN record once the
    predictions are: from the facts the check steps printed, with no further remote command."""

    def __init__(self, connection: Connection, settings: Settings, request: Request, plan: Plan,
                 follower: jobs.Follower, facts: ServerFacts | None) -> None:
        self.connection, self.settings, self.request, self.plan = connection, settings, request, plan
        self.follower = follower
        self.facts = facts  # before the run; after each check step, what it found
        self.manifest: dict | None = None  # the one this run wrote, once it has

    def step_done(self, step: Step) -> None:
        if step.name == "verify":
            self.follower.safely(lambda: self._record_extraction(step))
        elif step.name == "check_predictions":
            self.follower.safely(lambda: self._record_knn(step))

    def _record_extraction(self, verify: Step) -> None:
        facts = self._printed_by(verify)
        command = self.plan.steps_of("extract")[0].command
        self.manifest = outputs.new_manifest(self.settings, self.request, facts, command, _now())
        self.connection.write_bytes(self.plan.manifest, outputs.manifest_bytes(self.manifest))
        self.facts = dataclasses.replace(facts, manifest=self.manifest)

    def _record_knn(self, check: Step) -> None:
        facts = self._printed_by(check)
        # this run's manifest, when it extracted: the check may have run before it was written
        facts = dataclasses.replace(facts, manifest=self.manifest or facts.manifest)
        commands = {direction: step.command for step in self.plan.steps_of("knn") for direction in step.directions}
        manifest = outputs.with_knn(facts, commands, _now())
        self.connection.write_bytes(self.plan.manifest, outputs.manifest_bytes(manifest))
        self.facts = dataclasses.replace(facts, manifest=manifest)

    def _printed_by(self, step: Step) -> ServerFacts:
        return facts_printed(self.connection.read_bytes(self.follower.output_path(step)))


def _inspect(connection: Connection, settings: Settings, request: Request) -> ServerFacts:
    checkpoint = resolve_checkpoint(settings, request.model_path) if request.model_path else None
    return read_facts(connection, inspect_command(settings, request, checkpoint), settings)


def _locate(connection: Connection, settings: Settings, request: Request, reporter: Reporter,
            inspected: tuple | None = None) -> tuple[Request, ServerFacts]:
    """The server's facts for REQUEST (INSPECTED: already run, with its command); without
    --model-path, for the most recent extraction."""
    facts = facts_from(*inspected) if inspected else _inspect(connection, settings, request)
    outputs.check_dataset(facts, request)
    if request.model_path:
        return request, facts
    if not facts.out_dir or not facts.manifest:
        raise OutputsNotReady(
            f"no extraction found for dataset {request.dataset!r}, split {request.split!r} "
            f"under {settings.output_root}", "run --step extract --model-path CHECKPOINT first")
    manifest = facts.manifest
    chosen = dataclasses.replace(request, model_path=manifest["checkpoint"]["path"],
                                 vision_model=manifest["vision_model"],
                                 text_model=manifest["text_model"])
    reporter.note(f"using the most recent extraction: {chosen.model_path} (extracted "
                  f"{manifest.get('extracted_at')}); pass --model-path to choose another")
    facts = _inspect(connection, settings, chosen)
    expected_dir = checkpoint_output_dir(settings, chosen.dataset, chosen.split, chosen.model_path)
    if facts.out_dir != expected_dir:  # a manifest copied by hand into another directory
        raise OutputsNotReady(f"the manifest in {facts.out_dir} names a checkpoint whose outputs "
                              f"belong in {expected_dir}", "run --step extract --model-path again")
    return chosen, facts


def _decide(settings: Settings, request: Request, facts: ServerFacts, reporter: Reporter) -> Request:
    """Check the stage's inputs; skip extraction when complete features can be reused."""
    if "extract" in request.stages and not request.skip_extraction:
        outputs.check_checkpoint(facts)
        refusal = outputs.reuse_refusal(settings, request, facts)
        if refusal is None and not request.force_extraction:
            reporter.note(f"reusing the features extracted {facts.manifest['extracted_at']} for this "
                          f"checkpoint ({facts.image_count} images, {facts.text_count} texts, "
                          "checkpoint unchanged); --force-extraction extracts again")
            return _reuse_predictions(settings, dataclasses.replace(request, skip_extraction=True), facts,
                                      reporter)
        if facts.manifest and refusal:
            reporter.note(f"extracting again: {refusal}")
        return request
    hint = "drop --skip-extraction to extract first" if "extract" in request.stages else None
    outputs.check_features(facts, fix=hint)
    if "recall" in request.stages and "knn" not in request.stages:
        outputs.check_predictions(facts, request.directions)
    return request


def _reuse_predictions(settings: Settings, request: Request, facts: ServerFacts, reporter: Reporter) -> Request:
    """With reused features, KNN is skipped too when its recorded commands are the ones planned."""
    if "knn" not in request.stages:
        return request
    planned = {direction: step.command for step in build_plan(settings, request).steps_of("knn")
               for direction in step.directions}
    if not outputs.predictions_reusable(facts, planned):
        return request
    reporter.note("reusing the KNN predictions made from these features by the same commands")
    return dataclasses.replace(request, stages=tuple(stage for stage in request.stages if stage != "knn"))


def _now() -> str:
    # microseconds: "most recent extraction" compares these strings
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
