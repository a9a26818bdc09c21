"""PURE: what to evaluate, resolved once at the edge and then passed down unchanged.

An Evaluation is one checkpoint on one dataset split: its absolute server path, its identity
(the label its results are kept under), its towers and the stages to run. RunOptions says how
the command runs (dry run, detached, which GPUs, what it prints).
"""
from __future__ import annotations

import posixpath
import re
import unicodedata
from dataclasses import dataclass

from .errors import ConfigError
from .file_names import NAME_MAX, byte_length, fits

SPLITS = ("valid", "test")
STAGES = ("extract", "knn", "recall")
DIRECTIONS = ("text_to_image", "image_to_text")
# what an evaluation measures, decided from the dataset folder's layout (zeroshot.scoped)
RETRIEVAL = "retrieval"
CLASSIFICATION = "zeroshot_classification"
DEFAULT_VISION_MODEL = "ViT-B-16"
DEFAULT_TEXT_MODEL = "RoBERTa-wwm-ext-base-chinese"
LATEST_STEM = "epoch_latest"  # what cn_clip training keeps overwriting: its label is the experiment's
# cn_clip training saves epoch{N}.pt (other trainers epoch_N.pt): one reading for the whole program
EPOCH_IN_NAME = re.compile(r"epoch[_-]?(\d+)", re.IGNORECASE)
LATEST_IN_NAME = re.compile(r"epoch[_-]?latest", re.IGNORECASE)
# how an evaluation's checkpoint was chosen (Evaluation.chosen_by)
NAMED = "named"                          # --model-path or --model
LAST_EXTRACT = "your last extract step"  # knn / recall without --model-path (store.current_checkpoint)
SERVER_LATEST = "the server's most recent extraction"  # the same when this user never extracted


@dataclass(frozen=True)
class Evaluation:
    """One checkpoint on one dataset split, resolved.

    CHECKPOINT is an absolute, normalised server path, or "" for quick_evaluation's knn / recall
    without --model-path: then the checkpoint of this user's last extract step (store.py), else
    the server's most recent extraction (readiness.locate); CHOSEN_BY says which. LABEL is a
    registry name, else derived from the checkpoint.
    """

    dataset: str
    split: str
    checkpoint: str
    vision_model: str = DEFAULT_VISION_MODEL
    text_model: str = DEFAULT_TEXT_MODEL
    label: str = ""
    stages: tuple[str, ...] = STAGES
    skip_extraction: bool = False
    skip_text_to_image: bool = False
    skip_image_to_text: bool = False
    force_extraction: bool = False
    chosen_by: str = NAMED
    # which experiment's row this is and the training epoch and step its checkpoint holds (read
    # from the file by a sweep's listing, else the epoch in its name): kept in summary.json, so a
    # row is never placed by re-parsing its label
    experiment: str = ""
    epoch: int | None = None
    step: int | None = None
    task: str = RETRIEVAL  # or CLASSIFICATION: zero-shot image classification (zeroshot.py)

    def __post_init__(self) -> None:
        if self.checkpoint and not posixpath.isabs(self.checkpoint):
            raise ValueError(f"Evaluation needs an absolute checkpoint path, not {self.checkpoint!r}: "
                             "resolve it with checkpoint_path()")
        if not self.label and self.checkpoint:
            object.__setattr__(self, "label", checkpoint_label(self.checkpoint))
        if not self.experiment and self.checkpoint:
            object.__setattr__(self, "experiment", experiment_of(self.checkpoint))
        if self.epoch is None and self.checkpoint:
            object.__setattr__(self, "epoch", epoch_in_name(self.checkpoint))

    @property
    def directions(self) -> list[str]:
        skipped = {"text_to_image": self.skip_text_to_image, "image_to_text": self.skip_image_to_text}
        return [direction for direction in DIRECTIONS if not skipped[direction]]

    @property
    def runs_extraction(self) -> bool:
        return "extract" in self.stages and not self.skip_extraction

    @property
    def runs_every_stage(self) -> bool:
        return tuple(self.stages) == STAGES


@dataclass(frozen=True)
class RunOptions:
    """How an evaluation command runs, from its flags."""

    dry_run: bool = False
    detach: bool = False
    gpus: tuple[int, ...] = ()   # several: evaluations share them as a work queue
    json_output: bool = False
    verbose: bool = False
    references: tuple = ()       # references.Reference rows to show beside the results (--reference)
    reevaluate: bool = False     # a sweep's unchanged cells run again (unchanged.py)


@dataclass(frozen=True)
class Wanted:
    """One checkpoint as the user named it (--model-path, or a `models:` entry), before resolution."""

    model_path: str
    vision_model: str
    text_model: str
    registry_name: str = ""  # a `models:` name: it stands for the experiment in the label
    label: str = ""          # --label: the label, exactly
    epoch: int | None = None  # the training epoch and step the file holds, when a listing read them
    step: int | None = None


@dataclass(frozen=True)
class Scope:
    """What every evaluation of one command shares: dataset, split, stages and their switches."""

    dataset: str
    split: str
    stages: tuple[str, ...] = STAGES
    skip_extraction: bool = False
    skip_text_to_image: bool = False
    skip_image_to_text: bool = False
    force_extraction: bool = False
    task: str = RETRIEVAL


def checkpoint_label(checkpoint: str, name: str | None = None) -> str:
    """Where results are kept and how tables name them: the experiment (the folder above
    checkpoints/), or NAME (a registry name) in its place; `@<file stem>` is added for any file
    but epoch_latest.pt, so that the epochs of one experiment never share a label
    (team_distill, team_distill@epoch_5). A file outside a checkpoints/ folder: NAME, else its stem."""
    experiment, stem = _experiment(checkpoint), _stem(checkpoint)
    if not experiment:
        return name or stem
    return (name or experiment) if stem == LATEST_STEM else f"{name or experiment}@{stem}"


def epoch_in_name(path: str) -> int | None:
    """epoch5.pt, epoch_5.pt, .../epoch5 -> 5; epoch_latest.pt and any other name -> None."""
    found = EPOCH_IN_NAME.fullmatch(_stem(path))
    return int(found.group(1)) if found else None


def is_latest_name(path: str) -> bool:
    """epoch_latest.pt: the file cn_clip training overwrites at every epoch."""
    return bool(LATEST_IN_NAME.fullmatch(_stem(path)))


def experiment_of(checkpoint: str, name: str | None = None) -> str:
    """The experiment a checkpoint's row belongs to: NAME (a registry name), else the folder
    above checkpoints/, else the file's stem (a file on its own is an experiment of one)."""
    return name or _experiment(checkpoint) or _stem(checkpoint)


def experiment_name(checkpoint: str) -> str:
    """The experiment folder (parent of checkpoints/), else the checkpoint's file stem."""
    return _experiment(checkpoint) or _stem(checkpoint)


def _experiment(checkpoint: str) -> str:
    parent = posixpath.dirname(checkpoint.rstrip("/"))
    if posixpath.basename(parent) != "checkpoints":
        return ""
    experiment = posixpath.basename(posixpath.dirname(parent))
    return experiment if experiment not in ("", ".", "..") else ""


def _stem(checkpoint: str) -> str:
    stem = posixpath.splitext(posixpath.basename(checkpoint.rstrip("/")))[0]
    return stem if stem not in ("", ".", "..") else "checkpoint"


def checkpoint_path(datapath: str, model_path: str) -> str:
    """A relative --model-path is taken relative to DATAPATH, as the server has no cwd for us."""
    if posixpath.isabs(model_path):
        return posixpath.normpath(model_path)
    return posixpath.normpath(posixpath.join(datapath, model_path))


def resolve(datapath: str, scope: Scope, wanted: list[Wanted]) -> list[Evaluation]:
    """One Evaluation per checkpoint wanted; refuses two names for one checkpoint, which would
    write the same server directory at once."""
    evaluations = []
    for item in wanted:
        checkpoint = checkpoint_path(datapath, item.model_path) if item.model_path else ""
        label = item.label or (checkpoint_label(checkpoint, item.registry_name) if checkpoint else "")
        experiment = item.label or (experiment_of(checkpoint, item.registry_name) if checkpoint else "")
        evaluations.append(Evaluation(scope.dataset, scope.split, checkpoint, item.vision_model, item.text_model,
                                      label, scope.stages, scope.skip_extraction, scope.skip_text_to_image,
                                      scope.skip_image_to_text, scope.force_extraction, experiment=experiment,
                                      epoch=item.epoch, step=item.step, task=scope.task))
    _check_distinct(evaluations)
    return evaluations


def _check_distinct(evaluations: list[Evaluation]) -> None:
    """Two names for one checkpoint would write the same server directory at once; one label
    for two checkpoints would keep only one's results."""
    by_checkpoint: dict[str, str] = {}
    by_label: dict[str, tuple[str, str]] = {}
    for evaluation in (e for e in evaluations if e.checkpoint):
        _check_label_fits(evaluation)
        if evaluation.checkpoint in by_checkpoint:
            raise ConfigError(f"{by_checkpoint[evaluation.checkpoint]!r} and {evaluation.label!r} are the same "
                              f"checkpoint ({evaluation.checkpoint})", "name each checkpoint once (check the `models:` paths)")
        folder = folder_key(evaluation.label)
        if folder in by_label:
            kept_label, kept_checkpoint = by_label[folder]
            same = "the label" if kept_label == evaluation.label else \
                f"one results folder on a case-insensitive disk (macOS, Windows): {kept_label!r} and"
            raise ConfigError(f"two checkpoints would share {same} {evaluation.label!r}: "
                              f"{kept_checkpoint} and {evaluation.checkpoint}",
                              "give one of them its own --label NAME, or another `models:` name")
        by_checkpoint[evaluation.checkpoint] = evaluation.label
        by_label[folder] = (evaluation.label, evaluation.checkpoint)


def _check_label_fits(evaluation: Evaluation) -> None:
    """The label names the results folder: one too long for a file name would fail only once the
    run is over, its results not pulled."""
    if not fits(evaluation.label):
        raise ConfigError(f"the label {evaluation.label!r} of {evaluation.checkpoint} is {byte_length(evaluation.label)} "
                          f"bytes in UTF-8, and a results folder's name can be at most {NAME_MAX}",
                          "give it a shorter --label NAME (or a shorter `models:` name)")


def folder_key(label: str) -> str:
    """What a label's results folder is on any laptop's disk: macOS and Windows compare names
    without case (and macOS without Unicode normal form), so `Exp` and `exp` are one folder."""
    return unicodedata.normalize("NFC", label).casefold()
