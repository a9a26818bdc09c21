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
from typing import BinaryIO

from . import outputs
from .config import Settings
from .doctor_service import preflight
from .errors import OutputsNotReady
from .outputs import ServerFacts
from .pipeline import Reporter, RunOutcome, fetch_results, read_facts, run_steps, upload_helpers
from .plan import Plan, Request, build_plan, checkpoint_output_dir, inspect_command, resolve_checkpoint
from .results import build_summary, local_result_dir, save_results
from .ssh import Connection, resolve_target


@dataclass(frozen=True)
class Report:
    request: Request        # as run: the checkpoint chosen, extraction skipped when reused
    outcome: RunOutcome
    facts: ServerFacts      # the server's files after the last stage
    summary: dict | None    # only when recall ran
    written: list[Path]
    log_path: Path


def log_path_for(settings: Settings, request: Request, label: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stages = "" if len(request.stages) == 3 else f"-{'-'.join(request.stages)}"
    name = f"{request.dataset}-{request.split}-{label}{stages}-{stamp}.log"
    return Path(settings.results_dir) / "logs" / name


def evaluate(settings: Settings, request: Request, reporter: Reporter) -> Report:
    """Run REQUEST's stages on the server; recall results land under settings.results_dir."""
    target = resolve_target(settings.host, Path(settings.ssh_config) if settings.ssh_config else None)
    with Connection(target, settings.connect_timeout).open() as connection:
        # connected (host key and auth checked) before any local file is created
        upload_helpers(connection, settings)
        request, facts = _locate(connection, settings, request, reporter)
        request = _decide(settings, request, facts, reporter)
        if request.runs_extraction:  # before any GPU time: the doctor's server-side checks
            preflight(connection, settings, request)
        plan = build_plan(settings, request)
        log_path = log_path_for(settings, request, plan.label)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        reporter.log_opened(log_path)
        with log_path.open("wb") as log:
            outcome, facts = _run_stages(plan, request, connection, settings, reporter, log, facts)
    if "recall" not in request.stages:
        return Report(request, outcome, facts, None, [], log_path)
    summary = build_summary(outcome, request, settings.host, log_path)
    destination = local_result_dir(Path(settings.results_dir), request, plan.label)
    return Report(request, outcome, facts, summary, save_results(outcome, destination, summary),
                  log_path)


def _inspect(connection: Connection, settings: Settings, request: Request) -> ServerFacts:
    checkpoint = resolve_checkpoint(settings, request.model_path) if request.model_path else None
    return read_facts(connection, inspect_command(settings, request, checkpoint), settings)


def _locate(connection: Connection, settings: Settings, request: Request,
            reporter: Reporter) -> tuple[Request, ServerFacts]:
    """The server's facts for REQUEST; without --model-path, for the most recent extraction."""
    facts = _inspect(connection, settings, request)
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
            return dataclasses.replace(request, skip_extraction=True)
        if facts.manifest and refusal:
            reporter.note(f"extracting again: {refusal}")
        return request
    hint = "drop --skip-extraction to extract first" if "extract" in request.stages else None
    outputs.check_features(facts, fix=hint)
    if "recall" in request.stages and "knn" not in request.stages:
        outputs.check_predictions(facts, request.directions)
    return request


def _run_stages(plan: Plan, request: Request, connection: Connection, settings: Settings,
                reporter: Reporter, log: BinaryIO, facts: ServerFacts) -> tuple[RunOutcome, ServerFacts]:
    outcome = RunOutcome(plan)
    run_steps(plan.steps_of("prepare") + plan.steps_of("extract"), outcome, connection, settings,
              reporter, log)
    if plan.steps_of("extract"):
        facts = _inspect(connection, settings, request)
        problem = outputs.completeness_problem(facts)
        if problem:
            raise OutputsNotReady(f"extraction exited 0 but {problem}", "read the extraction output "
                                  "above; check free disk space on the server, then extract again")
        command = plan.steps_of("extract")[0].command
        connection.write_bytes(plan.manifest, outputs.manifest_bytes(
            outputs.new_manifest(settings, request, facts, command, _now())))
        facts = _inspect(connection, settings, request)
    if plan.steps_of("knn"):
        run_steps(plan.steps_of("knn"), outcome, connection, settings, reporter, log)
        facts = _inspect(connection, settings, request)
        commands = {step.direction: step.command for step in plan.steps_of("knn")}
        connection.write_bytes(plan.manifest, outputs.manifest_bytes(
            outputs.with_knn(facts, commands, _now())))
    if plan.steps_of("recall"):
        run_steps(plan.steps_of("recall"), outcome, connection, settings, reporter, log)
        fetch_results(plan, connection, outcome)
    return outcome, facts


def _now() -> str:
    # microseconds: "most recent extraction" compares these strings
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
