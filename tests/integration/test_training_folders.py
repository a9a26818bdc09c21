"""A sweep and a watch of a checkpoints folder written the way Chinese-CLIP's training writes it
(cn_clip/training/main.py): epoch1.pt ... epoch11.pt and epoch_latest.pt, each one torch.save of
{"epoch", "step", "name", "state_dict", "optimizer"}, epoch_latest.pt a second save of epoch 11's
state (other bytes: torch names the archive after the file), other weights at every epoch, all
one size for epoch1.pt to epoch9.pt and one mtime (as after `touch`, cp -p or rsync -a), and a file whose name is not UTF-8.

Every epoch is evaluated once, in epoch order, each with upstream's own numbers for its file (checked
by hand for the epochs a string sort misplaces, the last and the best);
epoch_latest.pt is epoch 11's alias, never evaluated twice nor best; a watch of the finished
folder ends by itself; a watch whose only cell failed says so with a non-zero exit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from evalkit.comparison import METRICS
from evalkit.errors import ComparisonIncomplete

from .conftest import DATASETS, REPO, run_upstream_by_hand

pytestmark = pytest.mark.integration

EPOCHS = 11
# what cn_clip/training/main.py does at the end of each epoch, on the test bed's random RN50 + RBT3
# weights moved a little further every epoch
WRITE_TRAINING_FOLDER = textwrap.dedent("""
    import os, sys, torch
    source, folder, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    state_dict = torch.load(source, map_location="cpu")["state_dict"]
    generator = torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        for value in state_dict.values():
            if value.is_floating_point() and value.dim() > 1:
                noise = torch.randn(value.shape, generator=generator) * 0.02 * (value.float().std() + 1e-3)
                value.add_(noise.to(value.dtype))
        saved = {"epoch": epoch, "step": epoch * 100, "name": "team_distill", "state_dict": state_dict,
                 "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": list(range(3))}]}}
        torch.save(saved, os.path.join(folder, f"epoch{epoch}.pt"))
        torch.save(saved, os.path.join(folder, "epoch_latest.pt"))
""")


@pytest.fixture
def training_folder(testbed, tmp_path) -> Path:
    # an ASCII path: torch then names each archive's folder after its file (for a path it cannot
    # encode so, every archive is "archive/" and epoch_latest.pt is a byte-for-byte copy)
    folder = tmp_path / "training runs" / "experiments" / "team_distill" / "checkpoints"
    folder.mkdir(parents=True)
    subprocess.run([str(testbed.server_python), "-c", WRITE_TRAINING_FOLDER, str(testbed.checkpoint), str(folder),
                    str(EPOCHS)], check=True, capture_output=True, timeout=600)
    os.link(folder / "epoch1.pt", os.fsencode(folder) + b"/epoch\xff.pt")  # a name that is not UTF-8
    for path in folder.iterdir():
        os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))  # one mtime for all: `touch`
    return folder


def test_a_sweep_of_a_training_folder_evaluates_every_epoch_once_with_upstreams_numbers(testbed, training_folder,
                                                                                     tmp_path):
    assert len({(training_folder / f"epoch{n}.pt").stat().st_size for n in range(1, 10)}) == 1
    latest, last = (training_folder / name for name in ("epoch_latest.pt", f"epoch{EPOCHS}.pt"))
    assert latest.read_bytes() != last.read_bytes()

    run = testbed.evaluate("--model-path", str(training_folder), "--json", timeout=1800)
    assert run.returncode == 0, run.stderr
    assert f"{training_folder}: {EPOCHS} checkpoints" in run.stderr
    assert (f"alias: epoch_latest.pt holds the same training state as epoch{EPOCHS}.pt (epoch {EPOCHS}, step "
            f"{EPOCHS * 100}): evaluated once, as epoch{EPOCHS}.pt") in run.stderr
    assert "epoch\\xff.pt: its name is not UTF-8" in run.stderr
    rows = json.loads(run.stdout)["models"]
    assert [(r["label"], r["experiment"], r["epoch"], r["step"], r["status"]) for r in rows] == [
        (f"team_distill@epoch{n}", "team_distill", n, n * 100, "ok") for n in range(1, EPOCHS + 1)]
    assert len({json.dumps(r["recall"], sort_keys=True) for r in rows}) > 1, "every epoch gave the same numbers"
    best = [r for r in rows if r["best"]]
    assert len(best) == 1 and best[0]["label"] != "team_distill"

    # the upstream scripts run by hand give the rows' numbers: for the epochs a string sort would
    # misplace (1, 2, 10), the one epoch_latest.pt stands for (11), and the best
    checked = {1, 2, 10, EPOCHS, best[0]["epoch"]}
    for row in (row for row in rows if row["epoch"] in checked):
        epoch = row["epoch"]
        by_hand = run_upstream_by_hand(testbed, DATASETS[0], tmp_path / f"by-hand-{epoch}",
                                       training_folder / f"epoch{epoch}.pt")
        for direction, result in by_hand.items():
            assert row["recall"][direction] == {key: result["scoreJson"][key] for key in METRICS}, row["label"]

    results = subprocess.run([sys.executable, "-m", "evalkit", "results", "--config", str(testbed.config), "--best",
                              "--format", "json"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert results.returncode == 0, results.stderr
    assert [r["label"] for r in json.loads(results.stdout)[0]["models"]] == [best[0]["label"]]

    # the finished folder watched up to its last epoch: nothing is evaluated again, the watch ends by itself
    logs = sorted((testbed.results_dir / "logs").iterdir())
    testbed.write_config(watch_settle=1, watch_interval=1)
    watched = testbed.evaluate("--model-path", str(training_folder), "--watch", "--until-epoch", str(EPOCHS),
                               timeout=300)
    assert watched.returncode == 0, watched.stderr
    assert sorted((testbed.results_dir / "logs").iterdir()) == logs


def test_a_watch_whose_only_cell_failed_exits_non_zero(testbed, tmp_path):
    folder = tmp_path / "broken" / "experiments" / "died" / "checkpoints"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "epoch1.pt", "w") as archive:  # complete, but no checkpoint in it
        archive.writestr("epoch1/notes.txt", "training died before its first save")
    os.utime(folder / "epoch1.pt", ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    testbed.write_config(watch_settle=1, watch_interval=1)
    watched = testbed.evaluate("--model-path", str(folder / "epoch*.pt"), "--watch", "--until-epoch", "1",
                               timeout=300)
    assert watched.returncode == ComparisonIncomplete.exit_code, watched.stderr
    assert "1 evaluation of the watch failed: died@epoch1" in watched.stderr
