"""PURE: what a recall number was made from, as summary.json's `provenance` and each comparison
row's: evalkit's version, the server (host, GPU or cpu, python, torch and its CUDA build, cn_clip,
the Chinese-CLIP checkout's commit), the SHA-256 of each upstream script that made the numbers,
the checkpoint's SHA-256, the dataset's fingerprints and counts, and the settings.

The server's part comes from remote/provenance.py (run beside the inspection, before the run);
the settings' part from the resolved settings, never from the server.
"""
from __future__ import annotations

import posixpath

from .config import Settings
from .evaluation import CLASSIFICATION, Evaluation
from .plan import dataset_paths, directions
from .progress import last_marked_json
from .server import PROVENANCE, ServerCall, script_path, scripts_dir

MARKER = b"EVALKIT-PROVENANCE "
HASH_CACHE = "hash-cache.json"  # in the server's .evalkit folder: path -> size, mtime, SHA-256
RUN_FILE = "provenance.json"    # the facts, kept in the run's directory for `attach`

# Which upstream scripts made which numbers: the features always; KNN's unless --knn fast.
EXTRACT_SCRIPTS = ("extract_features.py",)
KNN_SCRIPTS = {"text_to_image": ("make_topk_predictions.py",),
               "image_to_text": ("make_topk_predictions_tr.py",)}
RECALL_SCRIPTS = {"text_to_image": ("evaluation.py",),
                  "image_to_text": ("transform_ir_annotation_to_tr.py", "evaluation_tr.py")}


def provenance_call(settings: Settings, evaluation: Evaluation) -> ServerCall:
    """remote/provenance.py for EVALUATION's checkpoint and split, with Chinese-CLIP on PYTHONPATH
    as the upstream steps have it (so the cn_clip it reports is the one they import)."""
    images, texts = dataset_paths(settings, evaluation.dataset, evaluation.split)
    root = settings.chinese_clip_dir
    device = ["--cpu"] if settings.device == "cpu" else ["--gpu", str(settings.gpu)]
    args = ("--checkpoint", evaluation.checkpoint, "--images", images, "--texts", texts,
            "--chinese-clip-dir", root, "--cache", posixpath.join(scripts_dir(settings), HASH_CACHE), *device)
    return ServerCall(settings.python, script_path(settings, PROVENANCE), args, (),
                      (root, posixpath.join(root, "cn_clip")))


def facts_printed(stdout: bytes) -> dict | None:
    """The facts remote/provenance.py printed, or None (an older server script, a broken env)."""
    return last_marked_json(stdout, MARKER)


# the dataset facts kept, by task (remote/provenance.py's; remote/zeroshot.py's for classification)
DATASET_FACTS = {"retrieval": ("num_images", "num_texts", "num_pairs", "texts_sha256", "lmdb_fingerprint"),
                 CLASSIFICATION: ("num_images", "num_classes", "listing_sha256")}


def precision(settings: Settings) -> str:
    """The --precision extract_features.py ran with: evalkit passes fp32 on the CPU, else
    upstream's default (amp)."""
    return "fp32" if settings.device == "cpu" else "amp"


def scripts_used(settings: Settings, evaluation: Evaluation) -> tuple[str, ...]:
    """The upstream scripts whose output the numbers are, in the order they run."""
    if evaluation.task == CLASSIFICATION:  # its functions, called by remote/zeroshot.py
        return ("zeroshot_evaluation.py",)
    evaluated = [d for d in directions(settings, evaluation) if d in RECALL_SCRIPTS]
    knn = [name for d in evaluated for name in KNN_SCRIPTS[d]] if settings.knn == "upstream" else []
    return (*EXTRACT_SCRIPTS, *knn, *(name for d in evaluated for name in RECALL_SCRIPTS[d]))


def run_settings(settings: Settings, evaluation: Evaluation) -> dict:
    return {"vision_model": evaluation.vision_model, "text_model": evaluation.text_model,
            "context_length": settings.context_length, "precision": precision(settings), "top_k": settings.top_k,
            "knn": settings.knn, "device": settings.device, "img_batch_size": settings.img_batch_size,
            "text_batch_size": settings.text_batch_size, "eval_batch_size": settings.eval_batch_size}


def build_provenance(facts: dict | None, settings: Settings, evaluation: Evaluation, version: str) -> dict:
    """summary.json's `provenance`; the server's parts are null when they could not be gathered
    (`problem` says why)."""
    facts = facts or {}
    server = dict(facts.get("server") or {})
    hashes = server.pop("upstream_scripts_sha256", None) or {}
    dataset = facts.get("dataset") or {}
    provenance = {
        "evalkit_version": version,
        "server": server or None,
        "upstream_scripts_sha256": {name: hashes.get(name) for name in scripts_used(settings, evaluation)}
        if hashes else None,
        "checkpoint": facts.get("checkpoint"),
        "dataset": {"name": evaluation.dataset, "split": evaluation.split,
                    **{key: dataset.get(key) for key in DATASET_FACTS[evaluation.task]}},
        "settings": run_settings(settings, evaluation),
    }
    problem = facts.get("problem") if facts else "the server's provenance script did not report"
    if problem:
        provenance["problem"] = problem
    return provenance
