"""PURE: settings + what to evaluate -> the exact upstream commands. No I/O, no clock.

Every value interpolated into a command is quoted here with shlex.quote, once; the only
shell code that is not quoted is the user's own `activate` setting.
"""
from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import dataclass

from .config import Settings

VISION_MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "RN50")
TEXT_MODELS = ("RoBERTa-wwm-ext-base-chinese", "RoBERTa-wwm-ext-large-chinese", "RBT3-chinese")
SPLITS = ("valid", "test")
STAGES = ("extract", "knn", "recall")
CPU_LAUNCHER_NAME = "cpu_launch.py"
T2I_RESULT = "text_to_image_results.json"
I2T_RESULT = "image_to_text_results.json"


@dataclass(frozen=True)
class Request:
    """What the user asked to evaluate."""

    dataset: str
    split: str
    model_path: str
    vision_model: str = "ViT-B-16"
    text_model: str = "RoBERTa-wwm-ext-base-chinese"
    skip_extraction: bool = False
    skip_text_to_image: bool = False
    skip_image_to_text: bool = False


@dataclass(frozen=True)
class Step:
    """One remote shell command; `stage` groups steps for quick_evaluation --step."""

    name: str
    title: str
    stage: str
    command: str


@dataclass(frozen=True)
class Plan:
    """The server paths and commands of one checkpoint's evaluation."""

    label: str
    checkpoint: str
    output_dir: str
    cpu_launcher: str | None
    steps: tuple[Step, ...]
    result_files: dict[str, str]  # direction -> server path of its result JSON


def checkpoint_label(checkpoint: str) -> str:
    """The experiment directory (parent of checkpoints/), else the checkpoint's file stem."""
    parent = posixpath.dirname(checkpoint.rstrip("/"))
    if posixpath.basename(parent) == "checkpoints":
        experiment = posixpath.basename(posixpath.dirname(parent))
        if experiment not in ("", ".", ".."):
            return experiment
    stem = posixpath.splitext(posixpath.basename(checkpoint))[0]
    return stem if stem not in ("", ".", "..") else "checkpoint"


def resolve_checkpoint(settings: Settings, model_path: str) -> str:
    """A relative --model-path is taken relative to datapath, as the server has no cwd for us."""
    if posixpath.isabs(model_path):
        return posixpath.normpath(model_path)
    return posixpath.normpath(posixpath.join(settings.datapath, model_path))


def checkpoint_output_dir(settings: Settings, dataset: str, split: str, checkpoint: str) -> str:
    """A directory of its own per checkpoint: label for people, a path hash so two never collide."""
    digest = hashlib.sha256(checkpoint.encode("utf-8")).hexdigest()[:8]
    leaf = f"{checkpoint_label(checkpoint)}-{digest}"
    return posixpath.join(settings.output_root, dataset, split, leaf)


def dataset_paths(settings: Settings, dataset: str, split: str) -> tuple[str, str]:
    """(image LMDB directory, texts JSONL) in upstream's layout under datapath."""
    root = posixpath.join(settings.datapath, "datasets", dataset)
    return posixpath.join(root, "lmdb", split, "imgs"), posixpath.join(root, f"{split}_texts.jsonl")


def build_plan(settings: Settings, request: Request) -> Plan:
    checkpoint = resolve_checkpoint(settings, request.model_path)
    out = checkpoint_output_dir(settings, request.dataset, request.split, checkpoint)
    launcher = posixpath.join(settings.output_root, ".evalkit", CPU_LAUNCHER_NAME) \
        if settings.device == "cpu" else None
    files = _OutputFiles(out, request.split)
    builder = _StepBuilder(settings, launcher)
    steps = [_prepare_step(settings, request, files)]
    results = {}
    if not request.skip_extraction:
        steps.append(builder.extract(request, checkpoint, files))
    if not request.skip_text_to_image:
        steps += [builder.knn_text_to_image(files), builder.evaluate_text_to_image(settings, request, files)]
        results["text_to_image"] = files.t2i_result
    if not request.skip_image_to_text:
        steps += [builder.knn_image_to_text(files), builder.transform_annotation(files),
                  builder.evaluate_image_to_text(files)]
        results["image_to_text"] = files.i2t_result
    return Plan(checkpoint_label(checkpoint), checkpoint, out, launcher,
                tuple(_in_stage_order(steps)), results)


def _in_stage_order(steps: list[Step]) -> list[Step]:
    """extract, then every KNN, then every recall: the order quick_evaluation's --step follows."""
    order = {"prepare": -1, **{stage: i for i, stage in enumerate(STAGES)}}
    return sorted(steps, key=lambda step: order[step.stage])


@dataclass(frozen=True)
class _OutputFiles:
    """Upstream's own file names, inside the checkpoint's output directory."""

    out: str
    split: str

    def path(self, name: str) -> str:
        return posixpath.join(self.out, name)

    @property
    def image_feats(self) -> str:
        return self.path(f"{self.split}_imgs.img_feat.jsonl")

    @property
    def text_feats(self) -> str:
        return self.path(f"{self.split}_texts.txt_feat.jsonl")

    @property
    def t2i_predictions(self) -> str:
        return self.path(f"{self.split}_predictions.jsonl")

    @property
    def i2t_predictions(self) -> str:
        return self.path(f"{self.split}_tr_predictions.jsonl")

    @property
    def texts_copy(self) -> str:
        return self.path(f"{self.split}_texts.jsonl")

    @property
    def texts_tr(self) -> str:
        # transform_ir_annotation_to_tr.py writes <input without .jsonl>.tr.jsonl beside its input
        return self.path(f"{self.split}_texts.tr.jsonl")

    @property
    def t2i_result(self) -> str:
        return self.path(T2I_RESULT)

    @property
    def i2t_result(self) -> str:
        return self.path(I2T_RESULT)


def _prepare_step(settings: Settings, request: Request, files: _OutputFiles) -> Step:
    # The image-to-text annotation is derived from a copy, so nothing is written into the dataset.
    _, texts = dataset_paths(settings, request.dataset, request.split)
    # Old results are removed first, so a stale success can never pass for this run's.
    command = f"mkdir -p {shlex.quote(files.out)} && rm -f {shlex.quote(files.t2i_result)} " \
              f"{shlex.quote(files.i2t_result)}"
    if not request.skip_image_to_text:
        command += f" && cp {shlex.quote(texts)} {shlex.quote(files.texts_copy)}"
    return Step("prepare", "prepare output directory", "prepare", command)


class _StepBuilder:
    """Turns upstream script invocations into full remote shell commands."""

    def __init__(self, settings: Settings, cpu_launcher: str | None) -> None:
        self.settings = settings
        self.cpu_launcher = cpu_launcher

    def python(self, script: str, args: list[str]) -> str:
        s = self.settings
        root = s.chinese_clip_dir
        argv = [s.python, "-u"]
        if self.cpu_launcher:
            argv.append(self.cpu_launcher)
        argv += [f"cn_clip/eval/{script}", *args]
        python_path = f"{root}:{posixpath.join(root, 'cn_clip')}"
        return (f"cd {shlex.quote(root)} && {s.activate} && "
                f"export PYTHONPATH={shlex.quote(python_path)}${{PYTHONPATH:+:$PYTHONPATH}} "
                f"CUDA_VISIBLE_DEVICES={s.gpu} && {shlex.join(argv)}")

    def extract(self, request: Request, checkpoint: str, files: _OutputFiles) -> Step:
        s = self.settings
        images, texts = dataset_paths(s, request.dataset, request.split)
        args = ["--extract-image-feats", "--extract-text-feats",
                "--image-data", images, "--text-data", texts,
                "--image-feat-output-path", files.image_feats,
                "--text-feat-output-path", files.text_feats,
                "--img-batch-size", str(s.img_batch_size), "--text-batch-size", str(s.text_batch_size),
                "--context-length", str(s.context_length), "--resume", checkpoint,
                "--vision-model", request.vision_model, "--text-model", request.text_model]
        if s.device == "cpu":
            args += ["--precision", "fp32"]  # fp16 kernels are GPU-only
        return Step("extract", "extract image + text features", "extract",
                    self.python("extract_features.py", args))

    def _knn_args(self, files: _OutputFiles, output: str) -> list[str]:
        return ["--image-feats", files.image_feats, "--text-feats", files.text_feats,
                "--top-k", str(self.settings.top_k), "--eval-batch-size",
                str(self.settings.eval_batch_size), "--output", output]

    def knn_text_to_image(self, files: _OutputFiles) -> Step:
        return Step("knn_t2i", "KNN text→image", "knn",
                    self.python("make_topk_predictions.py", self._knn_args(files, files.t2i_predictions)))

    def knn_image_to_text(self, files: _OutputFiles) -> Step:
        return Step("knn_i2t", "KNN image→text", "knn",
                    self.python("make_topk_predictions_tr.py", self._knn_args(files, files.i2t_predictions)))

    def evaluate_text_to_image(self, settings: Settings, request: Request, files: _OutputFiles) -> Step:
        _, texts = dataset_paths(settings, request.dataset, request.split)
        return Step("recall_t2i", "recall text→image", "recall",
                    self.python("evaluation.py", [texts, files.t2i_predictions, files.t2i_result]))

    def transform_annotation(self, files: _OutputFiles) -> Step:
        return Step("transform", "image→text annotation", "recall",
                    self.python("transform_ir_annotation_to_tr.py", ["--input", files.texts_copy]))

    def evaluate_image_to_text(self, files: _OutputFiles) -> Step:
        return Step("recall_i2t", "recall image→text", "recall",
                    self.python("evaluation_tr.py", [files.texts_tr, files.i2t_predictions, files.i2t_result]))
