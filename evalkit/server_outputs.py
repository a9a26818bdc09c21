"""PURE: what the server's output directory holds, and whether a step may use it.

Each checkpoint's output directory has a manifest.json, written only after an extraction
finished with complete feature files. It records what the features were made from (checkpoint
path, size and mtime; models; context length; dataset, split, their counts and the size and mtime
of the split's image LMDB and texts file) and each feature
file's size and mtime, so that later steps can prove the two feature files still belong together.
KNN adds, per direction, the features it read and the prediction file it wrote.

The facts come from remote/inspect_outputs.py; every decision is made here, without I/O.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .config import Settings
from .errors import MissingInput, OutputsNotReady, RemoteStepFailed
from .evaluation import Evaluation
from .plan import DIRECTION_TITLES, PREDICTION_FILES
from .progress import last_marked_json

MANIFEST_VERSION = 1
FACTS_MARKER = b"EVALKIT-FACTS "  # remote/inspect_outputs.py prints its JSON after this
TAIL_LINES = 30
FEATURE_FILES = {"image_feats": "image", "text_feats": "text"}


@dataclass(frozen=True)
class FileFacts:
    size: int
    mtime_ns: int
    lines: int
    partial_last_line: bool

    @property
    def fingerprint(self) -> dict:
        return {"size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class ServerFacts:
    """What inspect_outputs.py found on the server."""

    images_path: str
    image_count: int | None
    images_problem: str | None
    texts_path: str
    text_count: int | None
    checkpoint: dict | None
    out_dir: str | None
    manifest: dict | None
    manifest_problem: str | None
    files: dict[str, FileFacts | None]
    dataset_files: dict | None = None  # size and mtime of the split's image LMDB and texts file

    @classmethod
    def from_dict(cls, data: dict) -> "ServerFacts":
        files = {name: FileFacts(**facts) if facts else None for name, facts in data["files"].items()}
        return cls(data["images"]["path"], data["images"]["count"], data["images"]["problem"],
                   data["texts"]["path"], data["texts"]["count"], data["checkpoint"],
                   data["out_dir"], data["manifest"], data["manifest_problem"], files, data.get("dataset_files"))

    @property
    def manifest_checkpoint(self) -> str:
        return str((self.manifest or {}).get("checkpoint", {}).get("path", "?"))


def check_dataset(facts: ServerFacts, evaluation: Evaluation) -> None:
    """The split's image LMDB and texts JSONL must exist before anything runs."""
    where = f"split {evaluation.split!r} of dataset {evaluation.dataset!r}"
    fix = "check --dataset-name and --split against the folders under DATAPATH/datasets/"
    if facts.images_problem == "missing":
        raise MissingInput(f"{where} is not on the server: no image LMDB at {facts.images_path}", fix)
    if facts.text_count is None:
        raise MissingInput(f"{where} is not on the server: no texts file {facts.texts_path}", fix)
    if facts.images_problem:
        raise MissingInput(f"cannot count the images of {where} ({facts.images_path}): "
                           f"{facts.images_problem}", "check the LMDB and the server env's lmdb module")


def check_checkpoint(facts: ServerFacts) -> None:
    checkpoint = facts.checkpoint or {}
    if not checkpoint.get("exists"):
        raise MissingInput(f"checkpoint not found on the server: {checkpoint.get('path')}",
                           "check --model-path (a relative path is taken relative to DATAPATH)")
    if not checkpoint.get("readable"):
        raise MissingInput(f"checkpoint is not readable on the server: {checkpoint['path']}",
                           "fix its permissions, or evaluate as its owner")


def extraction_inputs(settings: Settings, evaluation: Evaluation, facts: ServerFacts) -> dict:
    """What the features depend on; equal inputs mean the features can be reused."""
    checkpoint = facts.checkpoint or {}
    return {"checkpoint": {"path": checkpoint.get("path"), "size": checkpoint.get("size"),
                           "mtime_ns": checkpoint.get("mtime_ns"), "inode": checkpoint.get("inode")},
            "vision_model": evaluation.vision_model, "text_model": evaluation.text_model,
            "context_length": settings.context_length}


def reuse_refusal(settings: Settings, evaluation: Evaluation, facts: ServerFacts) -> str | None:
    """None when complete features of exactly these inputs exist; else why they can't be reused."""
    manifest = facts.manifest
    if not manifest:
        return "no earlier extraction"
    recorded = {key: manifest.get(key) for key in ("checkpoint", "vision_model", "text_model",
                                                   "context_length")}
    for key, wanted in extraction_inputs(settings, evaluation, facts).items():
        if recorded[key] != wanted:
            return f"the {key.replace('_', ' ')} changed since the last extraction"
    return feature_problem(facts)


def completeness_problem(facts: ServerFacts) -> str | None:
    """None when both feature files have one complete line per image / text of the split."""
    expected = {"image": facts.image_count, "text": facts.text_count}
    for name, kind in FEATURE_FILES.items():
        found = facts.files.get(name)
        if found is None:
            return f"the {kind} feature file is missing"
        if found.partial_last_line or found.lines != expected[kind]:
            return (f"the {kind} feature file is truncated: {found.lines} complete lines for "
                    f"{expected[kind]} {kind}s (an extraction stopped half way?)")
    return None


def feature_problem(facts: ServerFacts) -> str | None:
    """None when both feature files are complete and are the ones the manifest recorded."""
    problem = completeness_problem(facts)
    if problem:
        return problem
    manifest = facts.manifest or {}
    if (manifest.get("num_images"), manifest.get("num_texts")) != (facts.image_count, facts.text_count):
        return "the dataset changed since the extraction"
    rewritten = dataset_rewritten(manifest.get("dataset_files"), facts.dataset_files)
    if rewritten:
        return f"the dataset's {rewritten} changed since the extraction (same counts, new size or time)"
    changed = [kind for name, kind in FEATURE_FILES.items()
               if manifest.get("features", {}).get(name) != facts.files[name].fingerprint]
    if changed:
        return (f"the {' and '.join(changed)} feature file changed after evalkit extracted it from "
                f"{facts.manifest_checkpoint}: image and text features may come from different "
                "checkpoints")
    return None


DATASET_FILES = {"images": "image LMDB (data.mdb)", "texts": "texts file"}


def dataset_rewritten(recorded: dict | None, now: dict | None) -> str | None:
    """Which of the split's files differ from those the features were made of; None when none
    does, or when either side is unknown (a manifest from before this was recorded)."""
    if not recorded or not now:
        return None
    changed = [described for key, described in DATASET_FILES.items() if recorded.get(key) != now.get(key)]
    return " and ".join(changed) or None


def check_features(facts: ServerFacts, fix: str | None = None) -> None:
    """KNN may only read two complete feature files from one recorded extraction."""
    where = facts.out_dir
    if facts.manifest_problem:
        raise OutputsNotReady(f"the manifest in {where} is unreadable: {facts.manifest_problem}",
                              fix or "run --step extract --force-extraction again")
    if not facts.manifest:
        has_files = any(facts.files.get(name) for name in FEATURE_FILES)
        detail = ("its feature files have no manifest: the extraction did not finish, or was "
                  "made outside evalkit" if has_files else "nothing has been extracted there yet")
        raise OutputsNotReady(f"no complete features for {(facts.checkpoint or {}).get('path')} "
                              f"in {where}: {detail}",
                              fix or "run --step extract --model-path CHECKPOINT first")
    problem = feature_problem(facts)
    if problem:
        raise OutputsNotReady(f"cannot use the features in {where}: {problem}",
                              fix or f"run --step extract --force-extraction --model-path "
                                     f"{facts.manifest_checkpoint} again")
    _check_checkpoint_unchanged(facts, fix)


def _check_checkpoint_unchanged(facts: ServerFacts, fix: str | None) -> None:
    recorded = (facts.manifest or {}).get("checkpoint", {})
    current = facts.checkpoint or {}
    keys = ("size", "mtime_ns", "inode") if recorded.get("inode") else ("size", "mtime_ns")
    if current.get("exists") and [recorded.get(key) for key in keys] != [current.get(key) for key in keys]:
        raise OutputsNotReady(f"the checkpoint {current.get('path')} changed after its features "
                              f"were extracted (at {facts.manifest.get('extracted_at')})",
                              fix or "run --step extract again for this checkpoint")


def check_predictions(facts: ServerFacts, directions: list[str]) -> None:
    """Recall may only read predictions that KNN made from the current features."""
    knn = (facts.manifest or {}).get("knn", {})
    features = (facts.manifest or {}).get("features")
    for direction in directions:
        title = DIRECTION_TITLES[direction]
        found = facts.files.get(PREDICTION_FILES[direction])
        record = knn.get(direction)
        if found is None or record is None:
            raise OutputsNotReady(f"no {title} KNN predictions in {facts.out_dir} yet",
                                  "run --step knn first")
        if record.get("features") != features:
            raise OutputsNotReady(f"the {title} predictions in {facts.out_dir} were made from "
                                  "older features", "run --step knn again")
        if record.get("predictions") != found.fingerprint or found.partial_last_line:
            raise OutputsNotReady(f"the {title} predictions in {facts.out_dir} changed or are "
                                  "incomplete since KNN wrote them", "run --step knn again")


def predictions_reusable(facts: ServerFacts, planned: dict[str, str]) -> bool:
    """Were these directions' predictions made from the current features by exactly PLANNED's
    commands (same files, top-k, batch size, KNN program), and are they untouched since?"""
    try:
        check_predictions(facts, list(planned))
    except OutputsNotReady:
        return False
    knn = (facts.manifest or {}).get("knn", {})
    return all(knn[direction].get("command") == command for direction, command in planned.items())


def new_manifest(settings: Settings, evaluation: Evaluation, facts: ServerFacts, command: str,
                 extracted_at: str) -> dict:
    """The record of a finished extraction, from the facts gathered right after it."""
    return {"evalkit_manifest": MANIFEST_VERSION,
            **extraction_inputs(settings, evaluation, facts),
            "datapath": settings.datapath, "dataset": evaluation.dataset, "split": evaluation.split,
            "num_images": facts.image_count, "num_texts": facts.text_count,
            **({"dataset_files": facts.dataset_files} if facts.dataset_files else {}),
            "features": {name: facts.files[name].fingerprint for name in FEATURE_FILES
                         if facts.files.get(name)},
            "commands": {"extract": command}, "host": settings.host, "extracted_at": extracted_at,
            "knn": {}}


def with_knn(facts: ServerFacts, commands: dict[str, str], finished_at: str) -> dict:
    """The manifest plus a record of the predictions KNN just wrote, per direction."""
    manifest = dict(facts.manifest or {})
    knn = dict(manifest.get("knn", {}))
    for direction, command in commands.items():
        written = facts.files.get(PREDICTION_FILES[direction])
        knn[direction] = {"features": manifest.get("features"), "command": command,
                          "predictions": written.fingerprint if written else None,
                          "finished_at": finished_at}
    manifest["knn"] = knn
    return manifest


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def facts_from(ran: tuple[int, bytes, bytes], command: str) -> ServerFacts:
    """The inspector's facts from (exit status, stdout, stderr) of COMMAND."""
    exit_code, stdout, stderr = ran
    if exit_code != 0:
        tail = stderr.decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
        raise RemoteStepFailed(
            f"checking the server's files failed with status {exit_code}\ncommand: {command}\n"
            "its output:\n" + "\n".join(f"  {line}" for line in tail),
            "check the `activate` and `python` settings: the env must start in a login shell")
    return facts_printed(stdout)


def facts_printed(stdout: bytes) -> ServerFacts:
    """The facts in the inspector's output (a check step's, too)."""
    try:
        return ServerFacts.from_dict(last_marked_json(stdout, FACTS_MARKER))
    except (KeyError, TypeError) as exc:  # no marked line (None), or not the facts we expect
        raise RemoteStepFailed(f"the server's file check printed no facts: {stdout[-300:]!r}",
                               "rerun with --debug and report it") from exc
