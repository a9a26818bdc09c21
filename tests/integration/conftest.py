"""The real test bed: Debian's sshd on loopback, a CPU venv with cn_clip standing in for the
Chinese-CLIP checkout, tiny datasets in the real LMDB + JSONL format, a random checkpoint.

Built once per session. Set EVALKIT_TESTBED_PYTHON to reuse a server venv's python; otherwise
one is created under .testbed/ (about a minute). CI sets EVALKIT_REQUIRE_TESTBED=1 so that a
missing piece fails instead of skipping.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from evalkit.testbed.builders import build_checkpoint, build_dataset
from evalkit.testbed.server_env import ensure_server_venv, site_packages
from evalkit.testbed.sshd import LoopbackSshd

REPO = Path(__file__).resolve().parents[2]
ENTRY_SCRIPT = REPO / "distillation_model_evaluation.py"
QUICK_SCRIPT = REPO / "quick_evaluation.py"
CPU_LAUNCHER = REPO / "evalkit" / "remote" / "cpu_launch.py"
# Paths with spaces and Chinese characters, so quoting is exercised on every run.
DATAPATH_NAME = "数据 path"
# cpu everywhere by default; on a machine with a GPU, EVALKIT_TEST_DEVICE=cuda runs the same
# suite through the real torch.cuda path (no launcher, upstream's default precision).
DEVICE = os.environ.get("EVALKIT_TEST_DEVICE", "cpu")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    split: str
    images: int
    texts_per_image: int
    first_image_id: int
    first_text_id: int
    seed: int


# The first is the seed's layout; the second has other ids, another split, a Chinese name.
DATASETS = (
    DatasetSpec("Flickr30k-CN", "valid", 20, 4, 1000, 1, 0),
    DatasetSpec("MUGE 小样", "test", 14, 3, 500000, 90001, 7),
)


def start_interruptible(argv: list[str], **popen_kwargs) -> subprocess.Popen:
    """Popen for a child that a test will interrupt with SIGINT, as Ctrl-C in a terminal would.

    Run from a background job, under nohup or by some CI runners, the tests have SIGINT ignored
    and a child inherits that: Python then never raises KeyboardInterrupt, and the test would fail
    with evalkit working as it should (a program started with SIGINT ignored keeps it ignored).
    So the child starts with SIGINT's default disposition, as from an interactive shell."""
    return subprocess.Popen(argv, preexec_fn=_default_sigint, **popen_kwargs)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _unavailable(reason: str):
    if os.environ.get("EVALKIT_REQUIRE_TESTBED"):
        pytest.fail(f"test bed required but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def server_python() -> Path:
    given = os.environ.get("EVALKIT_TESTBED_PYTHON")
    if given:
        if not Path(given).exists():
            _unavailable(f"EVALKIT_TESTBED_PYTHON={given} does not exist")
        return Path(given)
    return ensure_server_venv(REPO / ".testbed" / "server-venv")


@pytest.fixture(scope="session")
def chinese_clip_dir(server_python) -> Path:
    return site_packages(server_python)


@pytest.fixture(scope="session")
def datapath(tmp_path_factory, server_python) -> Path:
    root = tmp_path_factory.mktemp("server") / DATAPATH_NAME
    for spec in DATASETS:
        build_dataset(server_python, root, spec.name, spec.split, images=spec.images,
                      texts_per_image=spec.texts_per_image, first_image_id=spec.first_image_id,
                      first_text_id=spec.first_text_id, seed=spec.seed)
    return root


def random_checkpoint(server_python: Path, path: Path, seed: int) -> Path:
    """A random checkpoint at PATH: a copy of the one built for SEED, which parallel test workers
    (pytest -n) build once between them (each costs ~10 s of CPU) and never share a file of."""
    maker = (REPO / "evalkit" / "testbed" / "make_checkpoint.py").read_bytes()
    built = REPO / ".testbed" / "checkpoints" / f"seed-{seed}-{hashlib.sha256(maker).hexdigest()[:12]}.pt"
    built.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{built}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_checkpoint(server_python, built, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, path)
    return path


@pytest.fixture(scope="session")
def checkpoint(datapath, server_python) -> Path:
    path = datapath / "experiments" / "muge_finetune_rn50_rbt3_team_distill" / "checkpoints" / "epoch_latest.pt"
    return random_checkpoint(server_python, path, seed=0)


@pytest.fixture(scope="session")
def second_checkpoint(datapath, server_python) -> Path:
    """Another random checkpoint (another seed): its features differ from the first's."""
    path = datapath / "experiments" / "large_distill" / "checkpoints" / "epoch_latest.pt"
    return random_checkpoint(server_python, path, seed=1)


@pytest.fixture(scope="session")
def third_checkpoint(datapath, server_python) -> Path:
    path = datapath / "experiments" / "baseline_rn50" / "checkpoints" / "epoch_latest.pt"
    return random_checkpoint(server_python, path, seed=2)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    from evalkit.testbed.sshd import SSHD

    if not Path(SSHD).exists():
        _unavailable(f"{SSHD} is missing: apt-get install openssh-server")
    with LoopbackSshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@dataclass
class Testbed:
    """One test's view of the server: its own ssh files in HOME and its own evalkit config."""

    sshd: LoopbackSshd
    ssh_dir: Path
    config: Path
    datapath: Path
    checkpoint: Path
    results_dir: Path
    server_python: Path
    chinese_clip_dir: Path
    server_outputs: Path

    def write_config(self, **overrides) -> Path:
        """The test bed's settings; the checkpoint is RN50 + RBT3, so the config says so."""
        settings = {
            "host": "seetacloud-v800",
            "datapath": str(self.datapath),
            "chinese_clip_dir": str(self.chinese_clip_dir),
            "activate": f"source '{self.server_python.parent / 'activate'}'",
            "device": DEVICE,
            "results_dir": str(self.results_dir),
            "remote_output_dir": str(self.server_outputs),
            "vision_model": "RN50",
            "text_model": "RBT3-chinese",
            "connect_timeout": 10,
            **overrides,
        }
        self.config.write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
        return self.config

    def evaluate(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the entry script exactly as a user does, with --config pointing here."""
        return self._run(ENTRY_SCRIPT, args, timeout)

    def point_at_a_closed_port(self) -> int:
        """Rewrite the ssh config's Port to one nothing listens on; returns that port."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        config = self.ssh_dir / "config"
        config.write_text(config.read_text().replace(f"Port {self.sshd.port}", f"Port {closed}"))
        return closed

    def quick(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """quick_evaluation.py exactly as a user runs it, with --config pointing here."""
        return self._run(QUICK_SCRIPT, args, timeout)

    def _run(self, script: Path, args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess:
        command = [sys.executable, str(script), "--config", str(self.config), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.results_dir.parent, stdin=subprocess.DEVNULL)


@pytest.fixture
def testbed(sshd, isolated_home, datapath, checkpoint, server_python, chinese_clip_dir, tmp_path):
    ssh_dir = isolated_home / ".ssh"
    sshd.write_client_files(ssh_dir)
    # Each test gets its own server output root, so no test reuses another's features.
    bed = Testbed(sshd, ssh_dir, tmp_path / "evalkit.yaml", datapath, checkpoint,
                  tmp_path / "results", server_python, chinese_clip_dir, tmp_path / "服务器 outputs")
    bed.write_config()
    return bed


@pytest.fixture
def own_datapath(testbed, tmp_path) -> Path:
    """A fresh copy of the Flickr30k-CN dataset, which a test may damage; the config points at it."""
    copy = tmp_path / "数据 copy"
    shutil.copytree(testbed.datapath / "datasets" / "Flickr30k-CN", copy / "datasets" / "Flickr30k-CN")
    testbed.write_config(datapath=str(copy))
    return copy


def texts_of(datapath: Path) -> Path:
    return datapath / "datasets" / "Flickr30k-CN" / "valid_texts.jsonl"


def run_upstream_by_hand(bed: Testbed, spec: DatasetSpec, workdir: Path,
                         checkpoint: Path | None = None) -> dict[str, dict]:
    """The seed's manual workflow: the upstream scripts run directly, no evalkit, no ssh.

    On the CPU only the CPU launcher stands between python and each script, as on a GPU-less
    server; on cuda nothing does.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data = bed.datapath / "datasets" / spec.name
    texts = data / f"{spec.split}_texts.jsonl"
    shutil.copy(texts, workdir / texts.name)
    # the same scripts on the same bytes give the same files: run once for all the suite's workers
    scripts = sorted((bed.chinese_clip_dir / "cn_clip" / "eval").glob("*.py"))
    done = _by_hand_cache(spec, [checkpoint or bed.checkpoint, texts, data / "lmdb" / spec.split / "imgs" / "data.mdb",
                                 *scripts, CPU_LAUNCHER])
    with open(f"{done}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_dir():
            _run_scripts_by_hand(bed, spec, data, texts, workdir, checkpoint)
            shutil.copytree(workdir, f"{done}.partial", dirs_exist_ok=True)
            os.rename(f"{done}.partial", done)
    shutil.copytree(done, workdir, dirs_exist_ok=True)
    return {"text_to_image": json.loads((workdir / "t2i_result.json").read_text()),
            "image_to_text": json.loads((workdir / "i2t_result.json").read_text())}


def _by_hand_cache(spec: DatasetSpec, inputs: list[Path]) -> Path:
    digest = hashlib.sha256(f"{spec}|{DEVICE}".encode())
    for path in [*inputs, Path(__file__)]:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    cache = REPO / ".testbed" / "by-hand"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / digest.hexdigest()[:24]


def _run_scripts_by_hand(bed: Testbed, spec: DatasetSpec, data: Path, texts: Path, workdir: Path,
                         checkpoint: Path | None) -> None:
    img_feats, txt_feats = workdir / "img_feat.jsonl", workdir / "txt_feat.jsonl"
    t2i, i2t = workdir / "t2i.jsonl", workdir / "i2t.jsonl"
    scripts = [
        ["extract_features.py", "--extract-image-feats", "--extract-text-feats",
         "--image-data", data / "lmdb" / spec.split / "imgs", "--text-data", texts,
         "--image-feat-output-path", img_feats, "--text-feat-output-path", txt_feats,
         "--img-batch-size", "32", "--text-batch-size", "32", "--context-length", "52",
         "--resume", checkpoint or bed.checkpoint, "--vision-model", "RN50", "--text-model", "RBT3-chinese",
         *(["--precision", "fp32"] if DEVICE == "cpu" else [])],
        ["make_topk_predictions.py", "--image-feats", img_feats, "--text-feats", txt_feats,
         "--top-k", "10", "--eval-batch-size", "32768", "--output", t2i],
        ["make_topk_predictions_tr.py", "--image-feats", img_feats, "--text-feats", txt_feats,
         "--top-k", "10", "--eval-batch-size", "32768", "--output", i2t],
        ["evaluation.py", texts, t2i, workdir / "t2i_result.json"],
        ["transform_ir_annotation_to_tr.py", "--input", workdir / texts.name],
        ["evaluation_tr.py", workdir / f"{spec.split}_texts.tr.jsonl", i2t, workdir / "i2t_result.json"],
    ]
    env = {**os.environ, "PYTHONPATH": str(bed.chinese_clip_dir)}
    launcher = [str(CPU_LAUNCHER)] if DEVICE == "cpu" else []
    for script, *args in scripts:
        subprocess.run([str(bed.server_python), *launcher, f"cn_clip/eval/{script}",
                        *map(str, args)], cwd=bed.chinese_clip_dir, env=env, check=True,
                       capture_output=True)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster of this session's own (munged, slurmctld, slurmd; 2 fake GPUs)."""
    from evalkit.testbed.slurm import LoopbackSlurm, is_installed

    if not is_installed():
        _unavailable("Slurm is missing: apt-get install slurm-wlm munge")
    with LoopbackSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def login_node(tmp_path_factory, slurm):
    """The cluster's login node: a loopback sshd whose sessions find this cluster (SLURM_CONF)."""
    from evalkit.testbed.sshd import SSHD

    if not Path(SSHD).exists():
        _unavailable(f"{SSHD} is missing: apt-get install openssh-server")
    with LoopbackSshd(tmp_path_factory.mktemp("login"), environment=slurm.environment()) as server:
        yield server


@pytest.fixture
def slurm_testbed(login_node, slurm, isolated_home, datapath, checkpoint, server_python, chinese_clip_dir, tmp_path):
    """The test bed with `executor: slurm`: the login node over ssh, jobs on the cluster's node."""
    ssh_dir = isolated_home / ".ssh"
    login_node.write_client_files(ssh_dir)
    bed = Testbed(login_node, ssh_dir, tmp_path / "evalkit.yaml", datapath, checkpoint,
                  tmp_path / "results", server_python, chinese_clip_dir, tmp_path / "服务器 outputs")
    bed.write_config(executor="slurm", slurm=SLURM_TEST_SETTINGS)
    yield bed
    slurm.cancel_jobs()  # a test that failed halfway must not leave the next one waiting for the node


# squeue quickly (a real cluster: 5 s rising to 60 s), a short grace for a job that left the queue
SLURM_TEST_SETTINGS = {"partition": "gpu", "time": "00:10:00", "poll_interval": 0.5, "poll_max": 2,
                       "lost_after": 5}
