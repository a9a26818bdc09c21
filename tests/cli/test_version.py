"""`--version` on each entry point as a user types it, and `-h` on every command."""
from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalkit.cli.reference_page import programs

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {"distillation_model_evaluation.py": ["distillation_model_evaluation.py"],
                "quick_evaluation.py": ["quick_evaluation.py"], "python -m evalkit": ["-m", "evalkit"]}


def typed(entry: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *ENTRY_POINTS[entry], *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_version_says_which_evalkit_and_nothing_else(entry):
    done = typed(entry, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"evalkit {metadata.version('evalkit')}\n", "")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("order", [("--version", "-v"), ("-v", "--version")])
def test_version_with_v_adds_what_a_bug_report_needs(entry, order):
    done = typed(entry, *order)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"evalkit {metadata.version('evalkit')}", f"Python {platform.python_version()} ({sys.executable})",
        f"paramiko {metadata.version('paramiko')}", f"click {metadata.version('click')}",
        f"rich {metadata.version('rich')}"]


@pytest.mark.parametrize("prog_name,command", programs(), ids=[name for name, _ in programs()])
def test_short_h_is_help_on_every_command(prog_name, command):
    result = CliRunner().invoke(command, ["-h"], prog_name=prog_name)
    assert result.exit_code == 0 and result.stdout.startswith(f"Usage: {prog_name}")
    assert result.stdout == CliRunner().invoke(command, ["--help"], prog_name=prog_name).stdout
