"""The local store: the step flow's current checkpoint, kept per results folder, per server
dataset split; and run records listed without it."""
from __future__ import annotations

import dataclasses
import json
import os
import stat

import pytest

from evalkit.config import Settings
from evalkit.errors import LocalWriteError
from evalkit.evaluation import LAST_EXTRACT, NAMED, Evaluation
from evalkit.plan import build_plan
from evalkit.run_record import new_record, new_run_id
from evalkit.significance import FORMAT
from evalkit.store import LocalStore

SETTINGS = Settings(host="gpu-box", datapath="/d")
A = Evaluation("Flickr30k-CN", "valid", "/d/experiments/a/checkpoints/epoch_latest.pt", "RN50", "RBT3-chinese")
B = dataclasses.replace(A, checkpoint="/d/experiments/b/checkpoints/epoch_latest.pt", label="")
UNNAMED = Evaluation("Flickr30k-CN", "valid", "", stages=("knn",))


def test_knn_without_a_checkpoint_gets_the_last_extract_steps(tmp_path):
    store = LocalStore(tmp_path)
    assert store.current_checkpoint(SETTINGS, UNNAMED) is None
    store.make_current(SETTINGS, A)
    store.make_current(SETTINGS, B)
    store.make_current(SETTINGS, A)
    chosen = store.current_checkpoint(SETTINGS, UNNAMED)
    assert (chosen.checkpoint, chosen.label, chosen.vision_model, chosen.text_model) == \
        (A.checkpoint, "a", "RN50", "RBT3-chinese")
    assert (chosen.stages, chosen.chosen_by, A.chosen_by) == (("knn",), LAST_EXTRACT, NAMED)


def test_the_current_checkpoint_is_per_host_datapath_dataset_and_split(tmp_path):
    store = LocalStore(tmp_path)
    store.make_current(SETTINGS, A)
    for settings, evaluation in ((dataclasses.replace(SETTINGS, host="other-box"), UNNAMED),
                                 (dataclasses.replace(SETTINGS, datapath="/e"), UNNAMED),
                                 (SETTINGS, dataclasses.replace(UNNAMED, split="test")),
                                 (SETTINGS, dataclasses.replace(UNNAMED, dataset="MUGE"))):
        assert store.current_checkpoint(settings, evaluation) is None


@pytest.mark.parametrize("damaged, says", [
    ("{not json", "is unreadable"),  # a disk that lost its end
    ("[]", "is not one of evalkit's"),
])
def test_a_damaged_current_file_is_refused_and_kept_not_reset_to_one_split(tmp_path, damaged, says):
    store = LocalStore(tmp_path)
    store.runs_dir.mkdir()
    record = store.runs_dir / "current-checkpoints.json"
    record.write_text(damaged)
    for touch in (lambda: store.current_checkpoint(SETTINGS, UNNAMED), lambda: store.make_current(SETTINGS, B)):
        with pytest.raises(LocalWriteError) as raised:
            touch()
        assert raised.value.exit_code == 10
        assert raised.value.message.startswith(f"the record of each split's current checkpoint, {record}, {says}")
        assert f"mv {record} {record}.damaged" in raised.value.hint
    assert record.read_text() == damaged
    record.rename(f"{record}.damaged")  # the fix it gives
    store.make_current(SETTINGS, B)
    assert store.current_checkpoint(SETTINGS, UNNAMED).checkpoint == B.checkpoint


def test_run_listings_hold_only_run_records(tmp_path):
    store = LocalStore(tmp_path)
    record = new_record(SETTINGS, A, build_plan(SETTINGS, A), new_run_id(), "/d/evalkit/.evalkit/runs/x")
    store.save_record(record)
    store.make_current(SETTINGS, A)
    assert [found.run_id for found in store.newest_records(1)] == [record.run_id]


def test_query_hits_are_kept_beside_the_summary_and_read_back_for_comparisons(tmp_path):
    store = LocalStore(tmp_path)
    evaluation = Evaluation(checkpoint="/c/a.pt", label="team", dataset="Flickr30k-CN", split="valid")
    hits = {"format": FORMAT, "text_to_image": {"queries": 2, "reference_sha256": "s", "ci95": {"r1": [0.0, 100.0]},
                                                "hits": {"r1": "10", "r5": "10", "r10": "11"}}}
    summary = {"checkpoint": "/c/a.pt", "recall": {}, "ci95": {"text_to_image": {"r1": [0.0, 100.0]}}}
    written = store.save_results(evaluation, "team", {}, summary, json.dumps(hits).encode())
    assert [path.name for path in written] == ["query_hits.json", "summary.json"]
    [result] = store.load_evaluated()[("Flickr30k-CN", "valid")]
    assert result.ci95 == summary["ci95"] and result.query_hits["text_to_image"]["hits"]["r10"] == "11"
    store.save_results(evaluation, "team", {}, summary)  # a run without hits leaves none of the old ones
    assert not (tmp_path / "Flickr30k-CN" / "valid" / "team" / "query_hits.json").exists()


def test_results_files_respect_the_umask_and_keep_the_mode_of_the_file_they_replace(tmp_path):
    store = LocalStore(tmp_path)
    previous = os.umask(0o022)
    try:
        [written] = store.save_figures(tmp_path / "shared", {"recall.svg": b"<svg/>"})
        assert stat.S_IMODE(written.stat().st_mode) == 0o644  # readable by the group and others
        written.chmod(0o664)  # a folder shared with a group, by its owner's choice
        store.save_figures(tmp_path / "shared", {"recall.svg": b"<svg></svg>"})
        assert stat.S_IMODE(written.stat().st_mode) == 0o664 and written.read_bytes() == b"<svg></svg>"
        os.umask(0o077)
        [private] = store.save_figures(tmp_path / "shared", {"private.svg": b"<svg/>"})
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    finally:
        os.umask(previous)
    assert sorted(path.name for path in (tmp_path / "shared").iterdir()) == ["private.svg", "recall.svg"]
