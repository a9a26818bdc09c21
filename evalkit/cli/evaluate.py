"""click only: the evaluation commands (the two entry scripts' commands, doctor, demo)."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from .. import view
from ..comparison import ModelResult
from ..config import Settings
from ..epochs import in_epoch_order, trends
from ..errors import EvalkitError
from ..evaluation import STAGES, Evaluation, RunOptions, Scope, Wanted
from ..executors import GPUS_FROM_SCHEDULER
from ..in_turn import InTurn, Turns
from ..plan import build_plan
from ..store import LocalStore
from .guard import CONTEXT, debug_option, guarded
from .grouped_help import GroupedCommand
from .version import version_option
from ..sweep import Listing, is_checkpoint_set
from .options import parse, parse_request, shared_options, with_tasks


@click.command(cls=GroupedCommand, context_settings=CONTEXT)
@version_option
@shared_options
@click.option("--skip-extraction", is_flag=True,
              help="use the features already extracted for this checkpoint; an error if there "
                   "are none (by default they are reused when complete and up to date)")
@click.option("--watch", is_flag=True,
              help="with a checkpoints directory or glob: keep evaluating checkpoints as training writes them "
                   "(each once complete; `watch_interval`, `watch_settle` in the config); Ctrl-C ends it")
@click.option("--until-epoch", type=click.IntRange(min=0), metavar="N",
              help="--watch ends once epoch N (or later) is evaluated")
@click.option("--reevaluate", is_flag=True,
              help="with a checkpoints directory or glob: evaluate every cell again, also those unchanged since "
                   "they were last evaluated (by default they keep that run's numbers; features are still reused)")
@guarded
def evaluate_command(**flags: Any) -> None:
    """Evaluate a Chinese-CLIP checkpoint on the server: extract features, KNN, recall.

    Runs the upstream cn_clip/eval scripts over SSH, streams their progress, and copies both
    result JSONs to RESULTS_DIR/<dataset>/<split>/<label>/, then prints Recall@1/5/10.

    \b
    Example:
      python distillation_model_evaluation.py --dataset-name Flickr30k-CN \\
        --model-path /root/autodl-tmp/datapath/experiments/EXP/checkpoints/epoch_latest.pt
    """
    watching, until_epoch = flags.pop("watch"), flags.pop("until_epoch")
    if watching:
        run_watch(*parse_request(flags, read_layouts=False), until_epoch)
        return
    if until_epoch is not None:
        raise click.UsageError("--until-epoch ends a --watch: add --watch")
    run(*parse(flags))


@click.command(cls=GroupedCommand, context_settings=CONTEXT)
@click.option("--step", type=click.Choice(STAGES), required=True,
              help="extract: image + text features of --model-path; knn: top-k predictions; "
                   "recall: Recall@1/5/10, pulled back and shown")
@shared_options
@version_option
@guarded
def quick_command(step: str, **flags: Any) -> None:
    """Run one stage of the evaluation, for debugging: extract, then knn, then recall.

    knn and recall use the features of --model-path; without it, of the checkpoint of your
    last extract step for this host, datapath, dataset and split (kept beside your run
    records, so nobody else's extraction can change it); only when you have none, the server's
    most recent extraction, and the table says so.
    Each stage refuses to read files that are missing, incomplete, or not from one extraction
    of one checkpoint; extraction is skipped when complete features of the unchanged
    checkpoint exist (--force-extraction redoes it).

    \b
    Example:
      python quick_evaluation.py --step extract --dataset-name Flickr30k-CN \\
        --model-path /root/autodl-tmp/datapath/experiments/EXP/checkpoints/epoch_latest.pt
      python quick_evaluation.py --step knn --dataset-name Flickr30k-CN
      python quick_evaluation.py --step recall --dataset-name Flickr30k-CN
    """
    run(*parse(flags, stages=(step,)))


def run_watch(settings: Settings, scopes: list[Scope], wanted: list[Wanted], options: RunOptions,
              until_epoch: int | None) -> None:
    """--watch: each look's new cells run as a sweep does; after each, every dataset split's
    comparison of that look's checkpoints (rows kept from earlier looks and runs included)."""
    if options.dry_run or options.detach or options.json_output:
        raise click.UsageError("--watch runs until stopped: drop --dry-run, --detach and --json")
    if not wanted or not all(item.model_path and is_checkpoint_set(item.model_path) for item in wanted):
        raise click.UsageError("--watch needs a checkpoints directory or a quoted glob as --model-path "
                               "(or as each --model's path), e.g. DATAPATH/experiments/EXP/checkpoints")
    from .. import gpu_queue
    from ..watch import watch
    scopes = with_tasks(settings, scopes)
    out, _ = view.make_consoles()
    store = LocalStore.of(settings)

    def run_cells(evaluations: list[Evaluation], listing: Listing) -> list[ModelResult]:
        return _run_many(out, settings, evaluations, options, listing)

    def show(rows: list[tuple[Evaluation, ModelResult]]) -> None:
        for (dataset, split), found in by_dataset_split(*map(list, zip(*rows))).items():
            if len(found) > 1 and "recall" in scopes[0].stages:
                document, written = gpu_queue.compare(store, in_epoch_order(found), dataset, split, save=True)
                view.show_comparison(out, document, written)
                view.show_trends(out, trends([row.result for row in document.rows]))

    failures = watch(settings, scopes, wanted, until_epoch, run_cells, show, lambda text: view.show_note(out, text),
                     reevaluate=options.reevaluate)
    gpu_queue.check_all_succeeded(failures, f"evaluation{'s' if len(failures) != 1 else ''} of the watch failed")


def run(settings: Settings, evaluations: list[Evaluation], options: RunOptions, listing: Listing = Listing()) -> None:
    """Dry run, one model, or several (a comparison); --json puts one summary on stdout. A sweep's
    cells unchanged since they were last evaluated keep that run's numbers (LISTING: what the
    sweep's listing saw), unless --reevaluate."""
    out, _ = view.make_consoles(to_stderr=options.json_output)
    if options.dry_run:
        if len(evaluations) > 1:
            view.show_cells(out, [(e.label, e.dataset, e.split, e.checkpoint) for e in evaluations])
        for evaluation in evaluations:
            plan = build_plan(settings, evaluation)
            view.show_plan(out, plan, settings.host)
            if settings.executor == "slurm":
                view.show_job_script(out, dry_run_job_script(settings, plan.label))
        return
    from .. import gpu_queue, pipeline  # the SSH side loads only when a command needs it: `--help` starts fast
    from ..unchanged import kept_rows
    if options.detach:
        for evaluation in evaluations:  # said while the run is evalkit's: Ctrl-C before it cancels the run
            pipeline.evaluate(settings, evaluation, view.QuietReporter(out), detach=True,
                              on_detached=lambda record: view.show_detached(out, record.run_id, record.label))
        return
    kept = {} if options.reevaluate else kept_rows(settings, evaluations, listing)
    if len(evaluations) == 1 and not kept:
        results = [run_one(out, settings, evaluations[0], options.verbose, listing)]
    else:
        results = _run_many(out, settings, evaluations, options, listing, kept)
    documents = []
    for (dataset, split), rows in by_dataset_split(evaluations, results).items():
        # a matrix of one checkpoint shows a table per dataset split too; a file keeps only comparisons
        shown = (len(results) > 1 or options.references or kept) and "recall" in evaluations[0].stages
        document, written = gpu_queue.compare(LocalStore.of(settings), rows, dataset, split,
                                              save=len(results) > 1 and len(rows) > 1 and "recall" in evaluations[0].stages,
                                              references=options.references)
        if shown:
            view.show_comparison(out, document, written)
            view.show_trends(out, trends([row.result for row in document.rows]))
        documents.append(document.to_dict())
    if options.json_output:  # one document per dataset split: a list only for a matrix
        click.echo(json.dumps(documents[0] if len(documents) == 1 else documents, ensure_ascii=False, indent=2))
    gpu_queue.check_all_succeeded(results)


def by_dataset_split(evaluations: list[Evaluation], results: list[ModelResult]
                     ) -> dict[tuple[str, str], list[ModelResult]]:
    """Each cell's row under its dataset and split, in the order run (a sweep's: by epoch)."""
    grouped: dict[tuple[str, str], list[ModelResult]] = {}
    for evaluation, result in zip(evaluations, results):
        grouped.setdefault((evaluation.dataset, evaluation.split), []).append(result)
    return grouped


def dry_run_job_script(settings: Settings, label: str) -> str:
    from ..server import run_dir
    from ..uploads import slurm_batch_script
    return slurm_batch_script(settings, "RUN_ID", label, run_dir(settings, "RUN_ID"))


def run_one(out: Console, settings: Settings, evaluation: Evaluation, verbose: bool,
            listing: Listing = Listing()) -> ModelResult:
    from .. import gpu_queue, pipeline
    from ..unchanged import remember
    with view.LiveReporter(out, verbose) as reporter:
        report = pipeline.evaluate(settings, evaluation, reporter)  # errors keep their own exit code
    view.show_report(out, report)
    result = gpu_queue.model_result(report)
    remember(settings, evaluation, listing, result)
    return result


def _run_many(out: Console, settings: Settings, evaluations: list[Evaluation], options: RunOptions,
              listing: Listing = Listing(), kept: dict[Evaluation, ModelResult] | None = None) -> list[ModelResult]:
    """Each cell's row, in order: KEPT's rows as they are, the other cells evaluated."""
    from ..gpu_queue import evaluate_all
    kept = kept or {}
    todo = [evaluation for evaluation in evaluations if evaluation not in kept]
    gpus = list(options.gpus) or [settings.gpu]
    if settings.executor in GPUS_FROM_SCHEDULER:  # every job submitted at once: the scheduler places them
        gpus = list(range(len(todo)))

    is_matrix = len({(e.dataset, e.split) for e in evaluations}) > 1

    def name(evaluation: Evaluation) -> str:
        label = evaluation.label or evaluation.checkpoint
        return f"{label} · {evaluation.dataset} {evaluation.split}" if is_matrix else label

    def failed(evaluation: Evaluation, error: EvalkitError) -> None:
        view.show_model_failed(out, name(evaluation), error)

    def cancelled(results: dict) -> None:  # Ctrl-C: what became of each run still going
        for run_id, result in results.items():
            view.show_note(out, result.describe(run_id))

    for evaluation, row in kept.items():
        view.show_unchanged(out, name(evaluation), row.run_id)
    if not todo:
        return [kept[evaluation] for evaluation in evaluations]
    if len(gpus) <= 1:  # shown one after another, though the next one's checks overlap (in_turn.py)
        turns, reporters = Turns(), {}

        def one_after_another(evaluation: Evaluation) -> InTurn:
            position = todo.index(evaluation)

            def shown() -> view.LiveReporter:
                view.show_model_header(out, f"[{position + 1}/{len(todo)}] {name(evaluation)}", evaluation.checkpoint)
                return view.LiveReporter(out, options.verbose)
            reporters[evaluation] = turns.reporter(position, shown)
            return reporters[evaluation]

        def failed_in_turn(evaluation: Evaluation, error: EvalkitError) -> None:
            reporters[evaluation].in_turn(lambda _: failed(evaluation, error))

        def cancelled_now(results: dict) -> None:
            turns.close()  # the display of the one shown stops; the others' are not shown at all
            cancelled(results)

        ran = evaluate_all(settings, todo, gpus, one_after_another, failed_in_turn, cancelled_now, listing)
    else:
        with view.concurrent_progress(out, total=len(todo)) as progress:
            ran = evaluate_all(settings, todo, gpus,
                               lambda evaluation: view.ConcurrentReporter(out, progress, name(evaluation)), failed,
                               cancelled, listing)
    rows = iter(ran)
    return [kept[evaluation] if evaluation in kept else next(rows) for evaluation in evaluations]


@click.command(cls=GroupedCommand, context_settings=CONTEXT)
@shared_options
@click.option("--probe-job", is_flag=True,
              help="with executor: slurm, also run a tiny Slurm job that checks the datapath, Chinese-CLIP, the "
                   "output directory and the checkpoint are visible from a compute node (waits up to 2 min for it)")
@guarded
def doctor(probe_job: bool, **flags: Any) -> None:
    """Check the server before evaluating: ssh, env, cn_clip, GPU, dataset, checkpoint, disk.

    Each check prints one line, ✓ or ✗ with what it found and, on ✗, the fix. It reads only
    (its probe and evalkit's other helpers are brought up to date as a run's are, with no SFTP)
    and runs no upstream script. Takes the
    evaluation's options; those about running (--force-extraction, --skip-*, --dry-run, ...) are
    ignored. Exits 0 only when every check passes.

    \b
    Example:
      python -m evalkit doctor --config configs/seetacloud-v800.yaml \\
        --model-path /root/autodl-tmp/datapath/experiments/EXP/checkpoints/epoch_latest.pt
    """
    flags = {**flags, "dry_run": False, "skip_text_to_image": False, "skip_image_to_text": False,
             "force_extraction": False}
    settings, evaluations, _, _ = parse(flags, stages=(), read_layouts=False)
    out, _ = view.make_consoles()
    from ..doctor import run_doctors
    count = run_doctors(settings, evaluations, on_check=functools.partial(view.show_check, out),
                        on_model=(lambda evaluation: view.show_model_header(out, evaluation.label,
                                                                            evaluation.checkpoint))
                        if len(evaluations) > 1 else None, probe_job=probe_job)
    view.show_doctor_passed(out, count)


@click.command(context_settings=CONTEXT)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="where the demo server's venv, data and keys live  [default: ~/.cache/evalkit/demo]")
@click.option("--results-dir", default="results", show_default=True, help="local folder for results")
@click.option("-v", "--verbose", is_flag=True, help="also stream the upstream scripts' output and each remote command (by default they go to the log only)")
@debug_option
@guarded
def demo(workdir: Path | None, results_dir: str, verbose: bool, debug: bool) -> None:
    """Run a full evaluation against a local demo server: no GPU server needed.

    Starts Debian's sshd on 127.0.0.1, a CPU venv with the cn_clip package, a tiny dataset in
    the real LMDB + JSONL format and a random RN50 + RBT3 checkpoint, then evaluates it through
    SSH with the unmodified upstream scripts, exactly as against the real server.

    \b
    Example:
      python -m evalkit demo --results-dir demo-results
    """
    from ..demo import default_workdir, demo_server  # the test bed is only loaded when asked for

    out, _ = view.make_consoles()
    say = functools.partial(view.show_note, out)
    with demo_server(workdir or default_workdir(), results_dir, say) as server:
        run_one(out, server.settings, server.evaluation, verbose)
