"""A sweep's cell unchanged since it was evaluated keeps that run's numbers: what counts as a
change (sweep.cell_state) and when the kept results may stand for the cell (unchanged.kept_row)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from evalkit.config import Settings
from evalkit.errors import LocalWriteError
from evalkit.evaluation import Evaluation
from evalkit.store import LocalStore
from evalkit.sweep import CheckpointSet, Listed, Listing, cell_state, is_unchanged
from evalkit.unchanged import kept_row, kept_rows, remember
from evalkit.comparison import ModelResult

CKPTS = "/d/experiments/team/checkpoints"
CHECKPOINT = f"{CKPTS}/epoch_3.pt"
TEXTS = "/d/datasets/A/valid_texts.jsonl"
IMAGES = "/d/datasets/A/lmdb/valid/imgs/data.mdb"
SETTINGS = Settings(host="h", datapath="/d")
CELL = Evaluation("A", "valid", CHECKPOINT)
RECALL = {"r1": 10.0, "r5": 20.0, "r10": 30.0, "mean_recall": 20.0}


def listing(size: int = 100, mtime_ns: int = 5, inode: str = "1:2", texts: dict | None = None) -> Listing:
    files = {TEXTS: texts if texts is not None else {"size": 7, "mtime_ns": 1, "inode": "1:3"},
             IMAGES: {"size": 9, "mtime_ns": 1, "inode": "1:4"}}
    return Listing((CheckpointSet(CKPTS, CKPTS, (CHECKPOINT,), (), (Listed(CHECKPOINT, size, mtime_ns, inode),)),),
                   files)


@pytest.mark.parametrize("settings, cell, seen, unchanged", [
    (SETTINGS, CELL, listing(), True),
    (dataclasses.replace(SETTINGS, gpu=3), CELL, listing(), True),  # a queue may put it on any GPU
    (dataclasses.replace(SETTINGS, watch_interval=1), CELL, listing(), True),
    (SETTINGS, CELL, listing(size=101), False),                    # the checkpoint rewritten
    (SETTINGS, CELL, listing(mtime_ns=6), False),
    (SETTINGS, CELL, listing(inode="1:9"), False),                  # replaced by another file
    (SETTINGS, CELL, listing(texts={"size": 8, "mtime_ns": 2, "inode": "1:3"}), False),  # the dataset fixed
    (dataclasses.replace(SETTINGS, knn="fast"), CELL, listing(), False),  # other commands
    (dataclasses.replace(SETTINGS, image_to_image=True), CELL, listing(), False),
    (SETTINGS, dataclasses.replace(CELL, vision_model="RN50"), listing(), False),
    (SETTINGS, dataclasses.replace(CELL, skip_image_to_text=True), listing(), False),
])
def test_a_cell_is_unchanged_while_its_checkpoint_dataset_and_commands_are(settings, cell, seen, unchanged):
    recorded = dict(cell_state(SETTINGS, CELL, listing()), run_id="r1")
    assert is_unchanged(recorded, cell_state(settings, cell, seen)) is unchanged


def test_a_cell_without_recall_or_a_listed_checkpoint_has_no_state():
    assert cell_state(SETTINGS, dataclasses.replace(CELL, stages=("extract",)), listing()) is None
    assert cell_state(SETTINGS, dataclasses.replace(CELL, checkpoint=f"{CKPTS}/epoch_4.pt"), listing()) is None
    assert not is_unchanged(None, cell_state(SETTINGS, CELL, listing()))


def evaluated(store: LocalStore, run_id: str, directions=("text_to_image", "image_to_text")) -> ModelResult:
    """CELL's results as a run saves them, and the row that run returned."""
    raw = {direction: b'{"success": true}' for direction in directions}
    summary = {"label": CELL.label, "run_id": run_id, "checkpoint": CHECKPOINT,
               "recall": {direction: RECALL for direction in directions}}
    store.save_results(CELL, CELL.label, raw, summary)
    return ModelResult(CELL.label, CHECKPOINT, "ok", summary["recall"], run_id=run_id)


def test_an_unchanged_cell_keeps_its_runs_row_across_restarts(tmp_path):
    settings = dataclasses.replace(SETTINGS, results_dir=str(tmp_path))
    remember(settings, CELL, listing(), evaluated(LocalStore(tmp_path), "r1"))
    [(cell, row)] = kept_rows(settings, [CELL], listing()).items()
    assert (cell, row.run_id, row.reused, row.recall["text_to_image"]) == (CELL, "r1", True, RECALL)
    assert kept_rows(settings, [CELL], listing(mtime_ns=6)) == {}
    assert kept_rows(dataclasses.replace(settings, host="other"), [CELL], listing()) == {}
    assert kept_rows(settings, [CELL], Listing()) == {}  # a file named alone: never listed


def test_kept_results_stand_for_the_cell_only_while_they_are_that_runs_and_complete(tmp_path):
    settings, store = dataclasses.replace(SETTINGS, results_dir=str(tmp_path)), LocalStore(tmp_path)
    remember(settings, CELL, listing(), evaluated(store, "r1"))
    evaluated(store, "r2")  # the same label evaluated since by another command (another --knn, ...)
    assert kept_row(store, settings, CELL, cell_state(settings, CELL, listing())) is None
    remember(settings, CELL, listing(), evaluated(store, "r3"))
    (store.result_dir("A", "valid", CELL.label) / "image_to_text_results.json").unlink()
    assert kept_row(store, settings, CELL, cell_state(settings, CELL, listing())) is None


def test_a_damaged_record_of_cells_is_refused_and_kept_not_reset_to_one_cell(tmp_path):
    settings, store = dataclasses.replace(SETTINGS, results_dir=str(tmp_path)), LocalStore(tmp_path)
    record = tmp_path / "runs" / "evaluated-cells.json"
    remember(settings, CELL, listing(), evaluated(store, "r1"))
    damaged = record.read_text()[:-20]  # a disk that lost its end
    record.write_text(damaged)
    with pytest.raises(LocalWriteError) as raised:  # before anything runs: the sweep's kept rows
        kept_rows(settings, [CELL], listing())
    assert raised.value.message.startswith(f"the record of the cells evaluated, {record}, is unreadable (")
    assert f"mv {record} {record}.damaged" in raised.value.hint
    with pytest.raises(LocalWriteError):
        store.remember_cell("another cell", {"run_id": "r2"})
    assert record.read_text() == damaged
    record.rename(f"{record}.damaged")  # the fix it gives: every cell evaluated again
    assert kept_rows(settings, [CELL], listing()) == {}


def test_a_failed_cell_is_not_remembered(tmp_path):
    settings = dataclasses.replace(SETTINGS, results_dir=str(tmp_path))
    remember(settings, CELL, listing(), ModelResult(CELL.label, CHECKPOINT, "failed", {}, exit_code=14))
    assert not (tmp_path / "runs" / "evaluated-cells.json").exists()
    evaluated(LocalStore(tmp_path), "r1")
    assert kept_rows(settings, [CELL], listing()) == {}


def _remember_many(root: str, prefix: str, count: int, start) -> None:
    store = LocalStore(Path(root))
    start.wait()
    for number in range(count):
        store.remember_cell(f"{prefix}-{number}", {"run_id": f"{prefix}-{number}"})


def test_two_evalkit_processes_remembering_cells_at_once_lose_none(tmp_path):
    """A watch and a sweep (or two terminals) on one results folder: each process's records stay."""
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [context.Process(target=_remember_many, args=(str(tmp_path), name, 150, start))
               for name in ("watch", "sweep")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    cells = json.loads((tmp_path / "runs" / "evaluated-cells.json").read_text())
    assert sorted(cells) == sorted(f"{name}-{n}" for name in ("watch", "sweep") for n in range(150))
