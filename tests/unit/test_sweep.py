"""A sweep's pure parts: which paths are sets, epoch order, aliases, labels, cells; and the
server's lister run on real files (hard links, copies, a half-written file). Names and facts are
those Chinese-CLIP's training writes: epoch1.pt ... epochN.pt and epoch_latest.pt, of one size,
often of one mtime."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.checkpoint_sets import MARKER, patterns_of
from evalkit.config import Settings
from evalkit.errors import MissingInput
from evalkit.evaluation import Evaluation, Scope, Wanted
from evalkit.progress import last_marked_json
from evalkit.evaluation import epoch_in_name
from evalkit.sweep import Alias, CheckpointSet, Listed, Listing, cells, choose, describe_alias, describe_held, \
    expanded, is_checkpoint_set, is_settled, order_key, reached
from evalkit.uploads import script_source

CKPTS = "/d/experiments/team/checkpoints"


@pytest.mark.parametrize("path, is_set", [
    (f"{CKPTS}/epoch_latest.pt", False), (f"{CKPTS}/epoch_3.pth", False),
    (CKPTS, True), (f"{CKPTS}/", True), ("/d/experiments/team", True),
    (f"{CKPTS}/epoch_*.pt", True), (f"{CKPTS}/epoch_[12].pt", True), (f"{CKPTS}/epoch_?.pt", True),
])
def test_a_directory_or_a_glob_is_a_set_a_checkpoint_file_is_not(path, is_set):
    assert is_checkpoint_set(path) is is_set


@pytest.mark.parametrize("name, epoch", [
    ("epoch5.pt", 5), ("epoch12.pt", 12), ("epoch_5.pt", 5), ("epoch_12.pth", 12), (f"{CKPTS}/epoch7.pt", 7),
    ("Epoch-3.pt", 3), ("epoch_latest.pt", None), ("best.pt", None), ("epoch_5a.pt", None), ("xepoch_5.pt", None),
])
def test_the_epoch_in_a_name_as_training_writes_it(name, epoch):
    assert epoch_in_name(name) == epoch


def test_order_is_by_epoch_number_then_other_names_epoch_latest_last():
    names = ["epoch_latest.pt", "epoch10.pt", "best.pt", "epoch2.pt", "epoch1.pt", "epoch11.pt", "epoch_3.pt"]
    assert sorted(names, key=order_key) == ["epoch1.pt", "epoch2.pt", "epoch_3.pt", "epoch10.pt", "epoch11.pt",
                                            "best.pt", "epoch_latest.pt"]


def listed(name: str, size=100, mtime=1, inode="", sha=None, epoch=None, step=None, state=None) -> Listed:
    return Listed(f"{CKPTS}/{name}", size, mtime, inode or f"1:{name}", True, sha, epoch, step, state)


def test_files_of_one_size_and_one_mtime_are_each_evaluated():
    """`touch epoch*.pt`, cp -p, rsync -a, a 1-second file system: equal sizes and mtimes prove nothing."""
    files = [listed(f"epoch{n}.pt", size=500, mtime=7, sha=f"sha{n}", epoch=n) for n in range(1, 7)]
    found = choose(CKPTS, "directory", CKPTS, files)
    assert [Path(p).name for p in found.checkpoints] == [f"epoch{n}.pt" for n in range(1, 7)]
    assert found.aliases == ()


@pytest.mark.parametrize("latest, alias_of_2", [
    (listed("epoch_latest.pt", mtime=2), False),                          # same size and mtime: no proof
    (listed("epoch_latest.pt", size=100, mtime=2, sha="bb"), False),      # other bytes
    (listed("epoch_latest.pt", mtime=9, inode="1:1"), True),              # a hard link
    (listed("epoch_latest.pt", mtime=9, sha="aa"), True),                 # the same bytes
    (listed("epoch_latest.pt", size=103, epoch=2, step=20, state="s2"), True),   # the same state, saved again
    (listed("epoch_latest.pt", size=103, epoch=2, step=21, state="s2"), False),  # another step
    (listed("epoch_latest.pt", size=103, epoch=2, step=20, state="s9"), False),  # other weights
])
def test_an_alias_is_kept_once_as_the_numbered_epoch_only_when_proven(latest, alias_of_2):
    files = [latest, listed("epoch2.pt", mtime=2, inode="1:1", sha="aa", epoch=2, step=20, state="s2"),
             listed("epoch1.pt", mtime=1, sha="cc", epoch=1, step=10)]
    found = choose(CKPTS, "directory", CKPTS, files)
    if alias_of_2:
        assert found.checkpoints == (f"{CKPTS}/epoch1.pt", f"{CKPTS}/epoch2.pt")
        assert [(Path(a.path).name, Path(a.kept).name) for a in found.aliases] == [("epoch_latest.pt", "epoch2.pt")]
    else:
        assert found.checkpoints[-1] == f"{CKPTS}/epoch_latest.pt" and not found.aliases


@pytest.mark.parametrize("alias, says", [
    (Alias(f"{CKPTS}/epoch_latest.pt", f"{CKPTS}/epoch11.pt", "state", 11, 1100),
     "epoch_latest.pt holds the same training state as epoch11.pt (epoch 11, step 1100): evaluated once, as "
     f"epoch11.pt ({CKPTS})"),
    (Alias(f"{CKPTS}/copy.pt", f"{CKPTS}/epoch2.pt"),
     f"copy.pt has the same content as epoch2.pt: evaluated once, as epoch2.pt ({CKPTS})"),
])
def test_an_alias_says_how_it_was_proven(alias, says):
    assert describe_alias(alias) == says


def test_epoch_latest_ahead_of_the_numbered_files_is_its_own_row_with_the_epoch_it_holds():
    """Training saves epoch{N}.pt every save_epoch_frequency epochs, epoch_latest.pt every epoch."""
    found = choose(CKPTS, "directory", CKPTS, [listed("epoch_latest.pt", size=103, epoch=7, step=70, state="s7"),
                                               listed("epoch5.pt", epoch=5, step=50)])
    assert [Path(p).name for p in found.checkpoints] == ["epoch5.pt", "epoch_latest.pt"]
    assert describe_held(found) == ["epoch_latest.pt holds epoch 7, step 70: evaluated as its own row"]
    wanted = expanded([Wanted(CKPTS, "RN50", "RBT3-chinese")], {CKPTS: found}, "/d")
    assert [(Path(w.model_path).name, w.epoch, w.step) for w in wanted] == [("epoch5.pt", 5, 50),
                                                                           ("epoch_latest.pt", 7, 70)]
    [latest] = cells("/d", [Scope("F", "valid")], wanted[1:])
    assert (latest.label, latest.experiment, latest.epoch, latest.step) == ("team", "team", 7, 70)


def test_a_file_named_for_another_epoch_than_it_holds_is_shown_as_its_name_says():
    """A renamed copy (or a test bed's file): the name is what people read and what --until-epoch counts."""
    found = choose(CKPTS, "directory", CKPTS, [listed("epoch_2.pt", epoch=1, step=100)])
    assert found.files[0].held_epoch == 2
    assert describe_held(found) == ["epoch_2.pt holds epoch 1, step 100 by its contents: shown as epoch 2, as its name says"]
    assert reached(Listing((found,)), 2)


def test_hard_links_are_aliases_whatever_else_differs():
    found = choose(CKPTS, "directory", CKPTS, [listed("epoch_latest.pt", mtime=5, inode="7:7"),
                                               listed("epoch4.pt", mtime=4, inode="7:7")])
    assert found.checkpoints == (f"{CKPTS}/epoch4.pt",)


def test_cells_of_training_names_carry_their_experiment_and_epoch_even_with_at_in_the_folder():
    folder = "/d/experiments/a@b/checkpoints"
    found = choose(folder, "directory", folder, [Listed(f"{folder}/epoch{n}.pt", 1, n, f"1:{n}") for n in (10, 2, 1)])
    found_cells = cells("/d", [Scope("F", "valid")], expanded([Wanted(folder, "RN50", "RBT3-chinese")],
                                                              {folder: found}, "/d"))
    assert [(c.label, c.experiment, c.epoch) for c in found_cells] == [
        ("a@b@epoch1", "a@b", 1), ("a@b@epoch2", "a@b", 2), ("a@b@epoch10", "a@b", 10)]


@pytest.mark.parametrize("kind, searched, says", [
    ("glob", f"{CKPTS}/epoch_*.pt", f"the glob {CKPTS}/epoch_*.pt matches no checkpoint file on the server"),
    ("directory", CKPTS, f"no checkpoint (*.pt, *.pth) in the directory {CKPTS} on the server"),
    ("missing", CKPTS, f"{CKPTS} is neither a checkpoint file, a directory nor a glob matching one"),
])
def test_nothing_found_is_an_error_naming_what_was_searched(kind, searched, says):
    with pytest.raises(MissingInput) as raised:
        choose(searched if kind == "glob" else CKPTS, kind, searched, [])
    assert raised.value.message.startswith(says) and "ls on the server" in raised.value.hint


def test_cells_are_checkpoints_x_datasets_x_splits_with_sweep_labels():
    sets = {CKPTS: choose(CKPTS, "directory", CKPTS, [listed("epoch_latest.pt", size=1), listed("epoch_1.pt")])}
    wanted = expanded([Wanted("experiments/team/checkpoints", "RN50", "RBT3-chinese", registry_name="t"),
                       Wanted("/x/other.pt", "RN50", "RBT3-chinese")], sets, "/d")
    scopes = [Scope(dataset, split) for dataset in ("A", "B") for split in ("valid", "test")]
    found = cells("/d", scopes, wanted)
    assert [(cell.label, cell.dataset, cell.split) for cell in found[:4]] == [
        ("t@epoch_1", "A", "valid"), ("t@epoch_1", "A", "test"), ("t@epoch_1", "B", "valid"), ("t@epoch_1", "B", "test")]
    assert [cell.label for cell in found[4::4]] == ["t", "other"] and len(found) == 12
    assert {cell.vision_model for cell in found} == {"RN50"}


def test_patterns_are_absolute_and_listed_once():
    wanted = [Wanted(p, "RN50", "RBT3-chinese") for p in ("experiments/e/checkpoints", "/d/experiments/e/checkpoints",
                                                            "/abs/epoch_*.pt", "/abs/one.pt")]
    assert patterns_of(Settings(datapath="/d"), wanted) == ["/d/experiments/e/checkpoints", "/abs/epoch_*.pt"]


def run_lister(*patterns: str, files: tuple[str, ...] = ()) -> dict:
    source = script_source("list_checkpoints.py").decode()
    ran = subprocess.run([sys.executable, "-c", source, "", json.dumps(files), *patterns], capture_output=True,
                         check=True)
    return last_marked_json(ran.stdout, MARKER)


def test_the_server_lister_on_real_files(tmp_path):
    folder = tmp_path / "exp 实验" / "checkpoints"
    folder.mkdir(parents=True)
    for epoch in (1, 2, 10):
        (folder / f"epoch_{epoch}.pt").write_bytes(bytes([epoch]) * 4096)
    os.link(folder / "epoch_10.pt", folder / "epoch_latest.pt")
    shutil.copy(folder / "epoch_1.pt", folder / "copy_of_1.pt")  # same bytes, its own mtime and inode
    os.utime(folder / "copy_of_1.pt", ns=(1, 1))
    (folder / "notes.txt").write_text("not a checkpoint")
    texts = tmp_path / "valid_texts.jsonl"
    texts.write_text("{}\n")
    answer = run_lister(str(folder), str(folder.parent), str(folder / "epoch_?.pt"), str(tmp_path / "none" / "*.pt"),
                        files=(str(texts), str(tmp_path / "missing.jsonl")))
    by_dir, by_experiment, by_glob, nothing = answer["sets"]
    info = texts.stat()
    assert answer["files"] == {str(texts): {"size": 3, "mtime_ns": info.st_mtime_ns,
                                            "inode": f"{info.st_dev}:{info.st_ino}"},
                               str(tmp_path / "missing.jsonl"): None}
    found = choose(str(folder), by_dir["kind"], by_dir["searched"], [Listed.from_dict(f) for f in by_dir["files"]])
    assert [Path(p).name for p in found.checkpoints] == ["epoch_1.pt", "epoch_2.pt", "epoch_10.pt"]
    assert {(Path(a.path).name, Path(a.kept).name) for a in found.aliases} == {
        ("copy_of_1.pt", "epoch_1.pt"), ("epoch_latest.pt", "epoch_10.pt")}
    assert by_experiment["searched"] == str(folder) and len(by_experiment["files"]) == 5
    assert sorted(Path(f["path"]).name for f in by_glob["files"]) == ["epoch_1.pt", "epoch_2.pt"]
    assert nothing["kind"] == "glob" and nothing["files"] == []
    assert all(f["zip"] is False for f in by_dir["files"])  # random bytes: no zip directory


@pytest.mark.parametrize("mtime_s, is_zip, settled", [(40, True, True), (41, True, True), (42, True, False),
                                                      (0, False, False), (100, True, False)])
def test_watch_takes_a_file_untouched_for_watch_settle_seconds_with_its_zip_directory(mtime_s, is_zip, settled):
    entry = Listed("/c/epoch_1.pt", 10, mtime_s * 10**9, is_zip=is_zip)
    assert is_settled(entry, server_now_ns=101 * 10**9, settle=60) is settled


@pytest.mark.parametrize("files, until, ends", [
    ([listed("epoch1.pt"), listed("epoch_latest.pt")], 2, False),
    ([listed("epoch1.pt"), listed("epoch2.pt")], 2, True),               # Chinese-CLIP's names
    ([listed("epoch_3.pt")], 2, True), ([listed("epoch9.pt")], None, False), ([], 0, False),
    ([listed("epoch0.pt")], 0, True),
    ([listed("epoch1.pt"), listed("epoch_latest.pt", epoch=2, step=20)], 2, True),  # latest holds epoch 2
])
def test_the_watch_ends_once_epoch_n_or_later_was_evaluated(files, until, ends):
    listing = Listing((CheckpointSet(CKPTS, CKPTS, tuple(f.path for f in files), files=tuple(files)),))
    assert reached(listing, until) is ends
