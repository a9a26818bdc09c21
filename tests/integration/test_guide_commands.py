"""The README's demo, as a newcomer types it after the setup line: its fenced blocks marked
`<!-- demo: ... -->` run as written, in a fresh folder, against the demo server (loopback sshd,
the CPU server venv, the unmodified upstream scripts), and end in the results table."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.testbed.guide_commands import blocks

pytestmark = pytest.mark.integration
DEMO_BLOCKS = [block for block in blocks() if block.marker.startswith("<!-- demo")]


def test_the_readme_has_its_demo_blocks():
    assert [block.page for block in DEMO_BLOCKS] == ["README.md", "README.md"]
    assert "python -m evalkit demo" in DEMO_BLOCKS[0].text


def test_the_demo_blocks_run_as_written_and_end_in_the_table(sshd, server_python, isolated_home, tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(Path(sys.prefix))       # the setup line's venv: the one running these tests
    # the demo's server venv is the test bed's (building one takes minutes and the network)
    workdir = isolated_home / ".cache" / "evalkit" / "demo"
    workdir.mkdir(parents=True)
    (workdir / "server-venv").symlink_to(server_python.parent.parent)
    # `apt-get install -y openssh-server`: the test bed already needs sshd, so it is installed
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "apt-get").write_text("#!/bin/sh\ntest -x /usr/sbin/sshd\n")
    (stubs / "apt-get").chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", COLUMNS="120")
    outputs = []
    for block in DEMO_BLOCKS:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{block.page}:\n{block.text}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    demo, after = outputs
    assert "│ text→image │" in demo and "│ image→text │" in demo, demo[-2000:]
    assert "muge_finetune_rn50_rbt3_demo" in after            # `results`: the demo's row
    assert (clone / "demo-report.html").stat().st_size > 0      # `report`: the page
