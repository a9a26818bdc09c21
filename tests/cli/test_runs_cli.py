"""The run commands without a server: help, an unknown run id, no runs yet, a record's round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from evalkit.cli import main
from evalkit.config import Settings
from evalkit.errors import UnknownRun
from evalkit.plan import Request, build_plan
from evalkit.runs import load, new_record, new_run_id, newest, save


@pytest.fixture(autouse=True)
def wide_console(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("command", ["attach", "cancel", "status", "logs", "results", "doctor", "quick"])
def test_every_command_teaches_with_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout


@pytest.mark.parametrize("command", ["attach", "cancel", "logs", "status"])
def test_an_unknown_run_id_is_named_with_where_it_was_looked_for(command, tmp_path):
    result = invoke(command, "20991231-000000-abcdef", "--results-dir", str(tmp_path / "results"))
    assert result.exit_code == UnknownRun.exit_code
    assert "no run '20991231-000000-abcdef'" in result.stderr and "runs" in result.stderr
    assert "python -m evalkit status" in result.stderr


def test_status_with_no_runs_says_so(tmp_path):
    result = invoke("status", "--results-dir", str(tmp_path / "results"))
    assert result.exit_code == 0 and "no runs recorded" in result.stdout


def test_a_run_record_keeps_everything_attach_needs(tmp_path):
    settings = Settings(host="gpu-box", datapath="/d", results_dir=str(tmp_path / "results"), device="cpu")
    request = Request("Flickr30k-CN", "valid", "/d/ckpt.pt", "RN50", "RBT3-chinese", skip_extraction=True,
                      stages=("extract", "recall"), label="team")
    record = new_record(settings, request, build_plan(settings, request), new_run_id(), "/d/evalkit/.evalkit/runs/x")
    save(record)
    loaded = load(Path(settings.results_dir), record.run_id)
    assert loaded == record
    assert build_plan(loaded.settings, loaded.request) == build_plan(settings, request)
    assert [r.run_id for r in newest(Path(settings.results_dir), 5)] == [record.run_id]


def test_run_ids_sort_by_time_and_need_no_quoting():
    first, second = new_run_id(), new_run_id()
    assert first != second
    assert all(ch.isalnum() or ch == "-" for ch in first)
