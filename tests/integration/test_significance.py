"""Is the difference real? On the real test bed: each query's hits average to upstream's own
recall on every test data set, the McNemar p-value of two real checkpoints equals scipy's exact
binomial test, the intervals are the same run to run, and two copies of one checkpoint differ
by 0 with p = 1."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from evalkit.remote import query_hits as query_hits_script
from evalkit.significance import RECALL_KS, parse_query_hits

from .conftest import DATASETS, REPO, run_upstream_by_hand

pytestmark = pytest.mark.integration

QUERY_HITS = REPO / "evalkit" / "remote" / "query_hits.py"


def assert_hits_are_upstreams_recall(hits: dict, upstream: dict[str, dict]) -> None:
    for direction, result in upstream.items():
        record = hits[direction]
        for k in RECALL_KS:
            mean = record["hits"][k].count("1") / record["queries"] * 100
            assert mean == pytest.approx(result["scoreJson"][k], abs=1e-9), (direction, k)


def run_query_hits(python: Path, output: Path, t2i: tuple, i2t: tuple) -> dict:
    """query_hits.py run by hand in the server's env, as the recall stage runs it."""
    subprocess.run([str(python), str(QUERY_HITS), "--text-to-image", *map(str, t2i),
                    "--image-to-text", *map(str, i2t), "--output", str(output)], check=True, capture_output=True)
    return json.loads(output.read_text(encoding="utf-8"))


def test_a_comparison_carries_intervals_and_paired_significance(testbed, second_checkpoint, tmp_path):
    spec = DATASETS[0]
    testbed.write_config(models={"baseline": {"path": str(testbed.checkpoint)},
                                 "large": {"path": str(second_checkpoint)}})
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model", "all", "--json", timeout=600)
    assert run.returncode == 0, run.stderr
    rows = {row["label"]: row for row in json.loads(run.stdout)["models"]}
    folder = testbed.results_dir / spec.name / spec.split

    hits = {}
    for label, row in rows.items():
        pulled = {d: json.loads((folder / label / f"{d}_results.json").read_text()) for d in row["recall"]}
        hits[label] = parse_query_hits((folder / label / "query_hits.json").read_bytes())
        assert_hits_are_upstreams_recall(hits[label], pulled)
        summary = json.loads((folder / label / "summary.json").read_text(encoding="utf-8"))
        assert summary["ci95"] == row["ci95"]
        for direction, intervals in row["ci95"].items():
            for metric, (low, high) in intervals.items():
                assert low <= row["recall"][direction][metric] <= high, (label, direction, metric)
    assert "±" in run.stderr and "half-width of the 95% bootstrap interval" in run.stderr

    # another checkpoint: the exact McNemar p equals scipy's exact binomial test on the real hits
    for direction, tests in rows["large"]["significance"].items():
        for k in RECALL_KS:
            mine, theirs = hits["large"][direction]["hits"][k], hits["baseline"][direction]["hits"][k]
            only_mine = sum(a == "1" and b == "0" for a, b in zip(mine, theirs))
            only_theirs = sum(a == "0" and b == "1" for a, b in zip(mine, theirs))
            discordant = only_mine + only_theirs
            expected = stats.binomtest(only_mine, discordant, 0.5).pvalue if discordant else 1.0
            assert tests[k]["p_value"] == pytest.approx(expected, rel=1e-9), (direction, k)
            assert tests[k]["delta"] == pytest.approx((only_mine - only_theirs) * 100 / len(mine), abs=1e-9)

    # the intervals are the same when query_hits.py runs again on the server's files
    out = Path(rows["baseline"]["server_output_dir"])
    texts = testbed.datapath / "datasets" / spec.name / f"{spec.split}_texts.jsonl"
    again = run_query_hits(testbed.server_python, tmp_path / "again.json",
                           (texts, out / f"{spec.split}_predictions.jsonl"),
                           (out / f"{spec.split}_texts.tr.jsonl", out / f"{spec.split}_tr_predictions.jsonl"))
    assert {d: again[d]["ci95"] for d in ("text_to_image", "image_to_text")} == rows["baseline"]["ci95"]
    # ... and the run's, which derived the image→text annotation itself (to run beside upstream's
    # recall), has the hits and the reference digest of upstream's own transform output
    ran = json.loads((folder / "baseline" / "query_hits.json").read_text(encoding="utf-8"))
    assert {d: ran[d] for d in ("text_to_image", "image_to_text")} == {d: again[d] for d in ("text_to_image",
                                                                                               "image_to_text")}

    # the same checkpoint again under another label (its features and predictions reused)
    twin = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                            "--label", "twin")
    assert twin.returncode == 0, twin.stderr
    kept = {}
    for baseline in ("baseline", "large"):  # `results` pairs the kept files, against either baseline
        results = subprocess.run([sys.executable, "-m", "evalkit", "results", "--config", str(testbed.config),
                                  "--baseline", baseline, "--format", "json"], capture_output=True, text=True,
                                 cwd=tmp_path, timeout=60)
        assert results.returncode == 0, results.stderr
        [document] = json.loads(results.stdout)
        assert document["baseline"] == baseline
        kept[baseline] = {row["label"]: row for row in document["models"]}
    assert {(cell["delta"], cell["p_value"]) for direction in kept["baseline"]["twin"]["significance"].values()
            for cell in direction.values()} == {(0.0, 1.0)}
    assert kept["baseline"]["large"]["significance"] == rows["large"]["significance"]
    against_large = kept["large"]["baseline"]["significance"]["text_to_image"]["r1"]
    assert against_large["p_value"] == rows["large"]["significance"]["text_to_image"]["r1"]["p_value"]
    assert against_large["delta"] == -rows["large"]["significance"]["text_to_image"]["r1"]["delta"]


def test_hits_average_to_upstreams_recall_on_the_other_data_set(testbed, tmp_path):
    spec = DATASETS[1]
    upstream = run_upstream_by_hand(testbed, spec, tmp_path)
    texts = testbed.datapath / "datasets" / spec.name / f"{spec.split}_texts.jsonl"
    document = run_query_hits(testbed.server_python, tmp_path / "query_hits.json",
                              (texts, tmp_path / "t2i.jsonl"),
                              (tmp_path / f"{spec.split}_texts.tr.jsonl", tmp_path / "i2t.jsonl"))
    assert document["format"] == query_hits_script.FORMAT
    assert_hits_are_upstreams_recall(document, upstream)


def test_the_image_to_text_annotation_derived_for_the_hits_is_upstreams_transform_byte_for_byte(
        server_python, chinese_clip_dir, tmp_path):
    """query_hits.py derives what transform_ir_annotation_to_tr.py writes, so that it can run
    beside upstream's recall steps: a text naming several images, an image named by several
    texts, a repeated text id, string ids and Chinese text with a line separator inside."""
    texts = tmp_path / "valid_texts.jsonl"
    texts.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in [
        {"text_id": 5, "text": "两只狗\u2028在草地上", "image_ids": [30, 10]},
        {"text_id": 2, "text": "a", "image_ids": [10]},
        {"text_id": 5, "text": "again", "image_ids": [30]},
        {"text_id": "t9", "text": "b", "image_ids": ["i7", 10]},
    ]), encoding="utf-8")
    subprocess.run([str(server_python), str(chinese_clip_dir / "cn_clip" / "eval" / "transform_ir_annotation_to_tr.py"),
                    "--input", str(texts)], check=True, capture_output=True)
    upstreams = (tmp_path / "valid_texts.tr.jsonl").read_text(encoding="utf-8")
    assert query_hits_script.image_to_text_annotation(str(texts)) == upstreams
    assert upstreams.count("\n") == 3  # images 30, 10, i7
