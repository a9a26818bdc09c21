"""`python -m evalkit doctor` as a user meets it: its help, and a failed check as exit 16."""
from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from evalkit.cli import doctor, main
from evalkit.errors import DoctorFailed


def test_doctor_help_works_from_the_command_line_and_lists_every_option():
    done = subprocess.run([sys.executable, "-m", "evalkit", "doctor", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m evalkit doctor" in done.stdout
    for param in doctor.params:
        for opt in param.opts:
            assert opt in done.stdout, f"{opt} missing from doctor --help"


def test_doctor_is_listed_in_the_main_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "doctor" in result.stdout


def test_a_host_that_cannot_be_resolved_is_a_failed_check_and_exit_16(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(main, ["doctor", "--host", "two words"])
    assert result.exit_code == DoctorFailed.exit_code == 16
    assert result.stdout.splitlines()[0] == "✗ ssh alias: invalid host 'two words'"
    assert "  fix: give an alias from ~/.ssh/config or user@host" in result.stdout
    assert result.stderr.startswith("error: 1 of 1 checks failed: ssh alias")
