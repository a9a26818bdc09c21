"""PURE: a sweep, the checkpoints one --model-path or `models:` path names when it is a
checkpoints directory or a glob, and the matrix of cells (checkpoints x datasets x splits).

The server lists the files (remote/list_checkpoints.py, through checkpoint_sets.py); here they
are ordered by the epoch in their names (epoch5.pt as cn_clip training writes it, or epoch_5.pt)
with epoch_latest.pt last, and a file proven to hold what another holds (an alias: usually
epoch_latest.pt and the last epoch) is kept once. Proof is the same inode, an equal SHA-256, or
the same training state (epoch, step and every tensor record equal); equal sizes and times only
tell the server where to look closer.

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
from .evaluation import CLASSIFICATION, Evaluation, Scope, Wanted, checkpoint_path, epoch_in_name, is_latest_name, resolve
from .plan import build_plan, dataset_paths, labels_path

CHECKPOINT_SUFFIXES = (".pt", ".pth")
GLOB_MAGIC = re.compile(r"[*?[]")


def is_checkpoint_set(model_path: str) -> bool:
    """A glob, or a path that is no checkpoint file (a checkpoints or experiment directory)."""
    return bool(GLOB_MAGIC.search(model_path)) or not model_path.rstrip("/").endswith(CHECKPOINT_SUFFIXES) \
        or model_path.endswith("/")


def stem_of(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def order_key(path: str) -> tuple:
    """Numbered epochs by number (epoch2.pt before epoch10.pt), then other files by name,
    epoch_latest.pt last."""
    stem, epoch = stem_of(path), epoch_in_name(path)
    if epoch is not None:
        return (0, epoch, stem)
    return (2, 0, stem) if is_latest_name(path) else (1, 0, stem)


@dataclass(frozen=True)
class Listed:
    """One file as the server described it."""

    path: str
    size: int
    mtime_ns: int
    inode: str = ""
    is_zip: bool = True
    sha256: str | None = None   # computed by the server only where another file may hold the same bytes
    epoch: int | None = None    # the training epoch and step the file holds (its data.pkl), when readable
    step: int | None = None
    state: str | None = None    # a digest of its training state, where another file holds the same epoch

    @classmethod
    def from_dict(cls, found: dict) -> "Listed":
        return cls(found["path"], int(found["size"]), int(found["mtime_ns"]), str(found.get("inode") or ""),
                   bool(found.get("zip", True)), found.get("sha256"), _int_or_none(found.get("epoch")),
                   _int_or_none(found.get("step")), found.get("state"))

    @property
    def held_epoch(self) -> int | None:
        """The file's epoch: the one in its name (what training wrote it as, and what people read),
        else the one read from it (epoch_latest.pt)."""
        named = epoch_in_name(self.path)
        return named if named is not None else self.epoch

    def proven_same_as(self, other: "Listed") -> str | None:
        """How this file is proven to hold what OTHER holds ('bytes' or 'state'), or None. Equal
        sizes and mtimes prove nothing: touch, cp -p, rsync -a and 1-second file systems give them."""
        if (self.inode and self.inode == other.inode) or (self.sha256 and self.sha256 == other.sha256):
            return "bytes"
        if self.state and self.state == other.state and self.epoch is not None \
                and (self.epoch, self.step) == (other.epoch, other.step):
            return "state"
        return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Alias:
    """PATH holds what KEPT holds (the same bytes, or the same training state saved again under
    another name), and only KEPT is evaluated."""

    path: str
    kept: str
    proof: str = "bytes"          # "bytes" or "state"
    epoch: int | None = None      # the training epoch and step both hold, when read
    step: int | None = None


@dataclass(frozen=True)
class CheckpointSet:
    """What one pattern names: the files to evaluate, in order, and the aliases left out."""

    pattern: str
    searched: str
    checkpoints: tuple[str, ...]
    aliases: tuple[Alias, ...] = ()
    files: tuple[Listed, ...] = ()  # the checkpoints' own descriptions, in the same order
    skipped: tuple[str, ...] = ()   # files the server could not list, each with why


@dataclass(frozen=True)
class Listing:
    """What one listing command saw: the checkpoint sets, and the size, mtime and inode of each
    dataset split file asked about (None: missing)."""

    sets: tuple[CheckpointSet, ...] = ()
    files: dict[str, dict | None] = field(default_factory=dict)

    def checkpoint(self, path: str) -> Listed | None:
        return next((entry for found in self.sets for entry in found.files if entry.path == path), None)


def choose(pattern: str, kind: str, searched: str, listed: list[Listed], skipped: tuple[str, ...] = ()
           ) -> CheckpointSet:
    """The files in epoch order, each content once: an alias is dropped in favour of the file
    with an epoch number (epoch_latest.pt comes last, so the numbered one is kept)."""
    if not listed:
        raise MissingInput(_nothing_found(pattern, kind, searched),
                           "check the path (a checkpoints directory, or a quoted glob such as "
                           "'.../checkpoints/epoch*.pt') with: ls on the server")
    return without_aliases(CheckpointSet(pattern, searched, (), skipped=skipped), listed)


def without_aliases(found: CheckpointSet, listed: list[Listed]) -> CheckpointSet:
    """FOUND with LISTED's files in epoch order, each proven alias left out."""
    kept: list[Listed] = []
    aliases: list[Alias] = []
    for entry in sorted(listed, key=lambda item: order_key(item.path)):
        twin, proof = next(((other, proof) for other in kept if (proof := entry.proven_same_as(other))),
                           (None, None))
        if twin is None:
            kept.append(entry)
        else:
            aliases.append(Alias(entry.path, twin.path, proof, twin.epoch, twin.step))
    return dataclasses.replace(found, checkpoints=tuple(entry.path for entry in kept), aliases=tuple(aliases),
                               files=tuple(kept))


def _nothing_found(pattern: str, kind: str, searched: str) -> str:
    if kind == "glob":
        return f"the glob {pattern} matches no checkpoint file on the server"
    if kind == "directory":
        return (f"no checkpoint (*{', *'.join(CHECKPOINT_SUFFIXES)}) in the directory {searched} on the server")
    return f"{pattern} is neither a checkpoint file, a directory nor a glob matching one on the server"


def describe_alias(alias: Alias) -> str:
    name, kept = posixpath.basename(alias.path), posixpath.basename(alias.kept)
    if alias.proof == "state":
        held = f"epoch {alias.epoch}" + (f", step {alias.step}" if alias.step is not None else "")
        return (f"{name} holds the same training state as {kept} ({held}): evaluated once, as {kept} "
                f"({posixpath.dirname(alias.path)})")
    return f"{name} has the same content as {kept}: evaluated once, as {kept} ({posixpath.dirname(alias.path)})"


def describe_held(found: CheckpointSet) -> list[str]:
    """Each kept file whose name is no epoch but which holds one (epoch_latest.pt ahead of the
    numbered files, as when training saves them every few epochs): its row is that epoch; and
    each whose name says another epoch than it holds (a renamed copy): its row is its name's."""
    notes = []
    for entry in found.files:
        named, name = epoch_in_name(entry.path), posixpath.basename(entry.path)
        held = f"epoch {entry.epoch}" + (f", step {entry.step}" if entry.step is not None else "")
        if named is None and entry.epoch is not None:
            notes.append(f"{name} holds {held}: evaluated as its own row")
        elif named is not None and entry.epoch is not None and named != entry.epoch:
            notes.append(f"{name} holds {held} by its contents: shown as epoch {named}, as its name says")
    return notes


def expanded(wanted: list[Wanted], sets: dict[str, CheckpointSet], datapath: str) -> list[Wanted]:
    """WANTED with each checkpoint set (keyed by its absolute pattern) replaced by its files,
    each keeping its `models:` name, so that labels become NAME@epoch_N."""
    found: list[Wanted] = []
    for item in wanted:
        pattern = checkpoint_path(datapath, item.model_path) if item.model_path else ""
        if pattern not in sets:
            found.append(item)
            continue
        found += [Wanted(entry.path, item.vision_model, item.text_model, item.registry_name,
                         epoch=entry.held_epoch, step=entry.step)
                  for entry in sets[pattern].files]
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


def reached(listing: Listing, until_epoch: int | None) -> bool:
    """--until-epoch N: the watch ends once a listed checkpoint holding epoch N or later (read
    from the file, else from its name) was evaluated."""
    epochs = [entry.held_epoch for found in listing.sets for entry in found.files]
    return until_epoch is not None and any(epoch is not None and epoch >= until_epoch for epoch in epochs)


def dataset_files(settings: Settings, scopes: list[Scope]) -> list[str]:
    """The server files a cell's numbers read beside its checkpoint: each split's image LMDB
    (its data file), its texts and, with image->image, its labels file."""
    found: list[str] = []
    for scope in scopes:
        if scope.task == CLASSIFICATION:  # its labels and its split's folder of class folders
            root = posixpath.join(settings.datapath, "datasets", scope.dataset)
            found += [posixpath.join(root, "label_cn.txt"), posixpath.join(root, scope.split)]
            continue
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
