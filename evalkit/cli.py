"""click only: parse options, build settings, call one service, hand the data to the view."""
from __future__ import annotations

import atexit
import functools
import gc
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from . import view
from .comparison import ModelResult, build_comparison, comparison_paths, now_utc, to_csv, to_markdown
from .config import ALL_MODELS, DEVICES, KNN_MODES, TEXT_MODELS, VISION_MODELS, ModelEntry, Settings, build_settings
from .errors import (INTERRUPTED_EXIT_CODE, UNEXPECTED_EXIT_CODE, ComparisonIncomplete, DoctorFailed,
                     EvalkitError, NothingEvaluated)
from .plan import SPLITS, STAGES, Request, build_plan, check_distinct_checkpoints
from .results import in_registry_order, load_evaluated, recalls, save_comparison

_SETTING_FLAGS = ("host", "datapath", "device", "gpu", "results_dir", "vision_model", "text_model", "knn")


def _service():
    """The SSH side (paramiko) loads only when a command needs it: `--help` starts fast."""
    from . import service
    return service


def _check_dataset_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise click.BadParameter(f"{value!r} is not a dataset directory name "
                                 "(one name under DATAPATH/datasets, no '/')")
    return value


def _parse_gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        gpus = [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of GPU indices, e.g. 0,1,2")
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise click.BadParameter(f"{value!r}: each GPU index once, none negative")
    return gpus


def shared_options(command: Callable) -> Callable:
    """The options of every evaluation command, declared once."""
    options = [
        click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
                     help="YAML file with server settings (see configs/seetacloud-v800.yaml). "
                          "Flags override it; it overrides the built-in defaults."),
        click.option("--host", help="ssh alias or user@host  [default: seetacloud-v800]"),
        click.option("--datapath", help="server data root holding datasets/ and experiments/  "
                                        "[default: /root/autodl-tmp/datapath]"),
        click.option("--dataset-name", default="Flickr30k-CN", show_default=True,
                     callback=_check_dataset_name, help="dataset directory under DATAPATH/datasets"),
        click.option("--split", type=click.Choice(SPLITS), default="valid", show_default=True),
        click.option("--model-path", help="checkpoint on the server, e.g. DATAPATH/experiments/"
                                          "<name>/checkpoints/epoch_latest.pt (relative: to DATAPATH)"),
        click.option("--model", "models", multiple=True, metavar="NAME",
                     help="a checkpoint registered under `models:` in the config; repeatable; "
                          "`all` for every registered one. Several give a comparison table"),
        click.option("--force-extraction", is_flag=True,
                     help="extract again even when complete features of this unchanged "
                          "checkpoint exist (they are reused by default)"),
        click.option("--vision-model", type=click.Choice(VISION_MODELS),
                     help="the checkpoint's image tower  [default: ViT-B-16]"),
        click.option("--text-model", type=click.Choice(TEXT_MODELS),
                     help="the checkpoint's text tower  [default: RoBERTa-wwm-ext-base-chinese]"),
        click.option("--device", type=click.Choice(DEVICES),
                     help="cuda, or cpu to run the same upstream scripts without a GPU  [default: cuda]"),
        click.option("--gpu", type=click.IntRange(min=0), help="GPU index, sets CUDA_VISIBLE_DEVICES  "
                                                               "[default: 0]"),
        click.option("--gpus", callback=_parse_gpus, metavar="0,1,2",
                     help="evaluate several models at once, one per GPU (one GPU: one after another)"),
        click.option("--results-dir", help="local folder for results  [default: results]"),
        click.option("--knn", type=click.Choice(KNN_MODES),
                     help="upstream: the two upstream KNN scripts; fast: evalkit's exact batched KNN, "
                          "same prediction files, much faster on large galleries  [default: upstream]"),
        click.option("--skip-text-to-image", is_flag=True, help="skip text→image KNN and recall"),
        click.option("--skip-image-to-text", is_flag=True, help="skip image→text KNN and recall"),
        click.option("--dry-run", is_flag=True, help="print the exact remote commands; run nothing"),
        click.option("--detach", is_flag=True,
                     help="start the run on the server and return at once with its run id "
                          "(then: python -m evalkit attach RUN)"),
        click.option("--json", "json_output", is_flag=True,
                     help="print one machine-readable summary on stdout; everything else on stderr"),
        click.option("--verbose", is_flag=True, help="also print each remote command as it starts"),
        click.option("--debug", is_flag=True, help="show Python tracebacks on errors"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def guarded(command: Callable) -> Callable:
    """Turn EvalkitErrors into one message and their exit code; tracebacks only with --debug."""
    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        _, errors = view.make_consoles()
        debug = kwargs.get("debug", False)
        try:
            command(**kwargs)
        except EvalkitError as error:
            if debug:
                traceback.print_exc()
            view.show_error(errors, error)
            sys.exit(error.exit_code)
        except click.ClickException:
            raise  # usage errors: click prints them with the option's name and exits 2
        except KeyboardInterrupt:
            view.show_interrupted(errors)
            sys.exit(INTERRUPTED_EXIT_CODE)
        except Exception as error:  # a bug: say so plainly, keep the traceback for --debug
            if debug:
                raise
            errors.print(f"unexpected error: {type(error).__name__}: {error}\n"
                         "rerun with --debug for the traceback and report it", markup=False)
            sys.exit(UNEXPECTED_EXIT_CODE)
    return wrapper


def settings_and_requests(kwargs: dict[str, Any], stages: tuple[str, ...] = STAGES
                          ) -> tuple[Settings, list[Request]]:
    """The settings, and one request per model named by --model / --model-path."""
    flags = {name: kwargs.get(name) for name in _SETTING_FLAGS}
    settings = build_settings(kwargs.get("config"), flags)
    common = dict(dataset=kwargs["dataset_name"], split=kwargs["split"], stages=stages,
                  skip_extraction=kwargs.get("skip_extraction", False),
                  skip_text_to_image=kwargs["skip_text_to_image"],
                  skip_image_to_text=kwargs["skip_image_to_text"],
                  force_extraction=kwargs["force_extraction"])
    _check_flag_combinations(common)
    requests = [Request(model_path=entry.path, label=entry.name,
                        vision_model=kwargs["vision_model"] or entry.vision_model or settings.vision_model,
                        text_model=kwargs["text_model"] or entry.text_model or settings.text_model, **common)
                for entry in _registered(settings, kwargs["models"])]
    if kwargs.get("model_path") or not requests:
        if not kwargs.get("model_path") and ("extract" in stages or kwargs.get("dry_run")):
            raise click.UsageError("--model-path or --model is required: the checkpoint to evaluate, e.g. "
                                   f"{settings.datapath}/experiments/<name>/checkpoints/epoch_latest.pt")
        requests.append(Request(model_path=kwargs.get("model_path") or "", vision_model=settings.vision_model,
                                text_model=settings.text_model, **common))
    check_distinct_checkpoints(settings, requests)
    return settings, requests


def _check_flag_combinations(common: dict[str, Any]) -> None:
    if common["skip_text_to_image"] and common["skip_image_to_text"]:
        raise click.UsageError("--skip-text-to-image and --skip-image-to-text together leave nothing "
                               "to evaluate; drop one of them")
    if common["skip_extraction"] and common["force_extraction"]:
        raise click.UsageError("--skip-extraction and --force-extraction contradict each other; "
                               "drop one of them")


def _registered(settings: Settings, names: tuple[str, ...]) -> list[ModelEntry]:
    known = ", ".join(settings.models) or "none: add a `models:` map to the --config file"
    wanted = list(settings.models) if ALL_MODELS in names else list(dict.fromkeys(names))
    if ALL_MODELS in names and not settings.models:
        raise click.UsageError(f"--model all: no models are registered ({known})")
    for name in wanted:
        if name not in settings.models:
            raise click.UsageError(f"unknown model {name!r} for --model; registered: {known}")
    return [settings.models[name] for name in wanted]


def run_command(settings: Settings, requests: list[Request], kwargs: dict[str, Any]) -> None:
    """Dry run, one model, or several (a comparison); --json puts one summary on stdout."""
    out, _ = view.make_consoles(to_stderr=kwargs["json_output"])
    if kwargs["dry_run"]:
        for request in requests:
            view.show_plan(out, build_plan(settings, request), settings.host)
        return
    if kwargs["detach"]:
        for request in requests:
            record = _service().evaluate(settings, request, view.QuietReporter(out), detach=True)
            view.show_detached(out, record.run_id, record.label)
        return
    slots = kwargs["gpus"] or [settings.gpu]
    if len(requests) == 1:
        results = [_run_one(out, settings, requests[0], kwargs["verbose"])]
    else:
        results = _run_many(out, settings, requests, slots, kwargs["verbose"])
    _report(out, settings, requests[0], results, kwargs["json_output"])


def _run_one(out, settings: Settings, request: Request, verbose: bool) -> ModelResult:
    with view.LiveReporter(out, verbose) as reporter:
        report = _service().evaluate(settings, request, reporter)  # errors keep their own exit code
    show_report(out, report)
    from .batch import model_result
    return model_result(report)


def show_report(out, report) -> None:
    plan = report.outcome.plan
    if report.summary is None:
        view.show_stage_done(out, report.request.stages[-1], report.facts, plan)
    else:
        view.show_results(out, plan.label, recalls(report.outcome), report.written, plan.output_dir)


def _run_many(out, settings: Settings, requests: list[Request], slots: list[int],
              verbose: bool) -> list[ModelResult]:
    from .batch import evaluate_many
    def failed(request: Request, error: EvalkitError) -> None:
        view.show_model_failed(out, request.label or request.model_path, error)

    if len(slots) <= 1:
        def sequential(request: Request) -> view.LiveReporter:
            view.show_model_header(out, request.label or "", request.model_path)
            return view.LiveReporter(out, verbose)
        return evaluate_many(settings, requests, slots, sequential, failed)
    with view.concurrent_progress(out) as progress:
        return evaluate_many(settings, requests, slots,
                             lambda request: view.ConcurrentReporter(out, progress, request.label or
                                                                     request.model_path), failed)


def _report(out, settings: Settings, request: Request, results: list[ModelResult], json_output: bool) -> None:
    document = build_comparison(results, request.dataset, request.split, now_utc())
    failures = [result for result in results if not result.ok]
    if len(results) > 1 and "recall" in request.stages:
        written = [] if not any(r.ok for r in results) else save_comparison(
            document, comparison_paths(Path(settings.results_dir), request.dataset, request.split))
        view.show_comparison(out, document, written)
    if json_output:
        click.echo(json.dumps(document, ensure_ascii=False, indent=2))
    if failures:
        raise ComparisonIncomplete(
            f"{len(failures)} of {len(results)} models failed: "
            + "; ".join(f"{r.label} (exit {r.exit_code})" for r in failures),
            "read each model's error above; rerun just those with --model NAME")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@shared_options
@click.option("--skip-extraction", is_flag=True,
              help="use the features already extracted for this checkpoint; an error if there "
                   "are none (by default they are reused when complete and up to date)")
@guarded
def evaluate_command(**kwargs: Any) -> None:
    """Evaluate a Chinese-CLIP checkpoint on the server: extract features, KNN, recall.

    Runs the upstream cn_clip/eval scripts over SSH, streams their progress, and copies both
    result JSONs to RESULTS_DIR/<dataset>/<split>/<label>/, then prints Recall@1/5/10.

    \b
    Example:
      python distillation_model_evaluation.py --dataset-name Flickr30k-CN \\
        --model-path /root/autodl-tmp/datapath/experiments/EXP/checkpoints/epoch_latest.pt
    """
    settings, requests = settings_and_requests(kwargs)
    run_command(settings, requests, kwargs)


def _run_as_program(command: click.Command, prog_name: str) -> None:
    """COMMAND as the whole process. At exit the interpreter would run the garbage collector over
    every object of every imported module (~50 ms once paramiko is loaded) only to free memory
    the OS takes back anyway: frozen, they are left alone."""
    atexit.register(gc.freeze)
    command(prog_name=prog_name)


def evaluate_main() -> None:
    _run_as_program(evaluate_command, "distillation_model_evaluation.py")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--step", type=click.Choice(STAGES), required=True,
              help="extract: image + text features of --model-path; knn: top-k predictions; "
                   "recall: Recall@1/5/10, pulled back and shown")
@shared_options
@guarded
def quick_command(**kwargs: Any) -> None:
    """Run one stage of the evaluation, for debugging: extract, then knn, then recall.

    knn and recall use the features of --model-path, or without it the most recent
    extraction for this datapath, dataset and split (and say which checkpoint that was).
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
    settings, requests = settings_and_requests(kwargs, stages=(kwargs["step"],))
    run_command(settings, requests, kwargs)


def quick_main() -> None:
    _run_as_program(quick_command, "quick_evaluation.py")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """evalkit: evaluate Chinese-CLIP checkpoints on a GPU server over SSH."""


main.add_command(evaluate_command, name="evaluate")
main.add_command(quick_command, name="quick")


def group_main(prog_name: str = "evalkit") -> None:
    _run_as_program(main, prog_name)


RESULT_FORMATS = ("table", "markdown", "csv", "json")


@main.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML config: its results_dir and the order of its `models:`")
@click.option("--results-dir", help="local results folder  [default: results]")
@click.option("--dataset-name", help="only this dataset")
@click.option("--split", type=click.Choice(SPLITS), help="only this split")
@click.option("--format", "output_format", type=click.Choice(RESULT_FORMATS), default="table",
              show_default=True, help="markdown and csv paste into a paper or a spreadsheet")
@click.option("--debug", is_flag=True, help="show Python tracebacks on errors")
@guarded
def results(config: Path | None, results_dir: str | None, dataset_name: str | None, split: str | None,
            output_format: str, debug: bool) -> None:
    """Compare everything evaluated so far, from the local results folder (no connection).

    One table per dataset and split: a row per label (its newest run), the best of each
    column highlighted, deltas against `baseline` when there is one.
    """
    settings = build_settings(config, {"results_dir": results_dir})
    found = load_evaluated(Path(settings.results_dir), dataset_name, split)
    if not found:
        scope = " ".join(filter(None, (dataset_name, split)))
        raise NothingEvaluated(f"no results under {Path(settings.results_dir).resolve()}"
                               + (f" for {scope}" if scope else ""),
                               "evaluate first, or point --results-dir / --config at your results folder")
    out, _ = view.make_consoles()
    documents = [build_comparison(in_registry_order(rows, list(settings.models)), dataset, split_name, now_utc())
                 for (dataset, split_name), rows in sorted(found.items())]
    for document in documents:
        if output_format == "table":
            view.show_comparison(out, document, [])
        elif output_format == "markdown":
            click.echo(to_markdown(document))
        elif output_format == "csv":
            click.echo(to_csv(document), nl=False)
    if output_format == "json":
        click.echo(json.dumps(documents, ensure_ascii=False, indent=2))


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="where the demo server's venv, data and keys live  [default: ~/.cache/evalkit/demo]")
@click.option("--results-dir", default="results", show_default=True, help="local folder for results")
@click.option("--verbose", is_flag=True, help="also print each remote command as it starts")
@click.option("--debug", is_flag=True, help="show Python tracebacks on errors")
@guarded
def demo(workdir: Path | None, results_dir: str, verbose: bool, debug: bool) -> None:
    """Run a full evaluation against a local demo server: no GPU server needed.

    Starts Debian's sshd on 127.0.0.1, a CPU venv with the cn_clip package, a tiny dataset in
    the real LMDB + JSONL format and a random RN50 + RBT3 checkpoint, then evaluates it through
    SSH with the unmodified upstream scripts, exactly as against the real server.
    """
    from .demo import default_workdir, demo_server  # the test bed is only loaded when asked for

    out, _ = view.make_consoles()
    say = functools.partial(view.show_note, out)
    with demo_server(workdir or default_workdir(), results_dir, say) as server:
        _run_one(out, server.settings, server.request, verbose)


@main.command()
@shared_options
@guarded
def doctor(**kwargs: Any) -> None:
    """Check the server before evaluating: ssh, env, cn_clip, GPU, dataset, checkpoint, disk.

    Each check prints one line, ✓ or ✗ with what it found and, on ✗, the fix. It reads only
    (it uploads its probe beside evalkit's other helpers) and runs no upstream script. Takes the
    evaluation's options; those about running (--force-extraction, --skip-*, --dry-run, ...) are
    ignored. Exits 0 only when every check passes.

    \b
    Example:
      python -m evalkit doctor --config configs/seetacloud-v800.yaml \\
        --model-path /root/autodl-tmp/datapath/experiments/EXP/checkpoints/epoch_latest.pt
    """
    kwargs = {**kwargs, "dry_run": False, "skip_text_to_image": False, "skip_image_to_text": False,
              "force_extraction": False}
    settings, requests = settings_and_requests(kwargs, stages=())
    out, _ = view.make_consoles()
    checks, failed = 0, []
    for request in requests:
        if len(requests) > 1:
            view.show_model_header(out, request.label or "", request.model_path)
        from .doctor_service import run_doctor
        found = run_doctor(settings, request, on_check=lambda check: view.show_check(out, check))
        checks += len(found)
        failed += [check.name for check in found if not check.ok and check.name not in failed]
    if failed:
        raise DoctorFailed(f"{len(failed)} of {checks} checks failed: {', '.join(failed)}",
                           "fix the ✗ lines above, then run `python -m evalkit doctor` again")
    view.show_doctor_passed(out, checks)


# The run-management commands (attach, cancel, status, logs) live in their own module; importing
# it registers them on `main`.
from . import cli_runs  # noqa: E402,F401
