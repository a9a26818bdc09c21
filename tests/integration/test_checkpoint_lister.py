"""The server's checkpoint lister on checkpoints written as Chinese-CLIP's training writes them
(cn_clip/training/main.py), read by a python without torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.progress import last_marked_json
from evalkit.uploads import script_source

pytestmark = pytest.mark.integration

# main.py's two saves at the end of each epoch (save_epoch_frequency 1), with the model wrapped as
# DistributedDataParallel wraps it: state_dict() is an OrderedDict of module.* keys carrying its
# _metadata, and the optimizer is AdamW with its moments after some steps.
TRAIN = """
import os, sys, torch

class Wrapped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.module = torch.nn.Linear(4, 4)

def train(out, seed, epochs, name_of):
    torch.manual_seed(seed)
    model = Wrapped()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    steps = 0
    for epoch in range(epochs):
        for _ in range(2):
            optimizer.zero_grad()
            model.module(torch.randn(2, 4)).sum().backward()
            optimizer.step()
            steps += 1
        for name in name_of(epoch + 1):
            torch.save({"epoch": epoch + 1, "step": steps, "name": "muge_finetune",
                        "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
                       os.path.join(out, name))

out = sys.argv[1]
train(out, 0, 3, lambda epoch: [f"epoch{epoch}.pt", "epoch_latest.pt"])
# another run of the same recipe with another seed: epoch 3 at the same step, other weights
train(out, 1, 3, lambda epoch: ["rerun_epoch3.pt"] if epoch == 3 else [])
"""


def listed_without_torch(*patterns: Path, cache: Path | str = "") -> dict:
    """As the server runs the lister; -S: no site-packages, so no torch whatever is installed."""
    source = script_source("list_checkpoints.py").decode()
    ran = subprocess.run([sys.executable, "-I", "-S", "-c", source, str(cache), "[]", *map(str, patterns)],
                         capture_output=True, check=True)
    return last_marked_json(ran.stdout, b"EVALKIT-CHECKPOINTS ")


@pytest.fixture(scope="module")
def trained(server_python, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("experiment") / "checkpoints"
    folder.mkdir()
    subprocess.run([str(server_python), "-c", TRAIN, str(folder)], check=True, capture_output=True)
    return folder


def by_name(answer: dict) -> dict[str, dict]:
    return {Path(entry["path"]).name: entry for entry in answer["sets"][0]["files"]}


def test_two_saves_of_one_state_prove_one_checkpoint_though_their_bytes_differ(trained, tmp_path):
    assert (trained / "epoch3.pt").read_bytes() != (trained / "epoch_latest.pt").read_bytes()
    for look in ("first", "from the cache"):
        files = by_name(listed_without_torch(trained, cache=tmp_path / "facts.json"))
        assert files["epoch_latest.pt"]["state"] == files["epoch3.pt"]["state"], look
        assert files["epoch3.pt"]["state"] is not None, look
        # another state at the same epoch and step: its records' CRC-32s in the zip directory differ,
        # so it is told apart without its weights being read
        assert files["rerun_epoch3.pt"]["state"] is None, look
    assert all(entry["cached"] for entry in files.values())


def test_epoch_and_step_are_read_as_training_saved_them_and_only_shared_ones_are_digested(trained):
    files = by_name(listed_without_torch(trained))
    assert {name: (entry["zip"], entry["epoch"], entry["step"]) for name, entry in files.items()} == {
        "epoch1.pt": (True, 1, 2), "epoch2.pt": (True, 2, 4), "epoch3.pt": (True, 3, 6),
        "epoch_latest.pt": (True, 3, 6), "rerun_epoch3.pt": (True, 3, 6)}
    assert files["epoch1.pt"]["state"] is files["epoch2.pt"]["state"] is None
