"""PURE: settings + an Evaluation -> the exact upstream commands. No I/O, no clock.

Every value interpolated into a command is quoted (server.in_server_env, shlex), once; the only
shell code that is not quoted is the user's own `activate` setting.
"""
from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import asdict, dataclass

from .config import Settings
from .evaluation import STAGES, Evaluation, experiment_name
from .file_names import fit
from .server import FAST_KNN, IMAGE_TO_IMAGE, INSPECTOR, CPU_LAUNCHER, QUERY_HITS, ServerCall, in_server_env, script_call, \
    script_path, upstream_call

DIRECTION_TITLES = {"text_to_image": "text→image", "image_to_text": "image→text", "image_to_image": "image→image",
                    "zeroshot_classification": "zero-shot"}
UPSTREAM_DIRECTIONS = ("text_to_image", "image_to_text")  # scored by upstream from a prediction file
CHECK_STEPS = ("verify", "check_predictions")  # evalkit's own steps among upstream's
LOCK_NAME = ".evalkit-lock"
MANIFEST_NAME = "manifest.json"
FEATURE_FILE_NAMES = ("image_feats", "text_feats")  # of OutputFiles.checked_files
# what each direction's KNN step writes (of OutputFiles); image→image ranks and scores in one step
PREDICTION_FILES = {"text_to_image": "t2i_predictions", "image_to_text": "i2t_predictions",
                    "image_to_image": "i2i_result"}
T2I_RESULT = "text_to_image_results.json"
I2T_RESULT = "image_to_text_results.json"
I2I_RESULT = "image_to_image_results.json"
QUERY_HITS_FILE = "query_hits.json"  # remote/query_hits.py's, pulled with the results
QUERY_HITS_STEP = "query_hits"
PROVENANCE_STEP = "provenance"  # of Plan.beside
# The steps that run on the GPU (CUDA_VISIBLE_DEVICES); the others read and write files on the
# CPU: the checks, upstream's recall scripts, the per-query hits.
GPU_STEPS = frozenset({"extract", "knn_t2i", "knn_i2t", "knn_fast", "knn_i2i", "zeroshot"})


@dataclass(frozen=True)
class Step:
    """One remote shell command; `stage` groups steps for quick_evaluation --step."""

    name: str
    title: str
    stage: str
    command: str
    directions: tuple[str, ...] = ()  # the KNN directions whose predictions the step writes
    beside_rest: bool = False  # the steps after it start at once and run beside it (remote/job.py)


@dataclass(frozen=True)
class OutputFiles:
    """Upstream's own file names, inside the checkpoint's output directory."""

    out: str
    split: str

    def path(self, name: str) -> str:
        return posixpath.join(self.out, name)

    def checked_files(self) -> dict[str, str]:
        """The files whose completeness decides what a step may use (see server_outputs.py)."""
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

    @property
    def i2i_result(self) -> str:
        return self.path(I2I_RESULT)

    @property
    def query_hits(self) -> str:
        return self.path(QUERY_HITS_FILE)


@dataclass(frozen=True)
class Plan:
    """The server paths and commands of one checkpoint's evaluation, built once per run and
    kept in its run record (attach and cancel follow the same steps)."""

    label: str
    checkpoint: str
    output_dir: str
    cpu_launcher: str | None
    steps: tuple[Step, ...]
    result_files: dict[str, str]  # direction -> server path of its result JSON
    files: OutputFiles
    # evalkit's own commands started with the steps and not followed: the provenance
    # (remote/provenance.py), read with the results from the run's beside-NAME.out
    beside: tuple[Step, ...] = ()

    @property
    def manifest(self) -> str:
        return self.files.path(MANIFEST_NAME)

    @property
    def lock(self) -> str:
        return posixpath.join(self.output_dir, LOCK_NAME)

    def steps_of(self, stage: str) -> list[Step]:
        return [step for step in self.steps if step.stage == stage]

    @property
    def last_gpu_step(self) -> str | None:
        """The name of the step after which the run no longer needs its GPU (None: it never does)."""
        on_gpu = [step.name for step in self.steps if step.name in GPU_STEPS]
        return on_gpu[-1] if on_gpu else None

    @property
    def has_query_hits(self) -> bool:
        """Whether a step of this plan writes query_hits.json (a run recorded before had none)."""
        return any(step.name in (QUERY_HITS_STEP, "zeroshot") for step in self.steps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        steps = tuple(_step_of(step) for step in data["steps"])
        beside = tuple(_step_of(step) for step in data.get("beside", ()))
        return cls(data["label"], data["checkpoint"], data["output_dir"], data["cpu_launcher"], steps,
                   dict(data["result_files"]), OutputFiles(**data["files"]), beside)

    def beside_step(self, name: str) -> Step | None:
        return next((step for step in self.beside if step.name == name), None)


def _step_of(stored: dict) -> Step:
    """A Step as a run record keeps it; a record of an earlier evalkit may say
    beside_next (the per-query hits beside the last recall step), which only its driver read."""
    fields = {name: value for name, value in stored.items() if name != "beside_next"}
    return Step(**dict(fields, directions=tuple(stored["directions"])))


def step_outputs(plan: Plan, step: Step) -> tuple[str, ...]:
    """The files STEP writes for later steps to read (what a failed step leaves half-written)."""
    if step.name == "extract":
        return plan.files.image_feats, plan.files.text_feats
    return tuple(getattr(plan.files, PREDICTION_FILES[direction]) for direction in step.directions)


def checkpoint_output_dir(settings: Settings, dataset: str, split: str, checkpoint: str) -> str:
    """A directory of its own per checkpoint: the experiment's name for people, a path hash so two
    never collide."""
    digest = hashlib.sha256(checkpoint.encode("utf-8")).hexdigest()[:8]
    leaf = fit(experiment_name(checkpoint), f"-{digest}")  # a long experiment name is shortened
    return posixpath.join(settings.output_root, dataset, split, leaf)


def dataset_paths(settings: Settings, dataset: str, split: str) -> tuple[str, str]:
    """(image LMDB directory, texts JSONL) in upstream's layout under datapath."""
    root = posixpath.join(settings.datapath, "datasets", dataset)
    return posixpath.join(root, "lmdb", split, "imgs"), posixpath.join(root, f"{split}_texts.jsonl")


def directions(settings: Settings, evaluation: Evaluation) -> list[str]:
    """The directions evaluated: upstream's two unless skipped, and image→image when asked for."""
    return evaluation.directions + (["image_to_image"] if settings.image_to_image else [])


def labels_path(settings: Settings, dataset: str, split: str) -> str:
    """DATASET/<split>_imgs_labels.jsonl: when it exists, image→image relevance is the same label."""
    return posixpath.join(settings.datapath, "datasets", dataset, f"{split}_imgs_labels.jsonl")


def build_plan(settings: Settings, evaluation: Evaluation) -> Plan:
    """The steps of EVALUATION's stages; extraction only when evaluation.runs_extraction."""
    if evaluation.task != "retrieval":  # zero-shot classification: its own two steps
        from .zeroshot import build_plan as build_classification_plan
        return build_classification_plan(settings, evaluation)
    checkpoint = evaluation.checkpoint
    out = checkpoint_output_dir(settings, evaluation.dataset, evaluation.split, checkpoint)
    files = OutputFiles(out, evaluation.split)
    builder = _StepBuilder(settings, evaluation, files)
    steps = [_prepare_step(settings, evaluation, files)]
    if evaluation.runs_extraction:
        steps.append(builder.extract())
        # KNN must never read a half-written feature file, even when upstream exited 0
        steps.append(Step("verify", "check the features are complete", "extract",
                          inspect_command(settings, evaluation, require_complete=FEATURE_FILE_NAMES)))
    steps += builder.knn_steps()
    if evaluation.directions:
        # the first recall step, run beside the others: it reads the predictions and the texts
        # only, so the run's end waits for upstream's recall, not for it
        steps.append(builder.query_hits())
    results = {}
    if not evaluation.skip_text_to_image:
        steps.append(builder.evaluate_text_to_image())
        results["text_to_image"] = files.t2i_result
    if not evaluation.skip_image_to_text:
        steps += [builder.transform_annotation(), builder.evaluate_image_to_text()]
        results["image_to_text"] = files.i2t_result
    if settings.image_to_image:
        results["image_to_image"] = files.i2i_result  # written by its KNN step, checked like predictions
    if evaluation.directions:
        # recall must never read half-written predictions; its facts are the KNN record's
        steps.append(Step("check_predictions", "check the predictions are complete", "knn",
                          inspect_command(settings, evaluation, require_complete=tuple(
                              PREDICTION_FILES[direction] for direction in evaluation.directions))))
    chosen = [step for step in steps if step.stage in ("prepare", *evaluation.stages)]
    if "recall" not in evaluation.stages:
        results = {}
    beside = (builder.provenance(),) if "recall" in evaluation.stages else ()
    return Plan(evaluation.label, checkpoint, out, builder.launcher, tuple(_in_stage_order(chosen)), results, files,
                beside)


def knn_commands(settings: Settings, evaluation: Evaluation) -> dict[str, str]:
    """Direction -> the command that would write its predictions (what a KNN record is compared with)."""
    files = OutputFiles(checkpoint_output_dir(settings, evaluation.dataset, evaluation.split, evaluation.checkpoint),
                        evaluation.split)
    return {direction: step.command for step in _StepBuilder(settings, evaluation, files).knn_steps()
            for direction in step.directions}


def inspect_command(settings: Settings, evaluation: Evaluation, require_complete: tuple[str, ...] = ()) -> str:
    """The read-only remote check of EVALUATION's inputs and outputs, in a login shell."""
    return in_server_env(settings, inspect_call(settings, evaluation, require_complete))


def inspect_call(settings: Settings, evaluation: Evaluation, require_complete: tuple[str, ...] = ()) -> ServerCall:
    """remote/inspect_outputs.py on EVALUATION's inputs and outputs.

    Without a checkpoint it looks at the most recent extraction for the dataset and split.
    REQUIRE_COMPLETE names files (of OutputFiles.checked_files) that must have one complete
    line per image or text, else the check exits non-zero.
    """
    images, texts = dataset_paths(settings, evaluation.dataset, evaluation.split)
    args = ["--images", images, "--texts", texts, "--datapath", settings.datapath]
    if evaluation.checkpoint:
        out = checkpoint_output_dir(settings, evaluation.dataset, evaluation.split, evaluation.checkpoint)
        args += ["--out", out, "--checkpoint", evaluation.checkpoint]
    else:
        args += ["--latest-under", posixpath.join(settings.output_root, evaluation.dataset, evaluation.split)]
    relative = OutputFiles("", evaluation.split)
    for name, path in relative.checked_files().items():
        args += ["--file", f"{name}={path}"]
    if settings.image_to_image:
        args += ["--file", f"i2i_result={relative.i2i_result}"]
    for name in require_complete:
        args += ["--require-complete", name]
    return script_call(settings, INSPECTOR, args)


def _in_stage_order(steps: list[Step]) -> list[Step]:
    """extract, then every KNN, then every recall: the order quick_evaluation's --step follows."""
    order = {"prepare": -1, **{stage: i for i, stage in enumerate(STAGES)}}
    return sorted(steps, key=lambda step: order[step.stage])


def _prepare_step(settings: Settings, evaluation: Evaluation, files: OutputFiles) -> Step:
    # The image-to-text annotation is derived from a copy, so nothing is written into the dataset.
    _, texts = dataset_paths(settings, evaluation.dataset, evaluation.split)
    # Old results are removed first, so a stale success can never pass for this run's.
    stale = [files.t2i_result, files.i2t_result, files.query_hits]
    if evaluation.runs_extraction:
        stale.append(files.path(MANIFEST_NAME))  # rewritten only once extraction has finished
    command = f"mkdir -p {shlex.quote(files.out)} && rm -f {shlex.join(stale)}"
    if "recall" in evaluation.stages and not evaluation.skip_image_to_text:
        command += f" && cp {shlex.quote(texts)} {shlex.quote(files.texts_copy)}"
    return Step("prepare", "prepare output directory", "prepare", command)


class _StepBuilder:
    """Turns upstream script invocations into full remote shell commands."""

    def __init__(self, settings: Settings, evaluation: Evaluation, files: OutputFiles) -> None:
        self.settings, self.evaluation, self.files = settings, evaluation, files
        self.launcher = script_path(settings, CPU_LAUNCHER) if settings.device == "cpu" else None

    def upstream(self, script: str, args: list[str]) -> str:
        """An upstream cn_clip/eval script, through the CPU launcher with --device cpu."""
        return in_server_env(self.settings, upstream_call(self.settings, f"cn_clip/eval/{script}", args,
                                                          self.launcher))

    def extract(self) -> Step:
        s, evaluation, files = self.settings, self.evaluation, self.files
        images, texts = dataset_paths(s, evaluation.dataset, evaluation.split)
        args = ["--extract-image-feats", "--extract-text-feats",
                "--image-data", images, "--text-data", texts,
                "--image-feat-output-path", files.image_feats,
                "--text-feat-output-path", files.text_feats,
                "--img-batch-size", str(s.img_batch_size), "--text-batch-size", str(s.text_batch_size),
                "--context-length", str(s.context_length), "--resume", evaluation.checkpoint,
                "--vision-model", evaluation.vision_model, "--text-model", evaluation.text_model]
        if s.device == "cpu":
            args += ["--precision", "fp32"]  # fp16 kernels are GPU-only
        return Step("extract", "extract image + text features", "extract", self.upstream("extract_features.py", args))

    def knn_steps(self) -> list[Step]:
        """The steps writing the predictions of every direction evaluated."""
        image_to_image = [self.image_to_image()] if self.settings.image_to_image else []
        if self.settings.knn == "fast":
            return [self.knn_fast(), *image_to_image]
        steps = []
        if not self.evaluation.skip_text_to_image:
            steps.append(Step("knn_t2i", "KNN text→image", "knn",
                              self.upstream("make_topk_predictions.py", self._knn_args(self.files.t2i_predictions)),
                              ("text_to_image",)))
        if not self.evaluation.skip_image_to_text:
            steps.append(Step("knn_i2t", "KNN image→text", "knn",
                              self.upstream("make_topk_predictions_tr.py", self._knn_args(self.files.i2t_predictions)),
                              ("image_to_text",)))
        return steps + image_to_image

    def _knn_args(self, output: str) -> list[str]:
        return ["--image-feats", self.files.image_feats, "--text-feats", self.files.text_feats,
                "--top-k", str(self.settings.top_k), "--eval-batch-size",
                str(self.settings.eval_batch_size), "--output", output]

    def knn_fast(self) -> Step:
        """--knn fast: both directions in one pass over the same feature files (remote/fast_knn.py)."""
        files, directions = self.files, self.evaluation.directions
        outputs = {"text_to_image": ["--t2i-output", files.t2i_predictions],
                   "image_to_text": ["--i2t-output", files.i2t_predictions]}
        args = ["--image-feats", files.image_feats, "--text-feats", files.text_feats,
                "--top-k", str(self.settings.top_k), "--device", "cpu" if self.settings.device == "cpu" else "auto"]
        for direction in directions:
            args += outputs[direction]
        title = "KNN " + " + ".join(DIRECTION_TITLES[d] for d in directions) + " (fast)"
        command = in_server_env(self.settings, upstream_call(self.settings, script_path(self.settings, FAST_KNN), args))
        return Step("knn_fast", title, "knn", command, tuple(directions))

    def image_to_image(self) -> Step:
        """Image→image from the image features (remote/image_to_image.py): it ranks and scores in
        one step and writes the result JSON, recorded and reused as KNN predictions are."""
        s, evaluation = self.settings, self.evaluation
        _, texts = dataset_paths(s, evaluation.dataset, evaluation.split)
        args = ["--image-feats", self.files.image_feats, "--texts", texts,
                "--labels", labels_path(s, evaluation.dataset, evaluation.split),
                "--output", self.files.i2i_result, "--device", "cpu" if s.device == "cpu" else "auto"]
        command = in_server_env(s, upstream_call(s, script_path(s, IMAGE_TO_IMAGE), args))
        return Step("knn_i2i", "KNN + recall image→image", "knn", command, ("image_to_image",))

    def evaluate_text_to_image(self) -> Step:
        _, texts = dataset_paths(self.settings, self.evaluation.dataset, self.evaluation.split)
        return Step("recall_t2i", "recall text→image", "recall",
                    self.upstream("evaluation.py", [texts, self.files.t2i_predictions, self.files.t2i_result]))

    def query_hits(self) -> Step:
        """Each query's hits and their 95% intervals, from the files upstream's recall reads (the
        image→text annotation derived from the texts as upstream's transform derives it)."""
        _, texts = dataset_paths(self.settings, self.evaluation.dataset, self.evaluation.split)
        args = ["--output", self.files.query_hits]
        if not self.evaluation.skip_text_to_image:
            args += ["--text-to-image", texts, self.files.t2i_predictions]
        if not self.evaluation.skip_image_to_text:
            args += ["--image-to-text-of", self.files.texts_copy, self.files.i2t_predictions]
        return Step(QUERY_HITS_STEP, "per-query hits + 95% intervals", "recall",
                    in_server_env(self.settings, script_call(self.settings, QUERY_HITS, args)), beside_rest=True)

    def provenance(self) -> Step:
        """What the numbers are made from (the checkpoint's SHA-256 among them), hashed while the
        upstream steps run: none of them needs it, the summary does."""
        from .provenance import provenance_call  # provenance.py reads this module's paths
        return Step(PROVENANCE_STEP, "provenance", "recall",
                    in_server_env(self.settings, provenance_call(self.settings, self.evaluation)))

    def transform_annotation(self) -> Step:
        return Step("transform", "image→text annotation", "recall",
                    self.upstream("transform_ir_annotation_to_tr.py", ["--input", self.files.texts_copy]))

    def evaluate_image_to_text(self) -> Step:
        return Step("recall_i2t", "recall image→text", "recall",
                    self.upstream("evaluation_tr.py", [self.files.texts_tr, self.files.i2t_predictions,
                                                       self.files.i2t_result]))
