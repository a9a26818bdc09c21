"""The test bed itself: loopback sshd, tiny dataset and random checkpoint are real and usable."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import evalkit.testbed
from evalkit.testbed.builders import build_checkpoint, build_dataset
from evalkit.testbed.sshd import LoopbackSshd

pytestmark = pytest.mark.integration


# Loads a checkpoint the way upstream cn_clip/eval/extract_features.py does.
LOAD_LIKE_UPSTREAM = """
import sys, torch
from cn_clip.clip.model import CLIP
sys.path.insert(0, sys.argv[2])
from make_checkpoint import model_info
ckpt = torch.load(sys.argv[1], map_location="cpu")
assert (ckpt["epoch"], ckpt["step"]) == (1, 100), ckpt.keys()
sd = ckpt["state_dict"]
assert next(iter(sd)).startswith("module.")
sd = {k[len("module."):]: v for k, v in sd.items() if "bert.pooler" not in k}
CLIP(**model_info("RN50", "RBT3-chinese")).load_state_dict(sd)  # strict
print("loaded", len(sd))
"""

READ_NUM_IMAGES = """
import sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, lock=False)
with env.begin() as txn:
    print(int(txn.get(b"num_images")))
"""


def _run_server(python: Path, code: str, *args: object) -> str:
    proc = subprocess.run([str(python), "-c", code, *map(str, args)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_openssh_client_logs_in_through_alias(tmp_path: Path) -> None:
    with LoopbackSshd(tmp_path / "sshd") as sshd:
        config, known_hosts = sshd.write_client_files(tmp_path / "home" / ".ssh")
        assert known_hosts.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
        proc = subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", "seetacloud-v800", "echo ok"],
            capture_output=True, text=True, timeout=30,
        )
        assert proc.returncode == 0, f"{proc.stderr}\n--- sshd log ---\n{sshd.log_tail()}"
        assert proc.stdout.strip() == "ok"
    assert not sshd.running


def test_dataset_in_awkward_path(tmp_path: Path, server_python: Path) -> None:
    datapath = tmp_path / "数据 path"
    data_dir = build_dataset(server_python, datapath, "toy", "valid")
    assert data_dir == datapath / "datasets" / "toy"
    assert _run_server(server_python, READ_NUM_IMAGES, data_dir / "lmdb" / "valid" / "imgs").strip() == "20"
    assert (data_dir / "lmdb" / "valid" / "pairs").is_dir()
    texts = (data_dir / "valid_texts.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(texts) == 80
    assert '"image_ids": [1000]' in texts[0] and "\\u" not in texts[0]  # real Chinese, not escapes
    assert len((data_dir / "valid_imgs.tsv").read_text().splitlines()) == 20


def test_checkpoint_loads_like_upstream(checkpoint: Path, server_python: Path) -> None:
    output = checkpoint  # built once per session, under a path with spaces and Chinese
    mtime = output.stat().st_mtime_ns
    assert build_checkpoint(server_python, output) == output  # second call is a no-op
    assert output.stat().st_mtime_ns == mtime
    script_dir = Path(evalkit.testbed.__file__).parent  # for make_checkpoint.model_info
    assert _run_server(server_python, LOAD_LIKE_UPSTREAM, output, script_dir).startswith("loaded ")
