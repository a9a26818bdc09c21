"""image_to_image.py against an independent brute-force computation in plain Python.

The script runs with the test bed's server python (torch); the brute force here reads the same
files with json and ranks every other image by a plain-Python inner product, ties in file
order, then scores the issue's definitions literally. All cases share one process, because
importing torch costs seconds; each case is still its own test.
"""
from __future__ import annotations

import json
import os
import random
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REMOTE = Path(__file__).resolve().parents[2] / "evalkit" / "remote"
IMAGE_TO_IMAGE = REMOTE / "image_to_image.py"


@dataclass(frozen=True)
class Case:
    name: str
    images: int
    dim: int
    chunk: int
    values: str                      # "random" (gaussian float32) or "coarse" (multiples of 1/8: ties)
    group_sizes: tuple = (1, 2, 3, 4)  # images per text, drawn at random
    labels: int = 0                  # > 0: a labels file with this many labels (some images unlabelled)
    sparse_ids: bool = False
    expect_skip: bool = False
    extra: dict = field(default_factory=dict)


CASES = [
    Case("MUGE-like texts list several images; the gallery spans several tiles", images=300, dim=16,
         chunk=64, values="random", sparse_ids=True),
    Case("coarse values tie everywhere: ties go to feature-file order", images=120, dim=4, chunk=32,
         values="coarse"),
    Case("a labels file replaces the texts as relevance", images=150, dim=8, chunk=40, values="random",
         group_sizes=(1,), labels=12),
    Case("fewer images than the top 10", images=6, dim=8, chunk=4096, values="random", group_sizes=(2, 3)),
    Case("one image per caption (Flickr-like): skipped", images=40, dim=8, chunk=4096, values="random",
         group_sizes=(1,), expect_skip=True),
    Case("every label different: skipped", images=30, dim=8, chunk=4096, values="random",
         group_sizes=(2,), labels=30, expect_skip=True),
]


# ----------------------------------------------------------------------------- case files

def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _vector(case: Case, rng: random.Random) -> list[float]:
    if case.values == "coarse":
        return [rng.randint(-2, 2) / 8 for _ in range(case.dim)]
    return [_float32(rng.gauss(0, 1)) for _ in range(case.dim)]


@dataclass
class CaseFiles:
    case: Case
    folder: Path

    @property
    def image_feats(self) -> Path:
        return self.folder / "imgs.img_feat.jsonl"

    @property
    def texts(self) -> Path:
        return self.folder / "texts.jsonl"

    @property
    def labels(self) -> Path:
        return self.folder / "imgs_labels.jsonl"

    @property
    def result(self) -> Path:
        return self.folder / "image_to_image_results.json"

    @property
    def log(self) -> Path:
        return self.folder / "out.log"

    def argv(self) -> list[str]:
        return [str(IMAGE_TO_IMAGE), "--image-feats", str(self.image_feats), "--texts", str(self.texts),
                "--labels", str(self.labels), "--output", str(self.result), "--device", "cpu",
                "--chunk-size", str(self.case.chunk)]


def _make_case(root: Path, case: Case, seed: int) -> CaseFiles:
    rng = random.Random(seed)
    files = CaseFiles(case, root / f"case{seed}")
    files.folder.mkdir()
    ids = rng.sample(range(10**6, 10**7), case.images) if case.sparse_ids else list(range(100, 100 + case.images))
    with open(files.image_feats, "w") as handle:
        for image_id in ids:
            handle.write(json.dumps({"image_id": image_id, "feature": _vector(case, rng)}) + "\n")
    shuffled = rng.sample(ids, len(ids))
    with open(files.texts, "w") as handle:
        text_id = 0
        while shuffled:
            size = rng.choice(case.group_sizes)
            listed, shuffled = shuffled[:size], shuffled[size:]
            handle.write(json.dumps({"text_id": text_id, "text": "文字", "image_ids": listed}) + "\n")
            text_id += 1
    if case.labels:
        with open(files.labels, "w") as handle:
            for number, image_id in enumerate(ids):
                if case.labels == case.images:
                    label = number
                elif rng.random() < 0.1:
                    continue  # unlabelled: neither a query nor relevant to any
                else:
                    label = f"类别{rng.randrange(case.labels)}"
                handle.write(json.dumps({"image_id": image_id, "label": label}, ensure_ascii=False) + "\n")
    return files


# One python process runs every case in turn, each as if started on its own.
_BATCH_RUNNER = """
import json, runpy, sys
sys.path.insert(0, sys.argv[1])  # as `python image_to_image.py` puts its folder first
for argv, log in json.loads(sys.argv[2]):
    sys.argv = argv
    with open(log, "w") as out:
        sys.stdout = out
        runpy.run_path(argv[0], run_name="__main__")
    sys.stdout = sys.__stdout__
"""


@pytest.fixture(scope="module")
def results(server_python, tmp_path_factory) -> dict[str, CaseFiles]:
    root = tmp_path_factory.mktemp("i2i")
    cases = {case.name: _make_case(root, case, seed) for seed, case in enumerate(CASES)}
    batch = [[files.argv(), str(files.log)] for files in cases.values()]
    done = subprocess.run([str(server_python), "-c", _BATCH_RUNNER, str(REMOTE), json.dumps(batch)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return cases


# ----------------------------------------------------------------------------- brute force

def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def brute_force(image_feats: Path, texts_path: Path, labels: Path) -> dict:
    """The issue's definitions, literally, over every pair of images."""
    images = _read_jsonl(image_feats)
    ids = [record["image_id"] for record in images]
    if labels.exists():
        label = {record["image_id"]: record["label"] for record in _read_jsonl(labels)}

        def relevant(a, b):
            return a != b and a in label and b in label and label[a] == label[b]
    else:
        texts = [set(record["image_ids"]) for record in _read_jsonl(texts_path)]

        def relevant(a, b):
            return a != b and any(a in listed and b in listed for listed in texts)
    hits = {1: 0, 5: 0, 10: 0}
    ap_total, queries = 0.0, 0
    for position, query in enumerate(images):
        relevant_count = sum(relevant(query["image_id"], other) for other in ids)
        if relevant_count == 0:
            continue
        queries += 1
        gallery = [(-sum(a * b for a, b in zip(query["feature"], other["feature"])), other_position)
                   for other_position, other in enumerate(images) if other_position != position]
        top = [ids[other_position] for _, other_position in sorted(gallery)[:10]]
        flags = [relevant(query["image_id"], other) for other in top]
        for k in hits:
            hits[k] += any(flags[:k])
        precisions = [sum(flags[:rank]) / rank for rank in range(1, len(flags) + 1) if flags[rank - 1]]
        ap_total += sum(precisions) / min(relevant_count, 10)
    if not queries:
        return {"num_queries": 0}
    r1, r5, r10 = (100 * hits[k] / queries for k in (1, 5, 10))
    return {"r1": r1, "r5": r5, "r10": r10, "mean_recall": (r1 + r5 + r10) / 3,
            "map10": 100 * ap_total / queries, "num_queries": queries}


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("case", [case for case in CASES if not case.expect_skip], ids=lambda case: case.name)
def test_metrics_equal_a_brute_force_computation(results, case):
    files = results[case.name]
    result = json.loads(files.result.read_text())
    expected = brute_force(files.image_feats, files.texts, files.labels)
    assert result["success"] is True and "skipped" not in result
    assert result["scoreJson"]["num_queries"] == expected["num_queries"] > 0
    for metric in ("r1", "r5", "r10", "mean_recall", "map10"):
        assert result["scoreJson"][metric] == pytest.approx(expected[metric], abs=1e-9), metric
    assert result["score"] == result["scoreJson"]["mean_recall"]
    assert result["relevance"] == ("same_label" if case.labels else "shared_text")


@pytest.mark.parametrize("case", [case for case in CASES if case.expect_skip], ids=lambda case: case.name)
def test_without_relevant_pairs_the_direction_is_skipped_with_one_sentence(results, case):
    files = results[case.name]
    result = json.loads(files.result.read_text())
    assert brute_force(files.image_feats, files.texts, files.labels) == {"num_queries": 0}
    assert result["success"] is True and result["scoreJson"] == {"num_queries": 0}
    assert result["skipped"].startswith("image→image skipped: ")
    assert result["skipped"].endswith("so no image has a relevant partner")
    assert str(files.labels if case.labels else files.texts) in result["skipped"]
    assert result["skipped"] in files.log.read_text()


def test_the_result_is_one_json_line(results):
    """One complete line: the KNN record's completeness check reads it as it reads predictions."""
    text = next(iter(results.values())).result.read_text()
    assert text.endswith("}\n") and text.count("\n") == 1
