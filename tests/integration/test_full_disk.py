"""A real full disk on the server (a small tmpfs as its output root): the run ends with one sentence
naming the disk, nothing half-written is left behind, no process of the run goes on, and the
connection, which is fine, is never taken for a dropped one."""
from __future__ import annotations

import json
import subprocess

import pytest

from evalkit.errors import ConnectionLost, ServerFileError
from evalkit.session import Session
from evalkit.ssh import Connection, resolve_target
from evalkit.store import LocalStore

from .server_runs import filled_at, launch_one_shot, processes_of, run_dirs

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(testbed, tmp_path):
    """The test bed's output root on a 16 MiB tmpfs of its own (mounting needs root)."""
    folder = tmp_path / "small disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    testbed.server_outputs = folder / "outputs"
    testbed.write_config(remote_output_dir=str(testbed.server_outputs))
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _nothing_half_written(bed) -> None:
    assert not [path for path in bed.server_outputs.rglob("*") if ".tmp-" in path.name]
    for run_dir in run_dirs(bed):
        assert processes_of(run_dir.name) == []


def test_a_full_disk_at_the_launch_refuses_the_run_naming_the_disk(testbed, small_disk):
    # the launch writes the provenance and run.json before it starts the driver
    client = launch_one_shot(testbed, env=filled_at("evalkit.executors.ssh:SshExecutor.launch", small_disk))
    out, err = client.communicate(timeout=300)
    assert client.returncode == ServerFileError.exit_code, err + out
    said = " ".join(err.split())
    assert f"the server's disk at {small_disk} is full (" in said, err
    assert "provenance.json could not be written" in said or "run.json could not be written" in said, err
    assert "connection lost" not in out + err and "reconnect" not in out + err
    assert "cancel" not in out + err  # nothing was started
    [run_dir] = run_dirs(testbed)
    assert list(run_dir.iterdir()) == []  # no temporary file either
    assert not list(LocalStore(testbed.results_dir).runs_dir.glob("2*.json"))  # nor its record
    _nothing_half_written(testbed)


def test_a_full_disk_during_extraction_ends_the_run_naming_the_disk(testbed, small_disk):
    # full but for 256 KiB once the checks passed: the run starts, its features do not fit
    client = launch_one_shot(testbed, env=filled_at("evalkit.pipeline:_new_run", small_disk, leave=256 * 1024))
    out, err = client.communicate(timeout=300)
    assert client.returncode == ServerFileError.exit_code, err + out
    said = " ".join(err.split())
    assert f"step 'extract' (extract image + text features) stopped: the server's disk at {small_disk} filled up" \
        in said and "No space left on device" in said
    [run_dir] = run_dirs(testbed)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["disk_full"]["removed"]
    assert not list(testbed.server_outputs.rglob("*feat.jsonl"))  # the half-written features are gone
    _nothing_half_written(testbed)


def test_a_request_the_server_refuses_is_not_a_dropped_link(testbed, tmp_path):
    # SFTP's "Failure" carries no errno, as a closed socket's error does: the transport is what tells
    in_the_way = tmp_path / "a folder in the way"
    (in_the_way / "kept").mkdir(parents=True)
    notes = []
    with Connection(resolve_target("seetacloud-v800", testbed.ssh_dir / "config")) as connection:
        session = Session(connection)
        session.resilient(30, notes.append, "re-attach later")
        generation = connection.open().generation
        with pytest.raises(ServerFileError) as refused:
            session.write_bytes(str(in_the_way), b"{}")
        with pytest.raises(OSError) as unreadable:
            session.read_bytes(str(in_the_way))
        assert connection.generation == generation and notes == []  # never reconnected
        assert session.read_bytes(str(testbed.config)) == testbed.config.read_bytes()  # the link is fine
    assert f"could not write {in_the_way} on the server" in refused.value.message
    assert not isinstance(unreadable.value, ConnectionLost)
    assert sorted(path.name for path in tmp_path.iterdir() if ".tmp-" in path.name) == []  # no temporary left
