"""The `ssh` executor's look at a followed run: over SFTP where the server has it; on a server
without it, through job.py, and SFTP is not asked again once refused (each try costs a round trip)."""
from __future__ import annotations

import json

from evalkit.config import Settings
from evalkit.errors import TransferUnavailable
from evalkit.executors.base import RemoteRun
from evalkit.executors.ssh import SshExecutor
from evalkit.plan import Plan
from evalkit.starter import MARKER

RUN_DIR = "/srv/.evalkit/runs/20261207-000000-abcdef"
RUN = RemoteRun("20261207-000000-abcdef", RUN_DIR, Plan("team", "/ckpt/epoch1.pt", "/out", None, (), {}, None))


class _StatesCommand:
    """job.py states through the bootstrap: every script current, the run still going, its driver alive."""

    def ask(self, line: bytes, marker: bytes, timeout: float) -> dict:
        return {"missing": []}

    def finish(self, stdin: bytes, timeout: float) -> tuple[int, bytes, bytes]:
        answer = {"states": {RUN_DIR: {"status": None, "driver_alive": True}}}
        return 0, MARKER + json.dumps(answer).encode() + b"\n", b""


class _ServerWithoutSftp:
    """A connection whose server refuses SFTP; it counts the tries and the commands started."""

    generation = 1

    def __init__(self) -> None:
        self.sftp_tries, self.commands = 0, 0

    def read_bytes(self, path: str) -> bytes:
        self.sftp_tries += 1
        raise TransferUnavailable("the server has no SFTP subsystem", "enable it")

    def start_command(self, command: str) -> _StatesCommand:
        self.commands += 1
        return _StatesCommand()


def test_without_sftp_the_state_comes_from_job_py_and_sftp_is_tried_once_only():
    connection = _ServerWithoutSftp()
    executor = SshExecutor(connection, Settings(datapath="/srv"))
    states = [executor.state(RUN) for _ in range(3)]
    assert [(state.state, state.driver_alive) for state in states] == [(None, True)] * 3
    assert connection.commands == 3  # one ask of job.py each time
    assert connection.sftp_tries == 1  # the refusal is remembered: no second try, no second round trip
