"""remote/query_hits.py (numpy, as on the server): each query's hits counted as upstream's
evaluation scripts count them, reproducible intervals, and a synthetic pair of prediction files
whose large difference the laptop's tests find."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from evalkit.remote import query_hits
from evalkit.significance import parse_query_hits, significance


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_hits_are_counted_as_upstream_counts_them(tmp_path):
    texts = write_jsonl(tmp_path / "texts.jsonl", [
        {"text_id": 7, "text": "a", "image_ids": [70]},
        {"text_id": 3, "text": "b", "image_ids": [30, 31]},
        {"text_id": 9, "text": "c", "image_ids": [90]},
        {"text_id": 7, "text": "a again", "image_ids": [71]},  # a repeated id: first place, last answers
    ])
    top = lambda *first: [*first, *range(1000, 1010 - len(first))]  # noqa: E731
    predictions = write_jsonl(tmp_path / "predictions.jsonl", [
        {"text_id": 3, "image_ids": top(1, 2, 3, 4, 31)},   # hit at 5
        {"text_id": 7, "image_ids": top(71)},               # hit at 1 (the last line's answers)
        {"text_id": 9, "image_ids": top(*range(1, 10), 90)},  # hit at 10
    ])
    found = query_hits.direction_record("text_to_image", texts, predictions, seed=1, resamples=200)
    assert found["queries"] == 3
    assert found["hits"] == {"r1": "100", "r5": "110", "r10": "111"}  # in reference order: 7, 3, 9
    assert set(found["ci95"]) == {"r1", "r5", "r10", "mean_recall"}


def test_a_direction_that_cannot_be_read_is_an_error_not_a_crash(tmp_path):
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text_id": 1, "image_ids": [1]}])
    missing_query = write_jsonl(tmp_path / "predictions.jsonl", [{"text_id": 2, "image_ids": list(range(10))}])
    texts_tr = write_jsonl(tmp_path / "texts.tr.jsonl", [{"image_id": 1, "text_ids": [1]}])
    output = tmp_path / "query_hits.json"
    assert query_hits.main(["--text-to-image", texts, missing_query, "--image-to-text", texts_tr,
                            str(tmp_path / "nothing.jsonl"), "--output", str(output)]) == 0
    document = json.loads(output.read_text(encoding="utf-8"))
    assert document["text_to_image"] == {"error": "KeyError: 1"}
    assert document["image_to_text"]["error"].startswith("FileNotFoundError")
    assert parse_query_hits(output.read_bytes()) is None


def test_intervals_are_reproducible_and_match_resampling_the_queries():
    rng = np.random.default_rng(0)
    levels = rng.choice(4, size=3000, p=[0.2, 0.2, 0.2, 0.4])
    hits = {f"r{k}": "".join("1" if level >= need else "0" for level in levels)
            for k, need in ((1, 3), (5, 2), (10, 1))}
    interval = query_hits.ci95(hits, seed=5)
    assert interval == query_hits.ci95(hits, seed=5)
    # the textbook way: draw query indices with replacement
    indices = np.random.default_rng(9).integers(0, levels.size, size=(2000, levels.size))
    means = (levels[indices] >= 3).mean(axis=1) * 100
    textbook = np.percentile(means, [2.5, 97.5])
    assert interval["r1"] == pytest.approx(list(textbook), abs=0.15)
    r1 = (levels >= 3).mean() * 100
    assert interval["r1"][0] < r1 < interval["r1"][1]


def test_a_known_large_difference_is_significant(tmp_path):
    """Two prediction files over the same 2,000 texts: one model finds 60% of the answers at
    rank 1, the other 50%; the laptop's tests give p < 0.001 in every column."""
    rng = random.Random(4)
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text_id": t, "image_ids": [t]} for t in range(2000)])

    def predictions(name: str, rate: float) -> str:
        rows = []
        for t in range(2000):
            others = rng.sample(range(2000, 4000), 10)
            rows.append({"text_id": t, "image_ids": [t, *others[:9]] if rng.random() < rate else others})
        return write_jsonl(tmp_path / name, rows)

    documents = []
    for name, rate in (("strong", 0.6), ("weak", 0.5)):
        output = tmp_path / f"{name}.json"
        query_hits.main(["--text-to-image", texts, predictions(f"{name}.jsonl", rate), "--output", str(output)])
        documents.append(parse_query_hits(output.read_bytes()))
    found = significance(*documents)["text_to_image"]
    assert all(found[metric]["p_value"] < 0.001 for metric in ("r1", "r5", "r10", "mean_recall"))
    assert 5 < found["r1"]["delta"] < 15


def test_image_to_text_hits_from_the_texts_equal_those_from_upstreams_transformed_file(tmp_path):
    texts = write_jsonl(tmp_path / "texts.jsonl", [
        {"text_id": 1, "text": "a", "image_ids": [20, 10]},
        {"text_id": 2, "text": "b", "image_ids": [10]},
    ])
    # what transform_ir_annotation_to_tr.py writes from them: images in order of first mention
    texts_tr = write_jsonl(tmp_path / "texts.tr.jsonl", [{"image_id": 20, "text_ids": [1]},
                                                        {"image_id": 10, "text_ids": [1, 2]}])
    predictions = write_jsonl(tmp_path / "tr_predictions.jsonl", [
        {"image_id": 10, "text_ids": [2, *range(100, 109)]}, {"image_id": 20, "text_ids": list(range(100, 110))}])
    documents = []
    for flag, reference in (("--image-to-text", texts_tr), ("--image-to-text-of", texts)):
        output = tmp_path / f"{flag}.json"
        assert query_hits.main([flag, reference, predictions, "--output", str(output), "--resamples", "100"]) == 0
        documents.append(json.loads(output.read_text(encoding="utf-8")))
    assert documents[0] == documents[1]
    assert documents[1]["image_to_text"]["hits"]["r1"] == "01"  # image 20 missed, image 10 hit
