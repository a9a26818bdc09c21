"""A complete local stand-in for the GPU server, for `python -m evalkit demo`.

Loopback sshd, a CPU venv with the cn_clip package (its site-packages is the Chinese-CLIP
checkout), a tiny Flickr30k-CN-format dataset and a random RN50 + RBT3 checkpoint. The
evaluation then runs exactly as against a real server: through SSH, with the upstream scripts.
"""
from __future__ import annotations

import shlex
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .config import Settings
from .errors import DemoSetupError
from .evaluation import Evaluation
from .testbed.builders import build_checkpoint, build_dataset
from .testbed.server_env import ensure_server_venv, site_packages
from .testbed.sshd import LoopbackSshd

DEMO_ALIAS = "evalkit-demo"
DEMO_DATASET = "Flickr30k-CN"
DEMO_EXPERIMENT = "muge_finetune_rn50_rbt3_demo"


@dataclass(frozen=True)
class DemoServer:
    settings: Settings
    evaluation: Evaluation


def default_workdir() -> Path:
    return Path.home() / ".cache" / "evalkit" / "demo"


@contextmanager
def demo_server(workdir: Path, results_dir: str, say: Callable[[str], None]) -> Iterator[DemoServer]:
    """Build (or reuse) the demo server's pieces under WORKDIR and keep sshd up meanwhile."""
    workdir = workdir.resolve()
    try:
        say(f"server venv: {workdir / 'server-venv'} (first time: a few minutes)")
        python = ensure_server_venv(workdir / "server-venv", log=say)
        datapath = workdir / "datapath"
        if not (datapath / "datasets" / DEMO_DATASET / "lmdb" / "valid" / "imgs").exists():
            say(f"dataset: {datapath / 'datasets' / DEMO_DATASET}")
            build_dataset(python, datapath, DEMO_DATASET, "valid")
        checkpoint = datapath / "experiments" / DEMO_EXPERIMENT / "checkpoints" / "epoch_latest.pt"
        say(f"checkpoint: {checkpoint}")
        build_checkpoint(python, checkpoint)
        sshd = LoopbackSshd(workdir / "sshd")
        sshd.start()
    except (RuntimeError, OSError) as exc:
        raise DemoSetupError(f"could not set up the demo server: {exc}",
                             "apt-get install openssh-server; check the disk has ~6 GB free") from exc
    try:
        ssh_config, _ = sshd.write_client_files(workdir / "ssh", alias=DEMO_ALIAS)
        say(f"sshd: 127.0.0.1:{sshd.port} as ssh alias {DEMO_ALIAS!r} ({ssh_config})")
        settings = Settings(host=DEMO_ALIAS, ssh_config=str(ssh_config), datapath=str(datapath),
                            chinese_clip_dir=str(site_packages(python)),
                            activate=f"source {shlex.quote(str(python.parent / 'activate'))}",
                            device="cpu", results_dir=results_dir)
        evaluation = Evaluation(DEMO_DATASET, "valid", str(checkpoint), "RN50", "RBT3-chinese")
        yield DemoServer(settings, evaluation)
    finally:
        sshd.stop()
