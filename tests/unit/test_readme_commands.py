"""CI runs the README's own setup line and test command, so what a newcomer types is what CI
proves: .ci/run reads them from the README rather than keeping its own variant, and the `test`
extra brings everything the tests need (the report's charts included)."""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_line(name: str) -> str:
    """What .ci/run's own readme_line function reads from the README."""
    script = REPO / ".ci" / "run"
    function = re.search(r"^readme_line\(\) \{.*?^\}", script.read_text(), re.S | re.M).group(0)
    done = subprocess.run(["bash", "-c", f"{function}\nreadme_line {name}"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


def test_ci_runs_the_readme_setup_line_and_test_command_as_written():
    readme = (REPO / "README.md").read_text()
    assert readme_line("setup") == "python3 -m venv .venv && .venv/bin/pip install -e '.[test]'"
    assert readme_line("test") == ".venv/bin/python -m pytest -n 3 --dist loadfile --durations=25"
    assert f"```bash\n{readme_line('setup')}\n```" in readme and f"```bash\n{readme_line('test')}\n```" in readme


def test_ci_has_no_install_or_test_line_of_its_own():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert not [line for line in lines if "pip install" in line or "pytest" in line]
    assert 'eval "$setup_line"' in lines and 'eval "$test_line"' in lines


def test_the_test_extra_brings_what_the_plot_extra_does():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["plot"]) <= set(extras["test"])
