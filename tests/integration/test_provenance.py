"""Numbers you can put in a paper, on the real test bed: every provenance field against the real
value, the hash cached on the second run, the chance warning for the random checkpoints, a
context-length difference footnoted and refused by `results --strict`, and published rows in
every output format."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.errors import NotComparable

from .conftest import DATASETS, DEVICE

pytestmark = pytest.mark.integration

REFERENCE = "vit-b-16-flickr30k-cn-finetune"  # measured on test; the test bed's split is valid
SCRIPTS = ("extract_features.py", "make_topk_predictions.py", "make_topk_predictions_tr.py",
           "transform_ir_annotation_to_tr.py", "evaluation.py", "evaluation_tr.py")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def server_value(server_python: Path, code: str) -> str:
    return subprocess.run([str(server_python), "-c", code], check=True, capture_output=True,
                          text=True).stdout.strip()


def lmdb_records_sha256(server_python: Path, lmdb_dir: Path) -> str:
    """Every (key, value) of the LMDB in key order, length-prefixed: written here, not imported."""
    code = ("import hashlib, lmdb, sys\n"
            "h = hashlib.sha256()\n"
            "env = lmdb.open(sys.argv[1], readonly=True, lock=False)\n"
            "for k, v in env.begin().cursor():\n"
            "    h.update(len(k).to_bytes(8, 'big') + k + len(v).to_bytes(8, 'big') + v)\n"
            "print(h.hexdigest())\n")
    return subprocess.run([str(server_python), "-c", code, str(lmdb_dir)], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def git_checkout(testbed, tmp_path) -> tuple[Path, str]:
    """A Chinese-CLIP checkout that is a git repository: the test bed's cn_clip, committed."""
    root = tmp_path / "Chinese-CLIP checkout"
    shutil.copytree(testbed.chinese_clip_dir / "cn_clip", root / "cn_clip",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "upstream"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    testbed.write_config(chinese_clip_dir=str(root))
    return root, commit


def test_provenance_warnings_comparability_and_references(testbed, git_checkout, second_checkpoint):
    spec = DATASETS[0]
    root, commit = git_checkout
    first = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                             "--reference", REFERENCE, "--json")
    assert first.returncode == 0, first.stderr
    folder = testbed.results_dir / spec.name / spec.split
    label = testbed.checkpoint.parent.parent.name
    summary = json.loads((folder / label / "summary.json").read_text(encoding="utf-8"))
    found = summary["provenance"]

    # the checkpoint: its real SHA-256, size and mtime; hashed on this (first) run
    stat = testbed.checkpoint.stat()
    assert found["checkpoint"] == {"path": str(testbed.checkpoint), "size": stat.st_size,
                                   "mtime_ns": stat.st_mtime_ns, "sha256": sha256(testbed.checkpoint),
                                   "sha256_cached": False}
    # the server: this machine, the venv's python, torch and its CUDA build, cn_clip, the git checkout
    server = found["server"]
    python = testbed.server_python
    assert server["hostname"] == socket.gethostname()
    assert server["python"] == server_value(python, "import platform; print(platform.python_version())")
    assert [server["torch"]["version"], str(server["torch"]["cuda"])] == server_value(
        python, "import torch; print(torch.__version__, torch.version.cuda)").split()
    assert server["cn_clip"] == {"version": server_value(python, "import importlib.metadata as m; "
                                                                 "print(m.version('cn_clip'))"),
                                 "path": str(root / "cn_clip")}
    assert server["chinese_clip_git"] == {"commit": commit, "dirty": False, "toplevel": str(root)}
    if DEVICE == "cpu":
        assert server["gpu"] == "cpu"
    else:  # EVALKIT_TEST_DEVICE=cuda: GPU 0 as nvidia-smi names it
        smi = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             check=True, capture_output=True, text=True).stdout.splitlines()[0]
        assert [server["gpu"]["name"], server["gpu"]["driver"]] == [part.strip() for part in smi.rsplit(",", 1)]
    assert found["upstream_scripts_sha256"] == {name: sha256(root / "cn_clip" / "eval" / name) for name in SCRIPTS}
    # the dataset: its counts, the texts' SHA-256 and the LMDB's records
    dataset_dir = testbed.datapath / "datasets" / spec.name
    texts = dataset_dir / f"{spec.split}_texts.jsonl"
    assert found["dataset"] == {
        "name": spec.name, "split": spec.split, "num_images": spec.images,
        "num_texts": spec.images * spec.texts_per_image,
        "num_pairs": sum(len(json.loads(line)["image_ids"]) for line in texts.read_text(encoding="utf-8").splitlines()),
        "texts_sha256": sha256(texts),
        "lmdb_fingerprint": "records:" + lmdb_records_sha256(python, dataset_dir / "lmdb" / spec.split / "imgs")}
    assert found["settings"] == {"vision_model": "RN50", "text_model": "RBT3-chinese", "context_length": 52,
                                 "precision": "fp32" if DEVICE == "cpu" else "amp", "top_k": 10, "knn": "upstream",
                                 "device": DEVICE, "img_batch_size": 32, "text_batch_size": 32,
                                 "eval_batch_size": 32768}
    assert found["evalkit_version"] == server_value(Path(sys.executable), "import importlib.metadata as m; "
                                                                          "print(m.version('evalkit'))")

    # the random checkpoint's recall is chance; the tiny split is not the published one
    warnings = summary["warnings"]
    assert any("indistinguishable from chance" in w and "random weights" in w for w in warnings), warnings
    assert any("20 images and 80 texts; the published split has 1000 and 5000" in w for w in warnings), warnings
    assert "indistinguishable from chance" in first.stderr  # printed with the table

    # --reference on an evaluation: the published row, its deltas against the model, the split warning
    document = json.loads(first.stdout)
    [row] = document["models"]
    assert row["provenance"] == found and row["metrics"]["image_retrieval_recall@1"] == pytest.approx(
        row["recall"]["text_to_image"]["r1"] / 100)
    [published] = document["references"]
    assert published["recall"]["text_to_image"] == {"r1": 79.1, "r5": 94.8, "r10": 97.4, "mean_recall": 90.43}
    assert published["delta"]["text_to_image"]["r1"] == pytest.approx(79.1 - row["recall"]["text_to_image"]["r1"])
    assert "measured on the test split, these rows on valid" in published["warnings"][0]
    assert f"published: {REFERENCE}" in first.stderr

    # the same checkpoint again: its hash comes from the server's cache
    again = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert again.returncode == 0, again.stderr
    summary = json.loads((folder / label / "summary.json").read_text(encoding="utf-8"))
    assert summary["provenance"]["checkpoint"]["sha256_cached"] is True
    assert summary["provenance"]["checkpoint"]["sha256"] == sha256(testbed.checkpoint)

    # another checkpoint with another context length: a footnoted row, refused by --strict
    testbed.write_config(chinese_clip_dir=str(root), context_length=24)
    other = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(second_checkpoint))
    assert other.returncode == 0, other.stderr
    assert "context_length 24 on Flickr30k-CN" in other.stdout + other.stderr
    check_results_outputs(testbed, second_checkpoint.parent.parent.name)


def results(testbed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit", "results", "--results-dir", str(testbed.results_dir),
                           *args], capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="250"))


def check_results_outputs(testbed, other_label: str) -> None:
    footnote = "context length 24 (the others: 52)"  # two rows: each is footnoted against the other
    table = results(testbed, "--reference", REFERENCE)
    assert table.returncode == 0, table.stderr
    assert f"{other_label} †1" in table.stdout and f"†1 {other_label}: {footnote}" in table.stdout
    assert "†2 muge_finetune_rn50_rbt3_team_distill: context length 52 (the others: 24)" in table.stdout
    assert f"published: {REFERENCE}" in table.stdout and "79.10" in table.stdout

    markdown = results(testbed, "--reference", REFERENCE, "--format", "markdown").stdout
    assert f"| *published: {REFERENCE}* | 79.10 (" in markdown and footnote in markdown

    rows = list(csv.DictReader(io.StringIO(results(testbed, "--reference", REFERENCE, "--format", "csv").stdout)))
    [published] = [row for row in rows if row["status"] == "published"]
    assert (published["t2i_r1"], published["i2t_r10"]) == ("79.1", "99.5")
    assert [row["comparable"] for row in rows if row["model"] == other_label] == ["False"]

    [document] = json.loads(results(testbed, "--reference", REFERENCE, "--format", "json").stdout)
    assert document["comparable"] is False
    assert {row["label"]: row["footnotes"] for row in document["models"]}[other_label] == [footnote]
    assert document["references"][0]["recall"]["image_to_text"]["r1"] == 93.5

    strict = results(testbed, "--strict")
    assert strict.returncode == NotComparable.exit_code, strict.stderr
    assert footnote in strict.stderr and "Traceback" not in strict.stderr
