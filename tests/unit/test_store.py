"""The local store: the step flow's current checkpoint, kept per results folder, per server
dataset split; and run records listed without it."""
from __future__ import annotations

import dataclasses

from evalkit.config import Settings
from evalkit.evaluation import LAST_EXTRACT, NAMED, Evaluation
from evalkit.plan import build_plan
from evalkit.run_record import new_record, new_run_id
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


def test_a_damaged_current_file_means_no_current_checkpoint(tmp_path):
    store = LocalStore(tmp_path)
    store.runs_dir.mkdir()
    (store.runs_dir / "current-checkpoints.json").write_text("{not json")
    assert store.current_checkpoint(SETTINGS, UNNAMED) is None
    store.make_current(SETTINGS, B)  # and the next extract step repairs it
    assert store.current_checkpoint(SETTINGS, UNNAMED).checkpoint == B.checkpoint


def test_run_listings_hold_only_run_records(tmp_path):
    store = LocalStore(tmp_path)
    record = new_record(SETTINGS, A, build_plan(SETTINGS, A), new_run_id(), "/d/evalkit/.evalkit/runs/x")
    store.save_record(record)
    store.make_current(SETTINGS, A)
    assert [found.run_id for found in store.newest_records(1)] == [record.run_id]
