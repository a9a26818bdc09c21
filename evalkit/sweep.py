"""PURE: a sweep, the checkpoints one --model-path or `models:` path names when it is a
checkpoints directory or a glob, and the matrix of cells (checkpoints x datasets x splits).

The server lists the files (remote/list_checkpoints.py, through checkpoint_sets.py); here they
are ordered by epoch with epoch_latest.pt last, and a file holding the same bytes as another
(an alias: usually epoch_latest.pt and the last epoch) is kept once.

The same listing describes each cell's dataset split files, so that a cell evaluated before can
be told unchanged (cell_state) without a command of its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field

from .config import Settings
from .errors import MissingInput
from .evaluation import LATEST_STEM, Evaluation, Scope, Wanted, checkpoint_path, resolve
from .plan import build_plan, dataset_paths, labels_path

CHECKPOINT_SUFFIXES = (".pt", ".pth")
GLOB_MAGIC = re.compile(r"[*?[]")
EPOCH_STEM = re.compile(r"epoch_(\d+)")


def is_checkpoint_set(model_path: str) -> bool:
    """A glob, or a path that is no checkpoint file (a checkpoints or experiment directory)."""
    return bool(GLOB_MAGIC.search(model_path)) or not model_path.rstrip("/").endswith(CHECKPOINT_SUFFIXES) \
        or model_path.endswith("/")


def stem_of(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def epoch_of_stem(stem: str) -> int | None:
    """epoch_5 -> 5; epoch_latest and any other name -> None."""
    found = EPOCH_STEM.fullmatch(stem)
    return int(found.group(1)) if found else None


def order_key(path: str) -> tuple:
    """Numbered epochs by number, then other files by name, epoch_latest.pt last."""
    stem = stem_of(path)
    epoch = epoch_of_stem(stem)
    if epoch is not None:
        return (0, epoch, stem)
    return (2, 0, stem) if stem == LATEST_STEM else (1, 0, stem)


@dataclass(frozen=True)
class Listed:
    """One file as the server described it."""

    path: str
    size: int
    mtime_ns: int
    inode: str = ""
    is_zip: bool = True
    sha256: str | None = None

    @classmethod
    def from_dict(cls, found: dict) -> "Listed":
        return cls(found["path"], int(found["size"]), int(found["mtime_ns"]), str(found.get("inode") or ""),
                   bool(found.get("zip", True)), found.get("sha256"))

    def same_bytes_as(self, other: "Listed") -> bool:
        if self.size != other.size:
            return False
        return bool(self.inode and self.inode == other.inode) or self.mtime_ns == other.mtime_ns \
            or bool(self.sha256 and self.sha256 == other.sha256)


@dataclass(frozen=True)
class Alias:
    """PATH holds the same bytes as KEPT, which alone is evaluated."""

    path: str
    kept: str


@dataclass(frozen=True)
class CheckpointSet:
    """What one pattern names: the files to evaluate, in order, and the aliases left out."""

    pattern: str
    searched: str
    checkpoints: tuple[str, ...]
    aliases: tuple[Alias, ...] = ()
    files: tuple[Listed, ...] = ()  # the checkpoints' own descriptions, in the same order


@dataclass(frozen=True)
class Listing:
    """What one listing command saw: the checkpoint sets, and the size, mtime and inode of each
    dataset split file asked about (None: missing)."""

    sets: tuple[CheckpointSet, ...] = ()
    files: dict[str, dict | None] = field(default_factory=dict)

    def checkpoint(self, path: str) -> Listed | None:
        return next((entry for found in self.sets for entry in found.files if entry.path == path), None)


def choose(pattern: str, kind: str, searched: str, listed: list[Listed]) -> CheckpointSet:
    """The files in epoch order, each content once: an alias is dropped in favour of the file
    with an epoch number (epoch_latest.pt comes last, so the numbered one is kept)."""
    if not listed:
        raise MissingInput(_nothing_found(pattern, kind, searched),
                           "check the path (a checkpoints directory, or a quoted glob such as "
                           "'.../checkpoints/epoch_*.pt') with: ls on the server")
    kept: list[Listed] = []
    aliases: list[Alias] = []
    for entry in sorted(listed, key=lambda item: order_key(item.path)):
        twin = next((other for other in kept if entry.same_bytes_as(other)), None)
        if twin is None:
            kept.append(entry)
        else:
            aliases.append(Alias(entry.path, twin.path))
    return CheckpointSet(pattern, searched, tuple(entry.path for entry in kept), tuple(aliases), tuple(kept))


def _nothing_found(pattern: str, kind: str, searched: str) -> str:
    if kind == "glob":
        return f"the glob {pattern} matches no checkpoint file on the server"
    if kind == "directory":
        return (f"no checkpoint (*{', *'.join(CHECKPOINT_SUFFIXES)}) in the directory {searched} on the server")
    return f"{pattern} is neither a checkpoint file, a directory nor a glob matching one on the server"


def describe_alias(alias: Alias) -> str:
    return (f"{posixpath.basename(alias.path)} has the same content as {posixpath.basename(alias.kept)}: "
            f"evaluated once, as {posixpath.basename(alias.kept)} ({posixpath.dirname(alias.path)})")


def expanded(wanted: list[Wanted], sets: dict[str, CheckpointSet], datapath: str) -> list[Wanted]:
    """WANTED with each checkpoint set (keyed by its absolute pattern) replaced by its files,
    each keeping its `models:` name, so that labels become NAME@epoch_N."""
    found: list[Wanted] = []
    for item in wanted:
        pattern = checkpoint_path(datapath, item.model_path) if item.model_path else ""
        if pattern not in sets:
            found.append(item)
            continue
        found += [Wanted(path, item.vision_model, item.text_model, item.registry_name)
                  for path in sets[pattern].checkpoints]
    return found


def cells(datapath: str, scopes: list[Scope], wanted: list[Wanted]) -> list[Evaluation]:
    """Checkpoints x datasets x splits, checkpoint by checkpoint: each cell is one isolated
    evaluation with its own server directory and results folder."""
    per_scope = [resolve(datapath, scope, wanted) for scope in scopes]
    return [cell for cells_of_one in zip(*per_scope) for cell in cells_of_one]


def is_settled(entry: Listed, server_now_ns: int, settle: float) -> bool:
    """--watch takes a file only when complete: untouched for SETTLE seconds by the server's
    clock (size and mtime unchanged) and its zip directory, which torch.save writes last, readable."""
    return entry.is_zip and server_now_ns - entry.mtime_ns >= settle * 1e9


def reached(checkpoints: list[str], until_epoch: int | None) -> bool:
    """--until-epoch N: the watch ends once a checkpoint of epoch N or later was evaluated."""
    epochs = [epoch_of_stem(stem_of(path)) for path in checkpoints]
    return until_epoch is not None and any(epoch is not None and epoch >= until_epoch for epoch in epochs)


def dataset_files(settings: Settings, scopes: list[Scope]) -> list[str]:
    """The server files a cell's numbers read beside its checkpoint: each split's image LMDB
    (its data file), its texts and, with image->image, its labels file."""
    found: list[str] = []
    for scope in scopes:
        images, texts = dataset_paths(settings, scope.dataset, scope.split)
        found += [posixpath.join(images, "data.mdb"), texts]
        if settings.image_to_image:
            found.append(labels_path(settings, scope.dataset, scope.split))
    return list(dict.fromkeys(found))


def cell_key(settings: Settings, cell: Evaluation) -> str:
    """Which cell a record is of: the server, its datapath, the dataset split, the checkpoint."""
    return json.dumps([settings.host, settings.datapath, cell.dataset, cell.split, cell.checkpoint],
                      ensure_ascii=False)


def cell_state(settings: Settings, cell: Evaluation, listing: Listing) -> dict | None:
    """What CELL's numbers are made of, as far as the listing and the plan tell: its label, its
    checkpoint's size, mtime and inode, its dataset split files' and the digest of the commands
    planned for it on any GPU (models, batch sizes, KNN, directions, env: all that reaches the
    upstream scripts). None when it has no numbers to keep (no recall) or its checkpoint was not
    listed (a file named alone)."""
    listed = listing.checkpoint(cell.checkpoint)
    if listed is None or "recall" not in cell.stages:
        return None
    files = dataset_files(settings, [Scope(cell.dataset, cell.split)])
    return {"label": cell.label,
            "checkpoint": {"size": listed.size, "mtime_ns": listed.mtime_ns, "inode": listed.inode},
            "dataset_files": {path: listing.files.get(path) for path in files},
            "commands": commands_digest(settings, cell)}


def commands_digest(settings: Settings, cell: Evaluation) -> str:
    plan = build_plan(dataclasses.replace(settings, gpu=0), cell)  # a queue may put a cell on any GPU
    return hashlib.sha256(json.dumps([step.command for step in plan.steps]).encode("utf-8")).hexdigest()


def is_unchanged(recorded: dict | None, state: dict | None) -> bool:
    """Whether a cell's record (cell_state when it was evaluated, plus its run) still holds."""
    return recorded is not None and state is not None and {key: recorded.get(key) for key in state} == state
