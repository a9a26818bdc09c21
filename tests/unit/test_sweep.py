"""A sweep's pure parts: which paths are sets, epoch order, aliases, labels, cells; and the
server's lister run on real files (hard links, copies, a half-written file)."""
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
from evalkit.sweep import Alias, Listed, cells, choose, describe_alias, epoch_of_stem, expanded, is_checkpoint_set, \
    is_settled, order_key, reached
from evalkit.uploads import script_source

CKPTS = "/d/experiments/team/checkpoints"


@pytest.mark.parametrize("path, is_set", [
    (f"{CKPTS}/epoch_latest.pt", False), (f"{CKPTS}/epoch_3.pth", False),
    (CKPTS, True), (f"{CKPTS}/", True), ("/d/experiments/team", True),
    (f"{CKPTS}/epoch_*.pt", True), (f"{CKPTS}/epoch_[12].pt", True), (f"{CKPTS}/epoch_?.pt", True),
])
def test_a_directory_or_a_glob_is_a_set_a_checkpoint_file_is_not(path, is_set):
    assert is_checkpoint_set(path) is is_set


@pytest.mark.parametrize("stem, epoch", [("epoch_5", 5), ("epoch_12", 12), ("epoch_latest", None),
                                         ("best", None), ("epoch_5a", None), ("xepoch_5", None)])
def test_epoch_of_stem(stem, epoch):
    assert epoch_of_stem(stem) == epoch


def test_order_is_by_epoch_number_then_other_names_epoch_latest_last():
    names = ["epoch_latest.pt", "epoch_10.pt", "best.pt", "epoch_2.pt", "epoch_1.pt"]
    assert sorted(names, key=order_key) == ["epoch_1.pt", "epoch_2.pt", "epoch_10.pt", "best.pt", "epoch_latest.pt"]


def listed(name: str, size=100, mtime=1, inode="", sha=None) -> Listed:
    return Listed(f"{CKPTS}/{name}", size, mtime, inode, True, sha)


@pytest.mark.parametrize("latest, alias_of_2", [
    (listed("epoch_latest.pt", mtime=2), True),                           # same size and mtime
    (listed("epoch_latest.pt", mtime=9, inode="1:2"), False),            # another inode, other mtime
    (listed("epoch_latest.pt", mtime=9, sha="aa"), True),                # same sha256
    (listed("epoch_latest.pt", mtime=9, sha="bb"), False),
    (listed("epoch_latest.pt", size=101, mtime=2), False),               # other size: never
])
def test_an_alias_is_kept_once_as_the_numbered_epoch(latest, alias_of_2):
    files = [latest, listed("epoch_2.pt", mtime=2, inode="1:1", sha="aa"), listed("epoch_1.pt", mtime=1, sha="cc")]
    found = choose(CKPTS, "directory", CKPTS, files)
    if alias_of_2:
        assert found.checkpoints == (f"{CKPTS}/epoch_1.pt", f"{CKPTS}/epoch_2.pt")
        assert found.aliases == (Alias(f"{CKPTS}/epoch_latest.pt", f"{CKPTS}/epoch_2.pt"),)
        assert describe_alias(found.aliases[0]).startswith("epoch_latest.pt has the same content as epoch_2.pt")
    else:
        assert found.checkpoints[-1] == f"{CKPTS}/epoch_latest.pt" and not found.aliases


def test_hard_links_are_aliases_whatever_else_differs():
    found = choose(CKPTS, "directory", CKPTS, [listed("epoch_latest.pt", mtime=5, inode="7:7"),
                                               listed("epoch_4.pt", mtime=4, inode="7:7")])
    assert found.checkpoints == (f"{CKPTS}/epoch_4.pt",)


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
    ran = subprocess.run([sys.executable, "-c", source, json.dumps(files), *patterns], capture_output=True, check=True)
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


@pytest.mark.parametrize("names, until, ends", [
    (["epoch_1.pt", "epoch_latest.pt"], 2, False), (["epoch_1.pt", "epoch_2.pt"], 2, True),
    (["epoch_3.pt"], 2, True), (["epoch_9.pt"], None, False), ([], 0, False), (["epoch_0.pt"], 0, True),
])
def test_the_watch_ends_once_epoch_n_or_later_was_evaluated(names, until, ends):
    assert reached([f"{CKPTS}/{name}" for name in names], until) is ends
