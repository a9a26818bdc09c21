"""click only: parse options, build settings, call one service, hand the data to the view."""
from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from . import service, view
from .config import DEVICES, TEXT_MODELS, VISION_MODELS, Settings, build_settings
from .errors import INTERRUPTED_EXIT_CODE, UNEXPECTED_EXIT_CODE, DoctorFailed, EvalkitError
from .plan import SPLITS, STAGES, Request, build_plan
from .results import recalls

_SETTING_FLAGS = ("host", "datapath", "device", "gpu", "results_dir", "vision_model", "text_model")


def _check_dataset_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise click.BadParameter(f"{value!r} is not a dataset directory name "
                                 "(one name under DATAPATH/datasets, no '/')")
    return value


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
        click.option("--results-dir", help="local folder for results  [default: results]"),
        click.option("--skip-text-to-image", is_flag=True, help="skip text→image KNN and recall"),
        click.option("--skip-image-to-text", is_flag=True, help="skip image→text KNN and recall"),
        click.option("--dry-run", is_flag=True, help="print the exact remote commands; run nothing"),
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


def settings_and_request(kwargs: dict[str, Any], stages: tuple[str, ...] = STAGES
                         ) -> tuple[Settings, Request]:
    flags = {name: kwargs.get(name) for name in _SETTING_FLAGS}
    settings = build_settings(kwargs.get("config"), flags)
    if not kwargs.get("model_path") and ("extract" in stages or kwargs.get("dry_run")):
        raise click.UsageError("--model-path is required: the checkpoint to evaluate, e.g. "
                               f"{settings.datapath}/experiments/<name>/checkpoints/epoch_latest.pt")
    request = Request(dataset=kwargs["dataset_name"], split=kwargs["split"],
                      model_path=kwargs.get("model_path") or "", vision_model=settings.vision_model,
                      text_model=settings.text_model,
                      skip_extraction=kwargs.get("skip_extraction", False),
                      skip_text_to_image=kwargs["skip_text_to_image"],
                      skip_image_to_text=kwargs["skip_image_to_text"],
                      stages=stages, force_extraction=kwargs["force_extraction"])
    if request.skip_text_to_image and request.skip_image_to_text:
        raise click.UsageError("--skip-text-to-image and --skip-image-to-text together leave nothing "
                               "to evaluate; drop one of them")
    if request.skip_extraction and request.force_extraction:
        raise click.UsageError("--skip-extraction and --force-extraction contradict each other; "
                               "drop one of them")
    return settings, request


def run_evaluation(settings: Settings, request: Request, verbose: bool, dry_run: bool) -> None:
    out, _ = view.make_consoles()
    if dry_run:
        view.show_plan(out, build_plan(settings, request), settings.host)
        return
    with view.LiveReporter(out, verbose) as reporter:
        report = service.evaluate(settings, request, reporter,
                                  on_log_opened=lambda path: view.show_log_location(out, path))
    plan = report.outcome.plan
    if report.summary is None:
        view.show_stage_done(out, report.request.stages[-1], report.facts, plan.checkpoint)
        return
    view.show_results(out, plan.label, recalls(report.outcome), report.written, plan.output_dir)


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
    settings, request = settings_and_request(kwargs)
    run_evaluation(settings, request, kwargs["verbose"], kwargs["dry_run"])


def evaluate_main() -> None:
    evaluate_command(prog_name="distillation_model_evaluation.py")


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
    settings, request = settings_and_request(kwargs, stages=(kwargs["step"],))
    run_evaluation(settings, request, kwargs["verbose"], kwargs["dry_run"])


def quick_main() -> None:
    quick_command(prog_name="quick_evaluation.py")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """evalkit: evaluate Chinese-CLIP checkpoints on a GPU server over SSH."""


main.add_command(evaluate_command, name="evaluate")
main.add_command(quick_command, name="quick")


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
        run_evaluation(server.settings, server.request, verbose, dry_run=False)


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
    from .doctor_service import run_doctor

    kwargs = {**kwargs, "dry_run": False, "skip_text_to_image": False, "skip_image_to_text": False,
              "force_extraction": False}
    settings, request = settings_and_request(kwargs, stages=())
    out, _ = view.make_consoles()
    checks = run_doctor(settings, request, on_check=lambda check: view.show_check(out, check))
    failed = [check.name for check in checks if not check.ok]
    if failed:
        raise DoctorFailed(f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}",
                           "fix the ✗ lines above, then run `python -m evalkit doctor` again")
    view.show_doctor_passed(out, len(checks))
