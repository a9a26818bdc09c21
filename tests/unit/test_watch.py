"""--watch's loop on Chinese-CLIP's own folder, each look's listing given as the server would
answer it: when the watch ends, what a failure does to it, what a failed look does, and which rows
its comparison is made of."""
from __future__ import annotations

import pytest

from evalkit import watch as watching
from evalkit.comparison import ModelResult
from evalkit.config import Settings
from evalkit.errors import ConnectionLost, RemoteStepFailed
from evalkit.evaluation import Scope, Wanted
from evalkit.sweep import CheckpointSet, Listed, Listing, without_aliases

CKPTS = "/d/experiments/team/checkpoints"
SETTINGS = Settings(datapath="/d", watch_interval=60, watch_settle=1)
WANTED = [Wanted(CKPTS, "RN50", "RBT3-chinese")]
SCOPES = [Scope("Flickr30k-CN", "valid")]


def file(name: str, epoch: int, mtime: int = 1, **facts) -> Listed:
    return Listed(f"{CKPTS}/{name}", 100, mtime, f"1:{name}:{mtime}", True, epoch=epoch, step=epoch * 10, **facts)


def listing(*files: Listed, skipped: tuple[str, ...] = ()) -> Listing:
    return Listing((without_aliases(CheckpointSet(CKPTS, CKPTS, (), skipped=skipped), list(files)),))


class Server:
    """Answers each look with the next of LOOKS (a Listing, or an error to raise)."""

    def __init__(self, *looks):
        self.looks = list(looks)

    def __call__(self, settings, patterns, scopes):
        answer = self.looks.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Bed:
    """The watch's surroundings: the server's looks, evaluations that fail for the files named in
    BROKEN, the record of cells evaluated (unchanged.kept_rows), what was shown and said."""

    def __init__(self, monkeypatch, *looks, broken: tuple[str, ...] = ()):
        self.broken, self.evaluated, self.kept, self.shown, self.notes, self.sleeps = broken, [], {}, [], [], 0
        monkeypatch.setattr(watching, "settled_on_server", Server(*looks))
        monkeypatch.setattr(watching, "kept_rows", lambda settings, cells, found, states: {
            cell: self.kept[cell] for cell in cells if cell in self.kept})

    def run_cells(self, cells, found):
        rows = []
        for cell in cells:
            self.evaluated.append(cell.label)
            failed = any(cell.checkpoint.endswith(name) for name in self.broken)
            row = ModelResult(cell.label, cell.checkpoint, "failed" if failed else "ok",
                              {} if failed else {"text_to_image": {"mean_recall": 1.0}}, exit_code=12 if failed else 0)
            if not failed:
                self.kept[cell] = row  # remembered as evaluated, as gpu_queue does
            rows.append(row)
        return rows

    def watch(self, until_epoch):
        return watching.watch(SETTINGS, SCOPES, WANTED, until_epoch, self.run_cells,
                              lambda rows: self.shown.append([row.label for _, row in rows]), self.notes.append,
                              sleep=self.sleep)

    def sleep(self, seconds):
        self.sleeps += 1


def test_until_epoch_ends_the_watch_once_epoch_n_of_training_names_was_evaluated(monkeypatch):
    bed = Bed(monkeypatch, listing(file("epoch1.pt", 1)), listing(file("epoch1.pt", 1), file("epoch2.pt", 2)))
    assert bed.watch(until_epoch=2) == []
    assert bed.evaluated == ["team@epoch1", "team@epoch2"] and bed.sleeps == 1


def test_a_finished_folder_ends_the_watch_at_its_first_look_without_evaluating_anything_twice(monkeypatch):
    files = [file(f"epoch{n}.pt", n) for n in range(1, 12)]
    latest = file("epoch_latest.pt", 11, state="s11")
    files[-1] = file("epoch11.pt", 11, state="s11")
    bed = Bed(monkeypatch, listing(*files, latest))
    assert bed.watch(until_epoch=11) == []
    assert bed.evaluated == [f"team@epoch{n}" for n in range(1, 12)]  # epoch_latest.pt: an alias of epoch11.pt


def test_a_failed_cell_is_said_the_watch_goes_on_and_returns_it_at_its_end(monkeypatch):
    first = listing(file("epoch1.pt", 1))
    bed = Bed(monkeypatch, first, first, listing(file("epoch1.pt", 1), file("epoch2.pt", 2)), broken=("epoch1.pt",))
    failures = bed.watch(until_epoch=2)
    assert [(row.label, row.exit_code) for row in failures] == [("team@epoch1", 12)]
    assert bed.evaluated == ["team@epoch1", "team@epoch2"]  # not tried again while unchanged
    assert any("the watch goes on" in note for note in bed.notes)


def test_a_failed_cell_is_tried_again_once_its_checkpoint_changes(monkeypatch):
    bed = Bed(monkeypatch, listing(file("epoch1.pt", 1)), listing(file("epoch1.pt", 1, mtime=5)),
              broken=("epoch1.pt",))
    failures = bed.watch(until_epoch=1)
    assert bed.evaluated == ["team@epoch1"] and len(failures) == 1  # epoch 1 was evaluated: the watch ends
    bed = Bed(monkeypatch, listing(file("epoch1.pt", 1)), listing(file("epoch1.pt", 1, mtime=5)),
              listing(file("epoch1.pt", 1, mtime=5), file("epoch2.pt", 2)), broken=("epoch1.pt",))
    assert len(bed.watch(until_epoch=2)) == 2
    assert bed.evaluated == ["team@epoch1", "team@epoch1", "team@epoch2"]


def test_a_failed_look_is_said_and_the_next_look_goes_on(monkeypatch):
    broken = RemoteStepFailed("listing the checkpoints of /d failed (status 1): MemoryError", "check the env")
    bed = Bed(monkeypatch, ConnectionLost("the connection dropped", "retry"), listing(file("epoch1.pt", 1)), broken,
              listing(file("epoch1.pt", 1), file("epoch2.pt", 2)))
    assert bed.watch(until_epoch=2) == []
    assert [note for note in bed.notes if note.startswith("could not look")] == [
        "could not look at the checkpoints (the connection dropped); looking again in 60 s",
        "could not look at the checkpoints (listing the checkpoints of /d failed (status 1): MemoryError); "
        "looking again in 60 s"]


def test_a_broken_first_look_is_the_users_to_fix(monkeypatch):
    bed = Bed(monkeypatch, RemoteStepFailed("listing the checkpoints failed", "check the `python` setting"))
    with pytest.raises(RemoteStepFailed):
        bed.watch(until_epoch=1)


def test_the_comparison_is_made_of_this_looks_cells_only(monkeypatch):
    """A row kept of a checkpoint no longer listed (training keeps the last K) is not in it."""
    bed = Bed(monkeypatch, listing(file("epoch1.pt", 1), file("epoch2.pt", 2)),
              listing(file("epoch2.pt", 2), file("epoch3.pt", 3)))
    bed.watch(until_epoch=3)
    assert bed.shown == [["team@epoch1", "team@epoch2"], ["team@epoch2", "team@epoch3"]]


def test_a_file_the_server_could_not_list_is_said_once(monkeypatch):
    skipped = (f"{CKPTS}/epoch\\xff.pt: its name is not UTF-8",)
    bed = Bed(monkeypatch, listing(file("epoch1.pt", 1), skipped=skipped),
              listing(file("epoch1.pt", 1), file("epoch2.pt", 2), skipped=skipped))
    bed.watch(until_epoch=2)
    assert bed.notes.count(f"skipped {skipped[0]}") == 1
