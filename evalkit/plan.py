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
from .errors import ConfigError

SPLITS = ("valid", "test")
STAGES = ("extract", "knn", "recall")
DIRECTION_TITLES = {"text_to_image": "text→image", "image_to_text": "image→text"}
CPU_LAUNCHER_NAME = "cpu_launch.py"
INSPECTOR_NAME = "inspect_outputs.py"
FAST_KNN_NAME = "fast_knn.py"
JOB_RUNNER_NAME = "job.py"
BOOTSTRAP_NAME = "bootstrap.py"  # sent inline, never uploaded
CHECK_STEPS = ("verify", "check_predictions")  # evalkit's own steps among upstream's
LOCK_NAME = ".evalkit-lock"
MANIFEST_NAME = "manifest.json"
FEATURE_FILE_NAMES = ("image_feats", "text_feats")  # of OutputFiles.checked_files
PREDICTION_FILES = {"text_to_image": "t2i_predictions", "image_to_text": "i2t_predictions"}
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
    stages: tuple[str, ...] = STAGES
    force_extraction: bool = False
    label: str | None = None  # a registry name; else derived from the checkpoint path

    @property
    def directions(self) -> list[str]:
        return [direction for direction, skipped in (("text_to_image", self.skip_text_to_image),
                                                     ("image_to_text", self.skip_image_to_text))
                if not skipped]

    @property
    def runs_extraction(self) -> bool:
        return "extract" in self.stages and not self.skip_extraction


@dataclass(frozen=True)
class Step:
    """One remote shell command; `stage` groups steps for quick_evaluation --step."""

    name: str
    title: str
    stage: str
    command: str
    directions: tuple[str, ...] = ()  # the KNN directions whose predictions the step writes


@dataclass(frozen=True)
class Plan:
    """The server paths and commands of one checkpoint's evaluation."""

    label: str
    checkpoint: str
    output_dir: str
    cpu_launcher: str | None
    steps: tuple[Step, ...]
    result_files: dict[str, str]  # direction -> server path of its result JSON
    files: "OutputFiles"

    @property
    def manifest(self) -> str:
        return self.files.path(MANIFEST_NAME)

    def steps_of(self, stage: str) -> list[Step]:
        return [step for step in self.steps if step.stage == stage]


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


def helper_path(settings: Settings, name: str) -> str:
    """Where evalkit's own small scripts are uploaded on the server."""
    return posixpath.join(settings.output_root, ".evalkit", name)


def build_plan(settings: Settings, request: Request) -> Plan:
    """The steps of REQUEST's stages; extraction only when request.runs_extraction."""
    checkpoint = resolve_checkpoint(settings, request.model_path)
    out = checkpoint_output_dir(settings, request.dataset, request.split, checkpoint)
    launcher = helper_path(settings, CPU_LAUNCHER_NAME) if settings.device == "cpu" else None
    files = OutputFiles(out, request.split)
    builder = _StepBuilder(settings, launcher)
    steps = [_prepare_step(settings, request, files)]
    results = {}
    if request.runs_extraction:
        steps.append(builder.extract(request, checkpoint, files))
        # KNN must never read a half-written feature file, even when upstream exited 0
        steps.append(Step("verify", "check the features are complete", "extract",
                          inspect_command(settings, request, checkpoint, require_complete=FEATURE_FILE_NAMES)))
    if settings.knn == "fast":
        steps.append(builder.knn_fast(request, files))
    if not request.skip_text_to_image:
        if settings.knn == "upstream":
            steps.append(builder.knn_text_to_image(files))
        steps.append(builder.evaluate_text_to_image(settings, request, files))
        results["text_to_image"] = files.t2i_result
    if not request.skip_image_to_text:
        if settings.knn == "upstream":
            steps.append(builder.knn_image_to_text(files))
        steps += [builder.transform_annotation(files), builder.evaluate_image_to_text(files)]
        results["image_to_text"] = files.i2t_result
    if request.directions:
        # recall must never read half-written predictions; its facts are the KNN record's
        steps.append(Step("check_predictions", "check the predictions are complete", "knn",
                          inspect_command(settings, request, checkpoint, require_complete=tuple(
                              PREDICTION_FILES[direction] for direction in request.directions))))
    chosen = [step for step in steps if step.stage in ("prepare", *request.stages)]
    if "recall" not in request.stages:
        results = {}
    return Plan(request.label or checkpoint_label(checkpoint), checkpoint, out, launcher,
                tuple(_in_stage_order(chosen)), results, files)


@dataclass(frozen=True)
class HelperCall:
    """One of evalkit's server scripts as the run's starter runs it (remote/job.py start): in
    the env it activated already, rather than in a login shell of its own."""

    python: str
    script: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # variables set
    pythonpath: tuple[str, ...] = ()       # directories put before the env's PYTHONPATH

    @property
    def argv(self) -> tuple[str, ...]:
        """The command line that runs it on its own (in a login shell)."""
        return (self.python, "-u", self.script, *self.args)

    def as_dict(self) -> dict:
        """What the starter needs: it is that python already (see remote/job.py run_helpers)."""
        return {"script": self.script, "args": list(self.args), "env": dict(self.env),
                "pythonpath": list(self.pythonpath)}


def inspect_command(settings: Settings, request: Request, checkpoint: str | None,
                    require_complete: tuple[str, ...] = ()) -> str:
    """The read-only remote check of REQUEST's inputs and outputs, in a login shell."""
    return f"{settings.activate} && {shlex.join(inspect_call(settings, request, checkpoint, require_complete).argv)}"


def inspect_call(settings: Settings, request: Request, checkpoint: str | None,
                 require_complete: tuple[str, ...] = ()) -> HelperCall:
    """remote/inspect_outputs.py on REQUEST's inputs and outputs.

    Without a checkpoint it looks at the most recent extraction for the dataset and split.
    REQUIRE_COMPLETE names files (of OutputFiles.checked_files) that must have one complete
    line per image or text, else the check exits non-zero.
    """
    images, texts = dataset_paths(settings, request.dataset, request.split)
    args = ["--images", images, "--texts", texts, "--datapath", settings.datapath]
    if checkpoint:
        out = checkpoint_output_dir(settings, request.dataset, request.split, checkpoint)
        args += ["--out", out, "--checkpoint", checkpoint]
    else:
        args += ["--latest-under", posixpath.join(settings.output_root, request.dataset, request.split)]
    for name, relative in OutputFiles("", request.split).checked_files().items():
        args += ["--file", f"{name}={relative}"]
    for name in require_complete:
        args += ["--require-complete", name]
    return HelperCall(settings.python, helper_path(settings, INSPECTOR_NAME), tuple(args))


def _in_stage_order(steps: list[Step]) -> list[Step]:
    """extract, then every KNN, then every recall: the order quick_evaluation's --step follows."""
    order = {"prepare": -1, **{stage: i for i, stage in enumerate(STAGES)}}
    return sorted(steps, key=lambda step: order[step.stage])


@dataclass(frozen=True)
class OutputFiles:
    """Upstream's own file names, inside the checkpoint's output directory."""

    out: str
    split: str

    def path(self, name: str) -> str:
        return posixpath.join(self.out, name)

    def checked_files(self) -> dict[str, str]:
        """The files whose completeness decides what a step may use (see outputs.py)."""
        return {name: getattr(self, name) for name in
                ("image_feats", "text_feats", "t2i_predictions", "i2t_predictions")}

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


def _prepare_step(settings: Settings, request: Request, files: OutputFiles) -> Step:
    # The image-to-text annotation is derived from a copy, so nothing is written into the dataset.
    _, texts = dataset_paths(settings, request.dataset, request.split)
    # Old results are removed first, so a stale success can never pass for this run's.
    stale = [files.t2i_result, files.i2t_result]
    if request.runs_extraction:
        stale.append(files.path(MANIFEST_NAME))  # rewritten only once extraction has finished
    command = f"mkdir -p {shlex.quote(files.out)} && rm -f {shlex.join(stale)}"
    if "recall" in request.stages and not request.skip_image_to_text:
        command += f" && cp {shlex.quote(texts)} {shlex.quote(files.texts_copy)}"
    return Step("prepare", "prepare output directory", "prepare", command)


class _StepBuilder:
    """Turns upstream script invocations into full remote shell commands."""

    def __init__(self, settings: Settings, cpu_launcher: str | None) -> None:
        self.settings = settings
        self.cpu_launcher = cpu_launcher

    def python(self, script: str, args: list[str]) -> str:
        """An upstream cn_clip/eval script, through the CPU launcher with --device cpu."""
        launcher = [self.cpu_launcher] if self.cpu_launcher else []
        return self._in_env([self.settings.python, "-u", *launcher, f"cn_clip/eval/{script}", *args])

    def helper(self, path: str, args: list[str]) -> str:
        """One of evalkit's own scripts, in the same environment as the upstream ones."""
        return self._in_env([self.settings.python, "-u", path, *args])

    def _in_env(self, argv: list[str]) -> str:
        s = self.settings
        root = s.chinese_clip_dir
        python_path = f"{root}:{posixpath.join(root, 'cn_clip')}"
        return (f"cd {shlex.quote(root)} && {s.activate} && "
                f"export PYTHONPATH={shlex.quote(python_path)}${{PYTHONPATH:+:$PYTHONPATH}} "
                f"CUDA_VISIBLE_DEVICES={s.gpu} && {shlex.join(argv)}")

    def extract(self, request: Request, checkpoint: str, files: OutputFiles) -> Step:
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

    def _knn_args(self, files: OutputFiles, output: str) -> list[str]:
        return ["--image-feats", files.image_feats, "--text-feats", files.text_feats,
                "--top-k", str(self.settings.top_k), "--eval-batch-size",
                str(self.settings.eval_batch_size), "--output", output]

    def knn_text_to_image(self, files: OutputFiles) -> Step:
        return Step("knn_t2i", "KNN text→image", "knn",
                    self.python("make_topk_predictions.py", self._knn_args(files, files.t2i_predictions)),
                    ("text_to_image",))

    def knn_image_to_text(self, files: OutputFiles) -> Step:
        return Step("knn_i2t", "KNN image→text", "knn",
                    self.python("make_topk_predictions_tr.py", self._knn_args(files, files.i2t_predictions)),
                    ("image_to_text",))

    def knn_fast(self, request: Request, files: OutputFiles) -> Step:
        """--knn fast: both directions in one pass over the same feature files (remote/fast_knn.py)."""
        outputs = {"text_to_image": ["--t2i-output", files.t2i_predictions],
                   "image_to_text": ["--i2t-output", files.i2t_predictions]}
        args = ["--image-feats", files.image_feats, "--text-feats", files.text_feats,
                "--top-k", str(self.settings.top_k), "--device", "cpu" if self.settings.device == "cpu" else "auto"]
        for direction in request.directions:
            args += outputs[direction]
        title = "KNN " + " + ".join(DIRECTION_TITLES[d] for d in request.directions) + " (fast)"
        return Step("knn_fast", title, "knn", self.helper(helper_path(self.settings, FAST_KNN_NAME), args),
                    tuple(request.directions))

    def evaluate_text_to_image(self, settings: Settings, request: Request, files: OutputFiles) -> Step:
        _, texts = dataset_paths(settings, request.dataset, request.split)
        return Step("recall_t2i", "recall text→image", "recall",
                    self.python("evaluation.py", [texts, files.t2i_predictions, files.t2i_result]))

    def transform_annotation(self, files: OutputFiles) -> Step:
        return Step("transform", "image→text annotation", "recall",
                    self.python("transform_ir_annotation_to_tr.py", ["--input", files.texts_copy]))

    def evaluate_image_to_text(self, files: OutputFiles) -> Step:
        return Step("recall_i2t", "recall image→text", "recall",
                    self.python("evaluation_tr.py", [files.texts_tr, files.i2t_predictions, files.i2t_result]))


def run_dir(settings: Settings, run_id: str) -> str:
    """The server directory of one run: its step list, each step's output, exit codes, status."""
    return posixpath.join(settings.output_root, ".evalkit", "runs", run_id)


def start_run_command(settings: Settings, timeout: float, bootstrap: str) -> str:
    """job.py start, through BOOTSTRAP (remote/bootstrap.py's source, given inline): that first
    makes evalkit's scripts on the server current from stdin, then job.py reads the run, starts
    its driver in the background, every stream redirected so the run does not depend on the SSH
    session, and answers once the driver holds the lock, or could not."""
    argv = [settings.python, "-u", "-c", bootstrap, posixpath.dirname(helper_path(settings, JOB_RUNNER_NAME)),
            JOB_RUNNER_NAME, "start", "--timeout", f"{timeout:g}"]
    return f"{settings.activate} && {shlex.join(argv)}"


def job_command(settings: Settings, action: str, directory: str, grace: float = 10.0) -> str:
    """job.py cancel / state for a run directory (quick, answered on stdout)."""
    argv = [settings.python, "-u", helper_path(settings, JOB_RUNNER_NAME), action, "--run-dir", directory,
            "--grace", f"{grace:g}"]
    return f"{settings.activate} && {shlex.join(argv)}"


def check_distinct_checkpoints(settings: Settings, requests: list[Request]) -> None:
    """Two names for one checkpoint would write the same server directory at once."""
    seen: dict[str, str] = {}
    for request in requests:
        if not request.model_path:
            continue
        checkpoint = resolve_checkpoint(settings, request.model_path)
        label = request.label or checkpoint_label(checkpoint)
        if checkpoint in seen:
            raise ConfigError(f"{seen[checkpoint]!r} and {label!r} are the same checkpoint "
                               f"({checkpoint})", "name each checkpoint once (check the `models:` paths)")
        seen[checkpoint] = label
