"""Client-side wrappers that run the test-bed scripts with the server venv's python.

``make_dataset.py`` and ``make_checkpoint.py`` need torch/cn_clip, which the
client venv does not have, so they run as subprocesses of the server python.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

TAIL_LINES = 30


def _run_script(python: Path, script: str, args: list[str]) -> str:
    """Run a sibling script; return its stdout, or raise RuntimeError with the stderr tail."""
    cmd = [str(python), str(Path(__file__).with_name(script)), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                          errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-TAIL_LINES:])
        raise RuntimeError(f"{script} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def build_dataset(python: Path, datapath: Path, dataset: str, split: str, *,
                  images: int = 20, texts_per_image: int = 4, first_image_id: int = 1000,
                  first_text_id: int = 1, seed: int = 0) -> Path:
    """Build ``datapath/datasets/<dataset>/`` (TSV, JSONL, LMDB) for one split.

    Always rebuilds (it takes well under a second). Returns the dataset dir.
    """
    _run_script(python, "make_dataset.py", [
        "--datapath", str(datapath), "--dataset", dataset, "--split", split,
        "--images", str(images), "--texts-per-image", str(texts_per_image),
        "--first-image-id", str(first_image_id), "--first-text-id", str(first_text_id),
        "--seed", str(seed),
    ])
    return Path(datapath) / "datasets" / dataset


def build_checkpoint(python: Path, output: Path, *, seed: int = 0) -> Path:
    """Write a random RN50 + RBT3-chinese checkpoint (~150 MB) to ``output``.

    Skipped when ``output`` already exists: the write is atomic, so an
    existing file is always complete.
    """
    output = Path(output)
    if not output.exists():
        _run_script(python, "make_checkpoint.py", ["--output", str(output), "--seed", str(seed)])
    return output


def build_classification_dataset(python: Path, datapath: Path, dataset: str, *, classes: int = 12,
                                 seed: int = 0) -> Path:
    """Build ``datapath/datasets/<dataset>/`` (label_cn.txt, test/<id>/*.jpg) in upstream's
    zero-shot layout. Always rebuilds (well under a second). Returns the dataset dir."""
    _run_script(python, "make_classification.py", ["--datapath", str(datapath), "--dataset", dataset,
                                                   "--classes", str(classes), "--seed", str(seed)])
    return Path(datapath) / "datasets" / dataset
