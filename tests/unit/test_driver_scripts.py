"""job.py and the modules it imports beside it travel together (server.DRIVER_SCRIPTS): the
bootstrap makes exactly these current before any action of job.py, and a Slurm job checks
exactly these SHA-256s before it starts the driver. A module left off the list would be missing,
or stale, on the server."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

from evalkit.config import Settings
from evalkit.server import DRIVER_SCRIPTS, JOB_RUNNER, scripts_for
from evalkit.uploads import script_digests, slurm_batch_script

REMOTE = Path(__file__).resolve().parents[2] / "evalkit" / "remote"


def imported_beside(name: str) -> set[str]:
    """The files of evalkit/remote/ that the script NAME imports (by module name, as the folder is
    on its sys.path)."""
    found = set()
    for node in ast.walk(ast.parse((REMOTE / name).read_text())):
        modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        found |= {f"{module}.py" for module in modules if (REMOTE / f"{module}.py").is_file()}
    return found


def test_every_module_job_py_imports_beside_it_travels_with_it():
    assert DRIVER_SCRIPTS[0] == JOB_RUNNER
    for name in DRIVER_SCRIPTS:
        assert imported_beside(name) <= set(DRIVER_SCRIPTS), name
    assert len(set(DRIVER_SCRIPTS)) == len(DRIVER_SCRIPTS)


def test_a_run_uploads_and_a_slurm_job_checks_every_one_of_them():
    settings = Settings(datapath="/data", executor="slurm")
    assert set(DRIVER_SCRIPTS) <= set(scripts_for(settings))
    batch = slurm_batch_script(settings, "20260101-000000-abc123", "team", "/data/.evalkit/runs/x")
    for name, digest in script_digests(list(DRIVER_SCRIPTS)).items():
        assert f'"{name}": "{digest}"' in batch, name


def test_job_py_runs_from_a_folder_that_holds_only_them(tmp_path):
    folder, run_dir = tmp_path / ".evalkit", tmp_path / "run"
    folder.mkdir()
    run_dir.mkdir()
    for name in DRIVER_SCRIPTS:
        shutil.copy(REMOTE / name, folder / name)
    done = subprocess.run([sys.executable, str(folder / JOB_RUNNER), "states", "--run-dirs", str(run_dir)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert json.loads(line.removeprefix("EVALKIT-JOB ")) == {"states": {str(run_dir): {
        "status": None, "driver": None, "driver_alive": False, "slurm": None}}}
