"""fast_knn.py writes the same prediction files as upstream's two KNN scripts.

Runs upstream's make_topk_predictions.py / make_topk_predictions_tr.py (through cpu_launch.py)
and fast_knn.py with the test bed's server python (torch + cn_clip; see conftest.py).
All parity cases share two processes (one upstream, one fast_knn) because importing torch
costs seconds; each case is still its own test.
"""
from __future__ import annotations

import json
import os
import random
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REMOTE = Path(__file__).resolve().parents[2] / "evalkit" / "remote"
FAST_KNN = REMOTE / "fast_knn.py"
CPU_LAUNCH = REMOTE / "cpu_launch.py"
TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Case:
    name: str
    images: int
    texts: int
    dim: int
    top_k: int
    chunk: int
    # "random": gaussian float32 values; "coarse": multiples of 1/8, so every score is exact and
    # ties are everywhere; "constant": all vectors equal, so every score ties.
    values: str
    duplicate_every: int = 0  # > 0: every n-th vector repeats an earlier one, making exact ties
    shuffled_ids: bool = False

    @property
    def is_exact_arithmetic(self) -> bool:
        """Scores then have no rounding at all, so upstream and fast_knn must agree byte for byte."""
        return self.values in ("coarse", "constant")


CASES = [
    Case("fewer images than k", images=6, texts=9, dim=8, top_k=10, chunk=4096, values="random"),
    Case("gallery spans several chunks in both directions", images=700, texts=130, dim=32,
         top_k=10, chunk=64, values="random"),
    Case("top-1 only", images=257, texts=65, dim=16, top_k=1, chunk=32, values="random"),
    Case("ids are sparse and not in file order", images=120, texts=40, dim=16, top_k=5,
         chunk=50, values="random", shuffled_ids=True),
    Case("duplicate vectors tie across the k-th place", images=200, texts=80, dim=16, top_k=5,
         chunk=32, values="random", duplicate_every=3),
    Case("coarse values tie everywhere, ties go to file order", images=300, texts=120, dim=8,
         top_k=10, chunk=50, values="coarse"),
    Case("coarse duplicates straddle chunk borders", images=150, texts=90, dim=4, top_k=7,
         chunk=16, values="coarse", duplicate_every=2),
    Case("every score equal: pure file order", images=50, texts=40, dim=8, top_k=10, chunk=16,
         values="constant"),
]


# ----------------------------------------------------------------------------- feature files

def _float32(value: float) -> float:
    """Round like a float32 tensor's .tolist(), which is what extract_features writes."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _vectors(case: Case, count: int, rng: random.Random) -> list[list[float]]:
    if case.values == "constant":
        return [[0.5] * case.dim for _ in range(count)]
    if case.values == "coarse":
        vectors = [[rng.randint(-2, 2) / 8 for _ in range(case.dim)] for _ in range(count)]
    else:
        vectors = [[_float32(rng.gauss(0, 1)) for _ in range(case.dim)] for _ in range(count)]
    if case.duplicate_every:
        for index in range(case.duplicate_every, count, case.duplicate_every):
            vectors[index] = vectors[rng.randrange(index)]
    return vectors


def _ids(case: Case, count: int, rng: random.Random) -> list[int]:
    if not case.shuffled_ids:
        return list(range(count))
    return rng.sample(range(10**6, 10**7), count)


def _write_features(path: Path, id_key: str, ids: list[int], vectors: list[list[float]]) -> None:
    with open(path, "w") as handle:
        for item_id, vector in zip(ids, vectors):
            handle.write(json.dumps({id_key: item_id, "feature": vector}) + "\n")


@dataclass
class CaseFiles:
    case: Case
    image_feats: Path
    text_feats: Path
    upstream_t2i: Path
    upstream_i2t: Path
    fast_t2i: Path
    fast_i2t: Path


def _make_case_files(root: Path, case: Case, seed: int) -> CaseFiles:
    rng = random.Random(seed)
    folder = root / f"case{seed}"
    folder.mkdir()
    files = CaseFiles(case, *(folder / name for name in (
        "imgs.img_feat.jsonl", "texts.txt_feat.jsonl", "up_t2i.jsonl", "up_i2t.jsonl",
        "fast_t2i.jsonl", "fast_i2t.jsonl")))
    _write_features(files.image_feats, "image_id", _ids(case, case.images, rng),
                    _vectors(case, case.images, rng))
    _write_features(files.text_feats, "text_id", _ids(case, case.texts, rng),
                    _vectors(case, case.texts, rng))
    return files


# ----------------------------------------------------------------------------- running

# One python process runs many scripts in turn, as if each were started on its own.
_BATCH_RUNNER = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
"""


def _upstream_eval_dir(python) -> Path:
    """Where cn_clip/eval lives for that python, found without importing cn_clip (and torch)."""
    found = subprocess.run([python, "-c", "import importlib.util; "
                            "print(importlib.util.find_spec('cn_clip').submodule_search_locations[0])"],
                           capture_output=True, text=True)
    if found.returncode:
        pytest.skip(f"{python} has no cn_clip: {found.stderr.strip()[-200:]}")
    return Path(found.stdout.strip()) / "eval"


def _start_batch(python: str, argvs: list[list[str]]) -> subprocess.Popen:
    # One thread each: on a busy machine, torch's thread pool waits far longer than these
    # tiny products take.
    return subprocess.Popen([python, "-c", _BATCH_RUNNER, json.dumps(argvs)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish_batch(batch: subprocess.Popen) -> None:
    _, stderr = batch.communicate()
    assert batch.returncode == 0, stderr[-3000:]


def _upstream_argvs(files: CaseFiles, t2i_script: str, i2t_script: str) -> list[list[str]]:
    common = ["--image-feats", str(files.image_feats), "--text-feats", str(files.text_feats),
              "--top-k", str(files.case.top_k)]
    return [[str(CPU_LAUNCH), t2i_script, *common, "--output", str(files.upstream_t2i)],
            [str(CPU_LAUNCH), i2t_script, *common, "--output", str(files.upstream_i2t)]]


def _fast_argv(files: CaseFiles, outputs: list[str] | None = None) -> list[str]:
    outputs = outputs or ["--t2i-output", str(files.fast_t2i), "--i2t-output", str(files.fast_i2t)]
    return [str(FAST_KNN), "--image-feats", str(files.image_feats),
            "--text-feats", str(files.text_feats), "--top-k", str(files.case.top_k),
            "--chunk-size", str(files.case.chunk), "--device", "cpu", *outputs]


def _one_direction_only(files: CaseFiles) -> Path:
    return files.fast_i2t.with_name("fast_i2t_only.jsonl")


@pytest.fixture(scope="module")
def predictions(server_python, tmp_path_factory) -> dict[str, CaseFiles]:
    """Every case's feature files and both programs' predictions for them."""
    root = tmp_path_factory.mktemp("knn")
    cases = {case.name: _make_case_files(root, case, seed) for seed, case in enumerate(CASES)}
    eval_dir = _upstream_eval_dir(server_python)
    t2i, i2t = (str(eval_dir / "make_topk_predictions.py"),
                str(eval_dir / "make_topk_predictions_tr.py"))
    # The two batches are independent: run them side by side.
    batches = [_start_batch(server_python, [argv for files in cases.values()
                                            for argv in _upstream_argvs(files, t2i, i2t)]),
               _start_batch(server_python, [_fast_argv(files) for files in cases.values()] + [
                   _fast_argv(files, ["--i2t-output", str(_one_direction_only(files))])
                   for files in cases.values()])]
    for batch in batches:
        _finish_batch(batch)
    return cases


# ----------------------------------------------------------------------------- comparing

def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _features(path: Path, id_key: str) -> dict[int, list[float]]:
    return {record[id_key]: record["feature"] for record in _read_jsonl(path)}


def _score(left: list[float], right: list[float]) -> float:
    return sum(a * b for a, b in zip(left, right))


def _near_tie_differences(expected: list[dict], actual: list[dict], query_key: str,
                          result_key: str, queries: dict, gallery: dict) -> list[str]:
    """Positions where the lists differ by more than a near-tie, as readable lines."""
    problems = []
    for want, got in zip(expected, actual):
        if want[query_key] != got[query_key] or len(want[result_key]) != len(got[result_key]):
            problems.append(f"{want} != {got}")
            continue
        query = queries[want[query_key]]
        for position, (a, b) in enumerate(zip(want[result_key], got[result_key])):
            gap = abs(_score(query, gallery[a]) - _score(query, gallery[b]))
            if a != b and gap > TIE_TOLERANCE:
                problems.append(f"{query_key} {want[query_key]} place {position}: "
                                f"upstream {a}, fast {b}, score gap {gap:.2e}")
    return problems


def _recall(lines: list[dict], query_key: str, result_key: str, is_positive) -> list[float]:
    """Recall@1/5/10 against a made-up ground truth: enough to see if rankings disagree."""
    return [sum(any(is_positive(line[query_key], item) for item in line[result_key][:k])
                for line in lines) / len(lines) for k in (1, 5, 10)]


def _assert_same_predictions(expected_path: Path, actual_path: Path, files: CaseFiles,
                             query_key: str, result_key: str) -> None:
    if files.case.is_exact_arithmetic:
        assert actual_path.read_text() == expected_path.read_text()
        return
    expected, actual = _read_jsonl(expected_path), _read_jsonl(actual_path)
    assert len(actual) == len(expected)
    texts = _features(files.text_feats, "text_id")
    images = _features(files.image_feats, "image_id")
    queries, gallery = (texts, images) if query_key == "text_id" else (images, texts)
    assert _near_tie_differences(expected, actual, query_key, result_key, queries, gallery) == []

    def is_positive(query_id, item_id):
        return (query_id + item_id) % 7 == 0

    assert (_recall(actual, query_key, result_key, is_positive)
            == _recall(expected, query_key, result_key, is_positive))
    # Same bytes apart from near-tie swaps: same keys, key order, formatting and line order.
    assert [line.split(": [")[0] for line in actual_path.read_text().splitlines()] == \
           [line.split(": [")[0] for line in expected_path.read_text().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_text_to_image_predictions_match_upstream(predictions, case):
    files = predictions[case.name]
    _assert_same_predictions(files.upstream_t2i, files.fast_t2i, files, "text_id", "image_ids")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_image_to_text_predictions_match_upstream(predictions, case):
    files = predictions[case.name]
    _assert_same_predictions(files.upstream_i2t, files.fast_i2t, files, "image_id", "text_ids")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_asking_for_one_direction_writes_only_that_file(predictions, case):
    files = predictions[case.name]
    only = _one_direction_only(files)
    assert only.read_text() == files.fast_i2t.read_text()
    assert sorted(path.name for path in only.parent.glob("fast_*")) == [
        "fast_i2t.jsonl", "fast_i2t_only.jsonl", "fast_t2i.jsonl"]


# ----------------------------------------------------------------------------- bad input

GOOD_IMAGE = '{"image_id": 1, "feature": [0.5, 0.25]}\n'
GOOD_TEXT = '{"text_id": 7, "feature": [0.5, -0.25]}\n'


@pytest.mark.parametrize("image_lines, text_lines, message", [
    (None, GOOD_TEXT, "error: cannot read image features: {images}: No such file or directory"),
    ("", GOOD_TEXT, "error: no image features in {images}: the file has no feature lines"),
    (GOOD_IMAGE, "\n\n", "error: no text features in {texts}: the file has no feature lines"),
    (GOOD_IMAGE + '{"image_id": 2, "feature": [0.5]}\n', GOOD_TEXT,
     "error: {images}:2: feature has 1 values, earlier lines have 2"),
    (GOOD_IMAGE, '{"text_id": 7, "feature": [0.5, 0.1, 0.2]}\n',
     "error: image features have 2 values but text features have 3: they must come from one model"),
    (GOOD_IMAGE + '{"image_id": 2, "feature": [0.5,\n', GOOD_TEXT,
     "error: {images}:2: not valid JSON (Expecting value)"),
    (GOOD_IMAGE, '{"id": 7, "feature": [0.5, -0.25]}\n',
     "error: {texts}:1: missing key 'text_id' (each line needs 'text_id' and 'feature')"),
    (GOOD_IMAGE + '{"image_id": 2, "feature": [NaN, 0.5]}\n', GOOD_TEXT,
     "error: {images}:2: feature has a NaN or infinite value; the ranking would be meaningless"),
], ids=["missing file", "empty image file", "blank text file", "ragged image features",
        "image and text dimensions differ", "truncated json line", "missing id key", "NaN value"])
def test_bad_input_exits_1_with_one_line_and_writes_nothing(server_python, tmp_path, image_lines,
                                                           text_lines, message):
    images, texts = tmp_path / "imgs.jsonl", tmp_path / "texts.jsonl"
    if image_lines is not None:
        images.write_text(image_lines)
    texts.write_text(text_lines)
    output = tmp_path / "t2i.jsonl"
    done = subprocess.run([server_python, str(FAST_KNN), "--image-feats", str(images),
                           "--text-feats", str(texts), "--t2i-output", str(output)],
                          capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (
        1, f"fast_knn: {message.format(images=images, texts=texts)}\n")
    assert sorted(tmp_path.iterdir()) == sorted(p for p in (images, texts) if p.exists())


@pytest.mark.parametrize("arguments, complaint", [
    (["--top-k", "0", "--t2i-output", "out"], "--top-k must be at least 1"),
    (["--chunk-size", "0", "--t2i-output", "out"], "--chunk-size must be at least 1"),
    ([], "nothing to write: give --t2i-output and/or --i2t-output"),
])
def test_unusable_options_are_refused_before_reading(server_python, tmp_path, arguments, complaint):
    done = subprocess.run([server_python, str(FAST_KNN), "--image-feats", "absent",
                           "--text-feats", "absent", *arguments],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == f"fast_knn.py: error: {complaint}"
