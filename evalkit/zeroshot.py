"""PURE: zero-shot image classification, as Chinese-CLIP evaluates it
(cn_clip/eval/zeroshot_evaluation.py, run by remote/zeroshot.py with upstream's own functions).

A dataset is classified, not retrieved, when its folder has upstream's classification layout:
DATAPATH/datasets/<name>/label_cn.txt (class k's name on line k) beside <split>/<class id>/
image folders (torchvision's ImageFolder). This module decides that from what the server has
(Layout), plans the run, reads its result and the preflight's answer.
"""
from __future__ import annotations

import dataclasses
import posixpath
import shlex
from dataclasses import dataclass

from .config import Settings
from .errors import MissingInput, PreflightFailed
from .evaluation import CLASSIFICATION, RETRIEVAL, SPLITS, Evaluation, Scope
from .progress import last_marked_json
from .server import PROVENANCE, ZEROSHOT, ServerCall, in_server_env, script_path, upstream_call
from .plan import MANIFEST_NAME, OutputFiles, Plan, Step, checkpoint_output_dir

LABEL_FILE = "label_cn.txt"
RESULT_FILE = "zeroshot_classification_results.json"
PREDICTIONS_FILE = "zeroshot_top5.jsonl"  # each image's target and top-5: small, stays on the server
STEP = "zeroshot"
MARKER = b"EVALKIT-ZEROSHOT "
# the published numbers' metric is top-1 unless said here (Results.md; issue #77 of Chinese-CLIP)
METRICS = ("top1", "top5", "mean_per_class_recall")
METRIC_TITLES = {"top1": "top-1", "top5": "top-5", "mean_per_class_recall": "mean per-class recall"}


@dataclass(frozen=True)
class Layout:
    """What DATAPATH/datasets/<name>/ holds, as far as the task and split are concerned."""

    dataset: str
    has_labels: bool                 # label_cn.txt
    folders: tuple[str, ...] = ()    # which of SPLITS are folders (classification's image folders)


@dataclass(frozen=True)
class Classification:
    """One run's zero-shot numbers, in percent, as remote/zeroshot.py wrote them."""

    top1: float
    top5: float
    mean_per_class_recall: float
    num_images: int
    num_classes: int
    templates: str

    @classmethod
    def from_result(cls, result: dict) -> "Classification":
        return cls(result["top1"], result["top5"], result["mean_per_class_recall"], result["num_images"],
                   result["num_classes"], result["templates"])


def dataset_root(settings: Settings, dataset: str) -> str:
    return posixpath.join(settings.datapath, "datasets", dataset)


def looked_at(settings: Settings, dataset: str) -> dict[str, str]:
    """What the layout look stats: the label file and each split's folder (name -> server path)."""
    root = dataset_root(settings, dataset)
    return {"labels": posixpath.join(root, LABEL_FILE), **{split: posixpath.join(root, split) for split in SPLITS}}


def scoped(scope: Scope, layout: Layout) -> tuple[Scope, str | None]:
    """SCOPE with the task the folder's layout says and, for classification, the split folder
    used (test/ when the one asked for is missing: the seed's default --split valid must not stop
    a dataset that only has test/); the note saying so, first thing, or None for retrieval."""
    if not layout.has_labels:
        return scope, None
    if scope.stages != ("extract", "knn", "recall"):
        raise MissingInput(f"{scope.dataset} is a zero-shot classification dataset ({LABEL_FILE}): it is evaluated "
                           "in one step, not by --step", "run distillation_model_evaluation.py on it")
    split = scope.split if scope.split in layout.folders else "test" if "test" in layout.folders else None
    if split is None:
        raise MissingInput(f"{scope.dataset} has {LABEL_FILE} but no {scope.split}/ or test/ folder of class folders",
                           f"put its images in DATAPATH/datasets/{scope.dataset}/test/<class id>/ as upstream's "
                           "datasets are (ids zero-padded to 3 digits past 10 classes)")
    why = "" if split == scope.split else f" (there is no {scope.split}/ folder)"
    return (dataclasses.replace(scope, split=split, task=CLASSIFICATION),
            f"{scope.dataset}: zero-shot image classification ({LABEL_FILE} + {split}/ class folders), "
            f"split {split}{why}")


def scoped_all(scopes: list[Scope], layouts: dict[str, Layout]) -> tuple[list[Scope], list[str]]:
    """Every scope with its task and split, each cell once (valid and test may both become test)."""
    found, notes = [], []
    for scope in scopes:
        resolved, note = scoped(scope, layouts[scope.dataset]) if scope.dataset in layouts else (scope, None)
        if resolved not in found:
            found.append(resolved)
            if note and note not in notes:
                notes.append(note)
    return found, notes


def is_classification(evaluation: Evaluation) -> bool:
    return evaluation.task == CLASSIFICATION


def image_folder(settings: Settings, evaluation: Evaluation) -> str:
    return posixpath.join(dataset_root(settings, evaluation.dataset), evaluation.split)


def label_file(settings: Settings, evaluation: Evaluation) -> str:
    return posixpath.join(dataset_root(settings, evaluation.dataset), LABEL_FILE)


def build_plan(settings: Settings, evaluation: Evaluation) -> Plan:
    """Two steps: clear the last results, then remote/zeroshot.py evaluate (on the GPU)."""
    out = checkpoint_output_dir(settings, evaluation.dataset, evaluation.split, evaluation.checkpoint)
    files = OutputFiles(out, evaluation.split)
    result, predictions = files.path(RESULT_FILE), files.path(PREDICTIONS_FILE)
    stale = [result, files.query_hits, predictions, files.path(MANIFEST_NAME)]
    prepare = Step("prepare", "prepare output directory", "prepare",
                   f"mkdir -p {shlex.quote(out)} && rm -f {shlex.join(stale)}")
    args = ["evaluate", "--dataset", evaluation.dataset, "--images", image_folder(settings, evaluation),
            "--label-file", label_file(settings, evaluation), "--checkpoint", evaluation.checkpoint,
            "--vision-model", evaluation.vision_model, "--text-model", evaluation.text_model,
            "--context-length", str(settings.context_length), "--img-batch-size", str(settings.img_batch_size),
            "--device", "cpu" if settings.device == "cpu" else "cuda", "--num-workers",
            "0" if settings.device == "cpu" else "4", "--output", result, "--hits", files.query_hits,
            "--predictions", predictions]
    command = in_server_env(settings, upstream_call(settings, script_path(settings, ZEROSHOT), args))
    step = Step(STEP, "zero-shot classification (upstream's classifier and run())", "extract", command)
    return Plan(evaluation.label, evaluation.checkpoint, out, None, (prepare, step), {CLASSIFICATION: result}, files)


def check_call(settings: Settings, evaluation: Evaluation) -> ServerCall:
    """remote/zeroshot.py check: the preflight, and the provenance line (it imports provenance.py)."""
    from .provenance import HASH_CACHE  # provenance imports plan: kept out of this module's import
    root = settings.chinese_clip_dir
    device = ["--cpu"] if settings.device == "cpu" else ["--gpu", str(settings.gpu)]
    args = ("check", "--images", image_folder(settings, evaluation), "--label-file", label_file(settings, evaluation),
            "--checkpoint", evaluation.checkpoint, "--chinese-clip-dir", root,
            "--cache", posixpath.join(posixpath.dirname(script_path(settings, PROVENANCE)), HASH_CACHE), *device)
    return ServerCall(settings.python, script_path(settings, ZEROSHOT), args, (), (root, posixpath.join(root, "cn_clip")))


def check_command(settings: Settings, evaluation: Evaluation) -> str:
    return in_server_env(settings, check_call(settings, evaluation))


def refusal(exit_code: int, stdout: bytes, stderr: bytes, command: str) -> PreflightFailed | None:
    """The preflight's refusal (one sentence and its fix), or None when the dataset may run."""
    answer = last_marked_json(stdout, MARKER)
    if answer is None:
        tail = (stderr or stdout).decode("utf-8", "replace").strip().splitlines()[-3:]
        return PreflightFailed(f"the classification preflight did not answer (status {exit_code}): "
                               + (" / ".join(tail) or "no output"),
                               f"run it by hand to see why: {command}")
    found = answer.get("refusal")
    return PreflightFailed(found["message"], found["fix"]) if found else None


def result_of(recall: dict) -> dict | None:
    """A row's classification numbers (summary.json's recall[CLASSIFICATION]), or None."""
    return recall.get(CLASSIFICATION)


def clip_benchmark_metrics(recall: dict) -> dict[str, float]:
    """CLIP_benchmark's zeroshot_classification keys, as fractions: acc1, acc5, mean_per_class_recall."""
    found = result_of(recall)
    if not found:
        return {}
    return {"acc1": round(found["top1"] / 100, 10), "acc5": round(found["top5"] / 100, 10),
            "mean_per_class_recall": round(found["mean_per_class_recall"] / 100, 10)}


__all__ = ["CLASSIFICATION", "RETRIEVAL", "Layout", "Classification", "scoped", "scoped_all", "build_plan"]
