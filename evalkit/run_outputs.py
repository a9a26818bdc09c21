"""What a followed run leaves beside its steps: the manifest and the KNN record, written on the
server (through the run's event stream) as its check steps pass, and the result files, brought
back at its end in one ask."""
from __future__ import annotations

import dataclasses

from . import clock, server_outputs
from .config import Settings
from .errors import EvaluationFailed, OutputsNotReady
from .evaluation import Evaluation
from .executors.base import RemoteRun
from .follow import Follower
from .outcome import RunOutcome
from .plan import Plan, Step
from .server_outputs import ServerFacts, facts_printed
from .summary import parse_result


Collected = dict[str, "tuple[int, bytes] | None"]  # path -> (mtime, content), as Follower.collect answers


def result_paths(run: RemoteRun) -> list[str]:
    """What the end of a run brings back, in its one ask: status.json (when the run ended), the
    result JSONs and query_hits.json."""
    paths = [run.path("status.json"), *run.plan.result_files.values()]
    if run.plan.has_query_hits and run.plan.result_files:
        paths.append(run.plan.files.query_hits)
    return paths


def take_results(collected: Collected, run: RemoteRun, outcome: RunOutcome) -> None:
    """The result JSONs COLLECTED from the server; raise EvaluationFailed unless each says success,
    or OutputsNotReady when a later run of the checkpoint has replaced it since this run ended."""
    ended = (collected.get(run.path("status.json")) or (None, b""))[0]
    for direction, path in run.plan.result_files.items():
        found = collected.get(path)
        if found is None:
            raise EvaluationFailed(f"the {direction} evaluation wrote no result file {path}",
                                   "read the step output above")
        modified, raw = found
        if ended is not None and modified > ended:  # runs of one checkpoint hold its lock in turn
            raise OutputsNotReady(f"the {direction} results of run {run.run_id} were replaced by a later run "
                                  f"of {run.plan.checkpoint} ({path})",
                                  "python -m evalkit results shows what was kept locally; evaluate again "
                                  "for this run's numbers")
        outcome.results[direction] = parse_result(raw, path, direction)
        outcome.raw_results[direction] = raw
    if run.plan.has_query_hits and run.plan.result_files:
        # the statistics beside the recall are extras: without them the recall still stands
        outcome.raw_query_hits = (collected.get(run.plan.files.query_hits) or (None, None))[1]


class OutputRecorder:
    """Writes the manifest once the features are verified, and the KNN record once the
    predictions are: from the facts the check steps printed (which came with their output), by
    the server's job.py, with no round trip waited for."""

    def __init__(self, settings: Settings, evaluation: Evaluation, plan: Plan,
                 follower: Follower, facts: ServerFacts | None) -> None:
        self.settings, self.evaluation, self.plan = settings, evaluation, plan
        self.follower = follower
        self.facts = facts  # before the run; after each check step, what it found
        self.manifest: dict | None = None  # the one this run wrote, once it has

    def step_done(self, step: Step) -> None:
        if step.name == "verify":
            self._record_extraction(step)
        elif step.name == "check_predictions":
            self._record_knn(step)

    def _record_extraction(self, verify: Step) -> None:
        facts = self._printed_by(verify)
        command = self.plan.steps_of("extract")[0].command
        self.manifest = server_outputs.new_manifest(self.settings, self.evaluation, facts, command,
                                                    clock.precise_timestamp())
        self.follower.write(self.plan.manifest, server_outputs.manifest_bytes(self.manifest))
        self.facts = dataclasses.replace(facts, manifest=self.manifest)

    def _record_knn(self, check: Step) -> None:
        facts = self._printed_by(check)
        # this run's manifest, when it extracted: the check may have run before it was written
        facts = dataclasses.replace(facts, manifest=self.manifest or facts.manifest)
        commands = {direction: step.command for step in self.plan.steps_of("knn") for direction in step.directions}
        manifest = server_outputs.with_knn(facts, commands, clock.precise_timestamp())
        self.follower.write(self.plan.manifest, server_outputs.manifest_bytes(manifest))
        self.facts = dataclasses.replace(facts, manifest=manifest)

    def _printed_by(self, step: Step) -> ServerFacts:
        return facts_printed(self.follower.output_of(step))
