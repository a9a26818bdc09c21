"""PURE: what `python -m evalkit doctor` concludes from what it found, one Check per line.

The server's facts come from remote/doctor_probe.py (run in the activated env, as each
upstream step is); the ssh facts from ssh.resolve_target and Connection.open(). Every decision
and every sentence is made here, without I/O. Each check says what it found and, when it
fails, one fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .architecture import VISION_SHAPES, Architecture, flags_for, infer_architecture, mismatch
from .config import Settings
from .errors import (AuthenticationError, ConfigError, EvalkitError, HostKeyError, MissingInput,
                     PreflightFailed)
from . import zeroshot
from .evaluation import Evaluation
from .plan import dataset_paths
from .server import PROBE as PROBE_NAME, ServerCall, in_server_env, script_path, through_bootstrap, upstream_call
from .progress import last_marked_json

PROBE_MARKER = b"EVALKIT-DOCTOR "     # remote/doctor_probe.py prints its JSON after this
ACTIVATED_MARKER = "EVALKIT-ACTIVATED"  # printed once the user's activate command succeeded
BYTES_PER_FLOAT = 20  # a feature value as upstream writes it: JSON text such as "-0.0123456789, "
MIN_GPU_FREE = 1 << 30
TAIL_LINES = 5
TRAINING_KEYS = ("epoch", "step")  # upstream extract_features.py reads both besides state_dict
_DATASET_FIX = ("check --datapath, --dataset-name and --split: on the server, "
                "`ls DATAPATH/datasets/NAME/ DATAPATH/datasets/NAME/lmdb/` shows what is there")
_TRAINING_FIX = "give a checkpoint saved by cn_clip training (it holds state_dict, epoch and step)"


@dataclass(frozen=True)
class Check:
    """One doctor line: ✓ or ✗, what was found, and on ✗ how to fix it."""

    name: str
    ok: bool
    found: str
    fix: Optional[str] = None


@dataclass(frozen=True)
class ProbeRun:
    """What came back from running the probe after the user's activate command."""

    exit_code: int
    activated: bool
    facts: Optional[dict]
    stderr_tail: tuple[str, ...]


# --- the remote command ------------------------------------------------------------------------

def doctor_command(settings: Settings, evaluation: Evaluation, bootstrap: str) -> str:
    """Activate, say so, then run the probe on everything the evaluation will touch, through
    BOOTSTRAP (remote/bootstrap.py's source), which first makes the server's scripts current
    from stdin (server.through_bootstrap)."""
    args = ["--clip-dir", settings.chinese_clip_dir, "--device", settings.device,
            *_dataset_args(settings, evaluation), "--output-root", settings.output_root]
    if evaluation.checkpoint:
        args += ["--checkpoint", evaluation.checkpoint]
    return in_server_env(settings, through_bootstrap(_probe_call(settings, args), bootstrap), announce=ACTIVATED_MARKER)


def _dataset_args(settings: Settings, evaluation: Evaluation) -> list[str]:
    """What the probe checks of the dataset: the LMDB and texts, or a classification dataset's
    label file and class folders (with zeroshot.py's own preflight checks)."""
    if zeroshot.is_classification(evaluation):
        return ["--classification", evaluation.dataset, "--class-images", zeroshot.image_folder(settings, evaluation),
                "--label-file", zeroshot.label_file(settings, evaluation)]
    images, texts = dataset_paths(settings, evaluation.dataset, evaluation.split)
    return ["--images", images, "--texts", texts]


def preflight_call(settings: Settings, evaluation: Evaluation) -> ServerCall:
    """The evaluation's cheap subset, as the run's starter runs it: the dataset, the upstream
    scripts, the disk and the checkpoint's shapes; no --device, so torch is imported only for
    an old-format checkpoint."""
    images, texts = dataset_paths(settings, evaluation.dataset, evaluation.split)
    return _probe_call(settings, ["--clip-dir", settings.chinese_clip_dir, "--images", images, "--texts", texts,
                                  "--output-root", settings.output_root, "--checkpoint", evaluation.checkpoint])


def _probe_call(settings: Settings, probe_args: list[str]) -> ServerCall:
    """The probe, in the environment of an upstream step (Chinese-CLIP importable, the GPU chosen)."""
    return upstream_call(settings, script_path(settings, PROBE_NAME), probe_args, cwd=False)


def parse_probe(exit_code: int, stdout: bytes, stderr: bytes, activated: bool | None = None) -> ProbeRun:
    """ACTIVATED: known already (the starter that ran the probe did activate), else the marker
    in_server_env's announcement says."""
    if activated is None:
        activated = any(line.strip() == ACTIVATED_MARKER.encode() for line in stdout.splitlines())
    tail = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return ProbeRun(exit_code, activated, last_marked_json(stdout, PROBE_MARKER), tuple(tail[-TAIL_LINES:]))


# --- ssh ---------------------------------------------------------------------------------------

def alias_check(host: str, address: str, keys: Sequence[str], jumps: Sequence[str]) -> Check:
    via = f" via {', '.join(jumps)}" if jumps else ""
    key_text = ", ".join(keys) if keys else "ssh's default keys"
    return Check("ssh alias", True, f"{host} is {address}{via}, key {key_text}")


def alias_failure(error: EvalkitError) -> Check:
    return Check("ssh alias", False, error.message, error.hint)


def connection_checks(address: str, known_hosts_name: str, user: str,
                      error: Optional[EvalkitError]) -> list[Check]:
    """Reachable, host key, authentication: passed up to the one Connection.open() failed on."""
    passed = [Check("server reachable", True, f"{address} answered"),
              Check("host key", True, f"{known_hosts_name} matches your known_hosts"),
              Check("authentication", True, f"logged in as {user}")]
    if error is None:
        return passed
    failed_at = {HostKeyError: 1, AuthenticationError: 2}.get(type(error), 0)
    return passed[:failed_at] + [Check(passed[failed_at].name, False, error.message, error.hint)]


def scripts_folder_failure(why: str, fix: Optional[str]) -> Check:
    """The server's scripts folder, refused by the bootstrap: unsafe (others could write it), or
    not writable (its sentences are the bootstrap's own, as a run's refusal says them)."""
    return Check("server output location", False, why, fix)


# --- the probe's facts -------------------------------------------------------------------------

def interpret(run: ProbeRun, settings: Settings, evaluation: Evaluation) -> list[Check]:
    """Every server-side check, in the order the evaluation would trip over them."""
    tail = "; ".join(run.stderr_tail) or "no output"
    if not run.activated:
        return [Check("activate", False, f"the activate command {settings.activate!r} exited with "
                      f"status {run.exit_code}: {tail}",
                      "fix `activate` in your config file (on the server, `conda env list` shows "
                      "the environments)")]
    checks = [Check("activate", True, f"{settings.activate!r} ran")]
    facts = run.facts
    if facts is None:
        return checks + [Check("python", False, f"{settings.python!r} did not run evalkit's probe "
                               f"after activate (status {run.exit_code}): {tail}",
                               "set `python` in your config file to the env's interpreter "
                               "(`which python` after activating)")]
    python = facts.get("python", {})
    checks.append(Check("python", True, f"Python {python.get('version')} at {python.get('executable')}"))
    found = [torch_check(facts.get("torch", {})), clip_check(facts.get("clip", {})),
             gpu_check(facts.get("torch", {}), settings), *dataset_checks(facts, evaluation, settings),
             *checkpoint_checks(facts.get("checkpoint"), evaluation)]
    found.append(disk_check(facts, evaluation))
    return checks + [check for check in found if check is not None]


def torch_check(torch: dict) -> Check:
    if "error" in torch:
        return Check("torch", False, f"torch cannot be imported in the env: {torch['error']}",
                     "install torch in the env that `activate` enters, or fix `activate`")
    build = f"built for CUDA {torch['cuda_build']}" if torch.get("cuda_build") else "a CPU-only build"
    return Check("torch", True, f"torch {torch.get('version')}, {build}")


def clip_check(clip: dict) -> Check:
    where = clip.get("dir")
    fix = "set chinese_clip_dir to the Chinese-CLIP checkout (the folder holding cn_clip/eval/)"
    if not clip.get("dir_exists"):
        return Check("cn_clip", False, f"chinese_clip_dir {where} does not exist on the server", fix)
    if clip.get("missing_scripts"):
        return Check("cn_clip", False, f"{where}/cn_clip/eval lacks the upstream "
                     f"{', '.join(clip['missing_scripts'])}", fix)
    if "import_error" in clip:
        return Check("cn_clip", False, f"cn_clip cannot be imported from {where}: "
                     f"{clip['import_error']}", "install cn_clip's requirements in the env "
                     "(`pip install -r requirements.txt` in the checkout)")
    return Check("cn_clip", True, f"cn_clip imports from {clip.get('module')}, and the 6 upstream "
                 f"scripts are in {where}/cn_clip/eval")


def gpu_check(torch: dict, settings: Settings) -> Optional[Check]:
    if settings.device == "cpu":
        return Check("GPU", True, "skipped: --device cpu runs the scripts on the CPU")
    gpu = torch.get("gpu")
    if "error" in torch or gpu is None:
        return None  # the torch line already failed
    fix = "run `nvidia-smi` on the server and pick a free GPU with --gpu N, or use --device cpu"
    if gpu.get("error"):
        return Check("GPU", False, f"CUDA fails on GPU {settings.gpu}: {gpu['error']}", fix)
    if not gpu.get("available"):
        return Check("GPU", False, f"torch sees no CUDA GPU with CUDA_VISIBLE_DEVICES={settings.gpu}", fix)
    memory = f"{size(gpu['free'])} free of {size(gpu['total'])}"
    if gpu["free"] < MIN_GPU_FREE:
        return Check("GPU", False, f"GPU {settings.gpu} ({gpu['name']}) has only {memory}", fix)
    return Check("GPU", True, f"GPU {settings.gpu} ({gpu['name']}): {memory}")


def dataset_checks(facts: dict, evaluation: Evaluation, settings: Settings) -> list[Check]:
    if zeroshot.is_classification(evaluation):
        return classification_checks(facts.get("classification", {}))
    images, texts = facts.get("images", {}), facts.get("texts", {})
    checks = [images_check(images, evaluation, settings.top_k), texts_check(texts, evaluation, settings.top_k)]
    if images.get("count") is not None and texts.get("lines") and texts.get("ids_checked"):
        checks.append(image_ids_check(texts))  # only when both sides could be read
    return checks


def classification_checks(classification: dict) -> list[Check]:
    """remote/zeroshot.py's preflight checks, each as the probe reported it (the sentences are
    the preflight's own, so the doctor and the refusal before a run say the same)."""
    found = classification.get("checks")
    if not found:
        return [Check("classification dataset", False, "the probe did not check the classification dataset",
                      "run the doctor again (it brings its probe and zeroshot.py up to date); if it says the same, "
                      "report it")]
    return [Check(check["name"], check["ok"], check["found"], check["fix"]) for check in found]


def images_check(images: dict, evaluation: Evaluation, top_k: int) -> Check:
    path = images.get("path")
    if not images.get("exists"):
        return Check("images", False, f"split {evaluation.split!r} of dataset {evaluation.dataset!r} has "
                     f"no image LMDB at {path}", _DATASET_FIX)
    problem = images.get("problem")
    if problem:
        fix = ("install it in the env (`pip install lmdb`)" if "not installed" in problem else
               "rebuild it with `python -m cn_clip.preprocess.build_lmdb_dataset`")
        return Check("images", False, f"the image LMDB {path} cannot be read: {problem}", fix)
    if images["count"] < top_k:
        return Check("images", False, f"the image LMDB {path} has {images['count']} images, fewer "
                     f"than top_k ({top_k})", "upstream evaluation needs at least top_k images")
    return Check("images", True, f"{path}: {images['count']} images (num_images)")


def texts_check(texts: dict, evaluation: Evaluation, top_k: int) -> Check:
    path = texts.get("path")
    shape = 'one JSON object per line, {"text_id": ..., "text": ..., "image_ids": [...]}'
    if not texts.get("exists"):
        return Check("texts", False, f"split {evaluation.split!r} of dataset {evaluation.dataset!r} has "
                     f"no texts file {path}", _DATASET_FIX)
    if texts.get("read_error"):
        return Check("texts", False, f"the texts file {path} cannot be read: {texts['read_error']}",
                     "fix its permissions on the server")
    if not texts.get("lines"):
        return Check("texts", False, f"the texts file {path} is empty", f"write {shape}")
    if texts.get("bad_count"):
        examples = ", ".join(f"line {bad['line']} {bad['problem']}" for bad in texts["bad_lines"])
        return Check("texts", False, f"{texts['bad_count']} of the {texts['lines']} lines of {path} "
                     f"are unusable: {examples}", f"fix those lines: {shape}")
    if texts["lines"] < top_k:
        return Check("texts", False, f"the texts file {path} has {texts['lines']} texts, fewer than "
                     f"top_k ({top_k})", "upstream evaluation needs at least top_k texts")
    return Check("texts", True, f"{path}: {texts['lines']} texts, each with text_id, text and "
                 "image_ids")


def image_ids_check(texts: dict) -> Check:
    if texts.get("missing_count"):
        examples = ", ".join(f"{missing['id']} (line {missing['line']})"
                             for missing in texts["missing_ids"])
        return Check("image ids", False, f"{texts['missing_count']} of the {texts['image_ids']} "
                     f"image ids the texts name are not in the LMDB, e.g. {examples}",
                     "the texts and the LMDB come from different data: rebuild the LMDB from "
                     "this split's TSV (cn_clip.preprocess.build_lmdb_dataset) or fix the texts")
    return Check("image ids", True, f"all {texts['image_ids']} image ids the texts name are in "
                 "the LMDB")


def checkpoint_checks(checkpoint: Optional[dict], evaluation: Evaluation) -> list[Check]:
    """The file, then its towers against --vision-model / --text-model."""
    if checkpoint is None:
        return [Check("checkpoint", True, "skipped: no --model-path given")]
    path = checkpoint.get("path")
    if not checkpoint.get("exists"):
        return [Check("checkpoint", False, f"checkpoint not found on the server: {path}",
                      "check --model-path (a relative path is taken relative to DATAPATH; "
                      "`ls -la DATAPATH/experiments/` lists the experiments)")]
    if not checkpoint.get("readable"):
        return [Check("checkpoint", False, f"checkpoint {path} is not readable on the server",
                      "fix its permissions, or evaluate as its owner")]
    file_size = size(checkpoint["size"])
    if checkpoint.get("torch_missing"):
        return [Check("checkpoint", True, f"{path}: {file_size}, not loaded (torch is missing)")]
    if checkpoint.get("load_error"):
        return [Check("checkpoint", False, f"checkpoint {path} ({file_size}) cannot be loaded: "
                      f"{checkpoint['load_error']} (truncated or not a checkpoint?)",
                      "copy it again from where it was trained and compare the sizes, or choose "
                      "another --model-path")]
    shapes = checkpoint.get("shapes")
    if not shapes:
        keys = ", ".join((checkpoint.get("keys") or [])[:5]) or checkpoint.get("top_type", "nothing")
        return [Check("checkpoint", False, f"checkpoint {path} has no state_dict of tensors "
                      f"(it holds: {keys})", _TRAINING_FIX)]
    absent = [key for key in TRAINING_KEYS if key not in (checkpoint.get("keys") or [])]
    if absent:
        return [Check("checkpoint", False, f"checkpoint {path} has no {' or '.join(absent)}, which "
                      "upstream extract_features.py reads", _TRAINING_FIX)]
    return [Check("checkpoint", True, f"{path}: {file_size}, a state_dict of {len(shapes)} tensors"),
            architecture_check(infer_architecture(shapes), evaluation)]


def architecture_check(architecture: Architecture, evaluation: Evaluation) -> Check:
    problem = mismatch(architecture, evaluation.vision_model, evaluation.text_model)
    if problem:
        flags = flags_for(architecture)
        return Check("architecture", False, problem,
                     f"pass {flags}" if flags else "check --model-path: cn_clip has no model of "
                     "this shape")
    return Check("architecture", True, f"{architecture.describe()}, as --vision-model and "
                 "--text-model say")


def disk_check(facts: dict, evaluation: Evaluation) -> Check:
    disk = facts.get("disk", {})
    if "error" in disk or "free" not in disk:
        return Check("disk", False, f"cannot measure the free space at {disk.get('existing')}: "
                     f"{disk.get('error')}", "check remote_output_dir (or --datapath)")
    where = f"at {disk['path']}" + ("" if disk["existing"] == disk["path"] else
                                    f" (on {disk['existing']}, which exists)")
    if zeroshot.is_classification(evaluation):  # no features: each image's top-5 and hits, a few bytes
        return Check("disk", disk["free"] > 0, f"{size(disk['free'])} free {where}; a classification writes "
                     "no features, only its results", None if disk["free"] > 0 else "free space on the server (`df -h`)")
    count = (facts.get("images", {}).get("count") or 0) + (facts.get("texts", {}).get("lines") or 0)
    shapes = (facts.get("checkpoint") or {}).get("shapes")
    dim = (shapes and infer_architecture(shapes).embed_dim) or VISION_SHAPES[evaluation.vision_model].embed_dim
    need = feature_bytes(count, dim)
    if disk["free"] < need:
        return Check("disk", False, f"only {size(disk['free'])} free {where}, but the features need "
                     f"about {size(need)}", "free space on the server (`df -h`), or set "
                     "remote_output_dir to a bigger disk")
    return Check("disk", True, f"{size(disk['free'])} free {where}; the features need about {size(need)}")


def feature_bytes(vectors: int, dim: int) -> int:
    """The feature files' size: one JSON line of DIM floats per image and per text."""
    return vectors * dim * BYTES_PER_FLOAT


def failures(checks: Sequence[Check]) -> list[Check]:
    return [check for check in checks if not check.ok]


def checkpoint_refusal(run: ProbeRun, evaluation: Evaluation) -> Optional[EvalkitError]:
    """For the evaluation's preflight: the error to stop with, or None when the checkpoint fits."""
    if run.facts is None or "checkpoint" not in run.facts:
        return None  # the env itself is broken: the upstream steps will say how
    for check in checkpoint_checks(run.facts["checkpoint"], evaluation):
        if not check.ok:
            kind = ConfigError if check.name == "architecture" else MissingInput
            return kind(check.found, check.fix)
    return None


def preflight_refusal(run: ProbeRun, settings: Settings, evaluation: Evaluation) -> Optional[EvalkitError]:
    """Before an extraction: the first failed check as the error to stop with, or None.

    The checkpoint keeps its own kinds (missing/corrupt: MissingInput, wrong towers:
    ConfigError); anything else the doctor would flag is a PreflightFailed.
    """
    refusal = checkpoint_refusal(run, evaluation)
    if refusal is not None:
        return refusal
    skipped = {"torch", "GPU"} | ({"checkpoint", "architecture"} if "checkpoint" not in (run.facts or {}) else set())
    for check in failures(interpret(run, settings, evaluation)):
        if check.name in skipped:  # sections the preflight did not probe
            continue
        return PreflightFailed(f"{check.name}: {check.found}",
                               check.fix or "run `python -m evalkit doctor` for every check")
    return None


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
