"""The evaluation commands' options, declared once, and the one place they become typed,
resolved values: Settings, one Evaluation per checkpoint, RunOptions. Nothing below the CLI
sees click's keyword arguments."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from ..config import ALL_MODELS, DEVICES, KNN_MODES, TEXT_MODELS, VISION_MODELS, ModelEntry, Settings, build_settings
from .. import view
from ..evaluation import SPLITS, STAGES, Evaluation, RunOptions, Scope, Wanted
from ..executors import EXECUTORS
from ..sweep import Listing, cells, describe_alias, describe_held, is_checkpoint_set
from .guard import debug_option
from .references import reference_option

_SETTING_FLAGS = ("host", "datapath", "device", "gpu", "results_dir", "vision_model", "text_model", "knn",
                  "image_to_image", "executor")


def _check_dataset_name(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise click.BadParameter(f"{name!r} is not a dataset directory name "
                                     "(one name under DATAPATH/datasets, no '/')")
    return tuple(dict.fromkeys(value))


def _check_label(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (not value.strip() or value in (".", "..") or "/" in value or "\0" in value):
        raise click.BadParameter(f"{value!r} is not a label: it names a results folder (no '/')")
    return value


def _parse_gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        gpus = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of GPU indices, e.g. 0,1,2")
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise click.BadParameter(f"{value!r}: each GPU index once, none negative")
    return gpus


def config_option(help_text: str) -> Callable:
    return click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help=help_text)


def shared_options(command: Callable) -> Callable:
    """The options of every evaluation command."""
    options = [
        config_option("YAML file with server settings (see configs/seetacloud-v800.yaml). "
                      "Flags override it; it overrides the built-in defaults."),
        click.option("--host", help="ssh alias or user@host  [default: seetacloud-v800]"),
        click.option("--datapath", help="server data root holding datasets/ and experiments/  "
                                        "[default: /root/autodl-tmp/datapath]"),
        click.option("--dataset-name", multiple=True, default=("Flickr30k-CN",), show_default=True,
                     callback=_check_dataset_name, help="dataset directory under DATAPATH/datasets; repeatable: "
                                                        "each checkpoint is evaluated on each"),
        click.option("--split", type=click.Choice(SPLITS), multiple=True, default=("valid",), show_default=True,
                     callback=lambda ctx, param, value: tuple(dict.fromkeys(value)),
                     help="repeatable: checkpoints x datasets x splits, each cell its own evaluation"),
        click.option("--model-path", help="checkpoint on the server, e.g. DATAPATH/experiments/"
                                          "<name>/checkpoints/epoch_latest.pt (relative: to DATAPATH); or a "
                                          "checkpoints directory or a quoted glob ('.../epoch_*.pt'): every "
                                          "checkpoint in it, by epoch, epoch_latest.pt last"),
        click.option("--label", callback=_check_label, metavar="NAME",
                     help="the name --model-path's results are kept and shown under  [default: the experiment "
                          "folder, plus @<file stem> for any file but epoch_latest.pt, e.g. team_distill@epoch_5]"),
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
        click.option("--executor", type=click.Choice(tuple(EXECUTORS)),
                     help="how runs start: ssh (a detached process on the host) or slurm (one Slurm job per "
                          "evaluation, submitted on the host as login node; see the config's slurm section)  "
                          "[default: ssh]"),
        click.option("--knn", type=click.Choice(KNN_MODES),
                     help="upstream: the two upstream KNN scripts; fast: evalkit's exact batched KNN, "
                          "same prediction files, much faster on large galleries  [default: upstream]"),
        click.option("--image-to-image", is_flag=True, default=None,
                     help="also image→image: R@1/5/10 and mAP@10 from the image features, relevance by "
                          "texts listing several images (or DATASET/<split>_imgs_labels.jsonl)  [default: off]"),
        click.option("--skip-text-to-image", is_flag=True, help="skip text→image KNN and recall"),
        click.option("--skip-image-to-text", is_flag=True, help="skip image→text KNN and recall"),
        click.option("--dry-run", is_flag=True, help="print the exact remote commands; run nothing"),
        click.option("--detach", is_flag=True,
                     help="start the run on the server and return at once with its run id "
                          "(then: python -m evalkit attach RUN)"),
        click.option("--json", "json_output", is_flag=True,
                     help="print one machine-readable summary on stdout; everything else on stderr"),
        click.option("-v", "--verbose", is_flag=True, help="also stream the upstream scripts' output and each remote command (by default they go to the log only)"),
        debug_option,
    ]
    for option in reversed(options):
        command = option(command)
    return reference_option(command)


def records_options(command: Callable) -> Callable:
    """Where the local run records are: RESULTS_DIR/runs/ (from --results-dir or --config)."""
    command = debug_option(command)
    command = click.option("--results-dir", help="local results folder holding runs/  [default: results]")(command)
    return config_option("YAML config (for its results_dir)")(command)


def parse(flags: dict[str, Any], stages: tuple[str, ...] = STAGES, read_layouts: bool = True
          ) -> tuple[Settings, list[Evaluation], RunOptions, Listing]:
    """The settings, one Evaluation per cell (each checkpoint named by --model / --model-path,
    a directory or glob listed on the server, on each dataset split), the run options, and what
    the listing saw (empty without a directory or glob). READ_LAYOUTS: see parse_request."""
    settings, scopes, wanted, options = parse_request(flags, stages, read_layouts)
    wanted, listing = _expanded(settings, wanted, scopes, will_evaluate=not options.dry_run)
    return settings, cells(settings.datapath, scopes, wanted), options, listing


def parse_request(flags: dict[str, Any], stages: tuple[str, ...] = STAGES, read_layouts: bool = True
                  ) -> tuple[Settings, list[Scope], list[Wanted], RunOptions]:
    """The settings, the dataset splits, the checkpoints as named (directories and globs not
    yet listed), the run options. With READ_LAYOUTS (not on a dry run), each dataset folder's
    layout on the server decides its task and split (zeroshot.scoped), said on stderr."""
    # a flag not given is None, so the config file decides; --image-to-image can only turn it on
    given = {name: flags.get(name) for name in _SETTING_FLAGS}
    settings = build_settings(flags.get("config"), dict(given, image_to_image=given["image_to_image"] or None))
    scopes = [Scope(dataset, split, stages, flags.get("skip_extraction", False), flags["skip_text_to_image"],
                    flags["skip_image_to_text"], flags["force_extraction"])
              for dataset in flags["dataset_name"] for split in flags["split"]]
    _check_flag_combinations(scopes[0])
    wanted = [Wanted(entry.path, flags["vision_model"] or entry.vision_model or settings.vision_model,
                     flags["text_model"] or entry.text_model or settings.text_model, registry_name=entry.name)
              for entry in _registered(settings, flags["models"])]
    if flags.get("model_path") or not wanted:
        if not flags.get("model_path") and ("extract" in stages or flags.get("dry_run")):
            raise click.UsageError("--model-path or --model is required: the checkpoint to evaluate, e.g. "
                                   f"{settings.datapath}/experiments/<name>/checkpoints/epoch_latest.pt")
        wanted.append(Wanted(flags.get("model_path") or "", settings.vision_model, settings.text_model,
                             label=flags.get("label") or ""))
    elif flags.get("label"):
        raise click.UsageError("--label names the checkpoint of --model-path; a `models:` entry is labelled "
                               "by its name")
    if flags.get("label") and is_checkpoint_set(flags.get("model_path") or ""):
        raise click.UsageError("--label names one checkpoint; each checkpoint of a directory or glob is "
                               "labelled EXPERIMENT@epoch_N (EXPERIMENT for epoch_latest.pt): drop --label")
    options = RunOptions(flags.get("dry_run", False), flags.get("detach", False), flags.get("gpus") or (),
                         flags.get("json_output", False), flags.get("verbose", False),
                         flags.get("references") or (),
                         # extracting again means evaluating again: nothing kept can stand for it
                         flags.get("reevaluate", False) or flags["force_extraction"])
    if read_layouts and not options.dry_run:
        scopes = with_tasks(settings, scopes)
    return settings, scopes, wanted, options


def with_tasks(settings: Settings, scopes: list[Scope]) -> list[Scope]:
    """Each scope with the task its dataset folder is laid out for; classification said first."""
    from ..dataset_layout import look  # the SSH side loads only when a command runs
    from ..zeroshot import scoped_all
    found, notes = scoped_all(scopes, look(settings, [scope.dataset for scope in scopes]))
    err = view.make_consoles(to_stderr=True)[0]
    for note in notes:
        view.show_note(err, note)
    return found


def _expanded(settings: Settings, wanted: list[Wanted], scopes: list[Scope],
              will_evaluate: bool) -> tuple[list[Wanted], Listing]:
    """Each checkpoints directory or glob as its files, listed on the server (one command);
    the aliases left out are said on stderr. WILL_EVALUATE: not a dry run."""
    from ..checkpoint_sets import expand  # the SSH side loads only for a sweep
    wanted, listing = expand(settings, wanted, scopes, will_evaluate)
    err = view.make_consoles(to_stderr=True)[0]
    for found in listing.sets:
        view.show_checkpoint_set(err, found.searched, len(found.checkpoints), [describe_alias(a) for a in found.aliases],
                                 [*describe_held(found), *(f"skipped {note}" for note in found.skipped)])
    return wanted, listing


def _check_flag_combinations(scope: Scope) -> None:
    if scope.skip_text_to_image and scope.skip_image_to_text:
        raise click.UsageError("--skip-text-to-image and --skip-image-to-text together leave nothing "
                               "to evaluate; drop one of them")
    if scope.skip_extraction and scope.force_extraction:
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
