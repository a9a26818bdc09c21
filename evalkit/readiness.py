"""What an evaluation will run, from the server's facts (server_outputs.py decides, pure): which
checkpoint when none was named, its files' facts, what is reused and what is refused."""
from __future__ import annotations

import dataclasses

from . import server_outputs
from .config import Settings
from .errors import OutputsNotReady
from .evaluation import SERVER_LATEST, Evaluation
from .outcome import Reporter
from .plan import checkpoint_output_dir, directions, inspect_command, knn_commands
from .server_outputs import ServerFacts, facts_from
from .ssh import Connection


def locate(connection: Connection, settings: Settings, evaluation: Evaluation, reporter: Reporter,
           inspected: tuple | None = None) -> tuple[Evaluation, ServerFacts]:
    """The server's facts for EVALUATION (INSPECTED: already run, with its command); without a
    checkpoint, for the most recent extraction, which then becomes the evaluation's checkpoint."""
    facts = facts_from(*inspected) if inspected else _inspect(connection, settings, evaluation)
    server_outputs.check_dataset(facts, evaluation)
    if evaluation.checkpoint:
        return evaluation, facts
    if not facts.out_dir or not facts.manifest:
        raise OutputsNotReady(
            f"no extraction found for dataset {evaluation.dataset!r}, split {evaluation.split!r} "
            f"under {settings.output_root}", "run --step extract --model-path CHECKPOINT first")
    manifest = facts.manifest
    chosen = dataclasses.replace(evaluation, checkpoint=manifest["checkpoint"]["path"],
                                 vision_model=manifest["vision_model"], text_model=manifest["text_model"],
                                 chosen_by=SERVER_LATEST)
    reporter.note(f"no extract step of yours is on record for this dataset split (in {settings.results_dir}): "
                  f"using the most recent extraction on the server, by anyone: {chosen.checkpoint} (extracted "
                  f"{manifest.get('extracted_at')}); pass --model-path to choose another")
    facts = _inspect(connection, settings, chosen)
    expected_dir = checkpoint_output_dir(settings, chosen.dataset, chosen.split, chosen.checkpoint)
    if facts.out_dir != expected_dir:  # a manifest copied by hand into another directory
        raise OutputsNotReady(f"the manifest in {facts.out_dir} names a checkpoint whose outputs "
                              f"belong in {expected_dir}", "run --step extract --model-path again")
    return chosen, facts


def _inspect(connection: Connection, settings: Settings, evaluation: Evaluation) -> ServerFacts:
    command = inspect_command(settings, evaluation)
    return facts_from(connection.capture(command, timeout=settings.step_timeout), command)


def decide(settings: Settings, evaluation: Evaluation, facts: ServerFacts, reporter: Reporter) -> Evaluation:
    """Check the stage's inputs; skip extraction when complete features can be reused."""
    if "extract" in evaluation.stages and not evaluation.skip_extraction:
        server_outputs.check_checkpoint(facts)
        refusal = server_outputs.reuse_refusal(settings, evaluation, facts)
        if refusal is None and not evaluation.force_extraction:
            reporter.note(f"reusing the features extracted {facts.manifest['extracted_at']} for this "
                          f"checkpoint ({facts.image_count} images, {facts.text_count} texts, "
                          "checkpoint unchanged); --force-extraction extracts again")
            return _reuse_predictions(settings, dataclasses.replace(evaluation, skip_extraction=True), facts,
                                      reporter)
        if facts.manifest and refusal:
            reporter.note(f"extracting again: {refusal}")
        return evaluation
    hint = "drop --skip-extraction to extract first" if "extract" in evaluation.stages else None
    server_outputs.check_features(facts, fix=hint)
    if "recall" in evaluation.stages and "knn" not in evaluation.stages:
        server_outputs.check_predictions(facts, directions(settings, evaluation))
    return evaluation


def _reuse_predictions(settings: Settings, evaluation: Evaluation, facts: ServerFacts,
                       reporter: Reporter) -> Evaluation:
    """With reused features, KNN is skipped too when its recorded commands are the ones planned."""
    if "knn" not in evaluation.stages or not server_outputs.predictions_reusable(facts,
                                                                                knn_commands(settings, evaluation)):
        return evaluation
    reporter.note("reusing the KNN predictions made from these features by the same commands")
    return dataclasses.replace(evaluation, stages=tuple(stage for stage in evaluation.stages if stage != "knn"))
