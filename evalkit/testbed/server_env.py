"""The server-side Python environment of the test bed: a CPU venv with cn_clip.

Creating it downloads a few hundred MB, so it is reused whenever the
imports already work.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

# Exact pins: any other torch release pulls GBs of CUDA wheels from PyPI.
PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "cn_clip", "lmdb")
PROBE = "import cn_clip, torch, torchvision, lmdb"

Log = Optional[Callable[[str], None]]


def default_venv_dir() -> Path:
    """``$EVALKIT_TESTBED_VENV`` if set, else ``~/.cache/evalkit/testbed-venv``.

    HOME is read at call time, so tests that change HOME should pass an
    explicit directory instead.
    """
    env = os.environ.get("EVALKIT_TESTBED_VENV")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "evalkit" / "testbed-venv"


def venv_python(venv_dir: Path) -> Path:
    return Path(venv_dir) / "bin" / "python"


def _usable(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True)
    return probe.returncode == 0


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-30:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def ensure_server_venv(venv_dir: Path, log: Log = None) -> Path:
    """Return the python of a venv at ``venv_dir`` that can import cn_clip.

    Reuses an existing working venv; otherwise creates it (or repairs it in
    place) with ``pip install``, which needs PyPI and takes minutes.
    Raises RuntimeError with pip's output tail on failure.
    """
    python = venv_python(venv_dir)
    if _usable(python):
        return python
    Path(venv_dir).parent.mkdir(parents=True, exist_ok=True)
    # Parallel test workers (pytest -n) share the venv: one builds it, the others wait for it.
    with open(f"{venv_dir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _usable(python):
            return python
        return _build(venv_dir, python, log)


def _build(venv_dir: Path, python: Path, log: Log) -> Path:
    if not python.exists():
        if log:
            log(f"creating venv {venv_dir}")
        base = shutil.which("python3") or sys.executable
        _run([base, "-m", "venv", str(venv_dir)], "python3 -m venv")
    if log:
        log(f"installing {' '.join(PACKAGES)} (several minutes)")
    _run([str(python), "-m", "pip", "install", "--quiet", *PACKAGES], "pip install")
    if not _usable(python):
        raise RuntimeError(f"{python} still cannot run: {PROBE}")
    return python


def site_packages(python: Path) -> Path:
    """The venv's purelib directory; it holds ``cn_clip/`` and so stands in
    for a Chinese-CLIP checkout on the fake server."""
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    )
    return Path(out.stdout.strip())
