"""The run commands without a server: help, an unknown run id, no runs yet, a record's round trip."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from evalkit.cli import main
from evalkit.config import Settings
from evalkit.errors import UnknownRun
from evalkit.evaluation import Evaluation
from evalkit.plan import build_plan
from evalkit.run_record import new_record, new_run_id
from evalkit.store import LocalStore


@pytest.fixture(autouse=True)
def wide_console(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


REPO = Path(__file__).resolve().parents[2]
ENTRY_SCRIPTS = sorted(path.name for path in REPO.glob("*.py"))


def test_the_main_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    rows = result.stdout.split("Commands:")[1].splitlines()
    listed = {row.split()[0] for row in rows if row.startswith("  ") and not row.startswith("   ")}
    assert listed == set(main.commands)


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_teaches_with_help_and_declares_each_flag_once(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout, result.output
    declared = main.commands[command]
    group = click.Context(main, info_name="evalkit", **main.context_settings)
    context = click.Context(declared, info_name=command, parent=group, **declared.context_settings)
    params = declared.get_params(context)  # with the --help option click adds
    flags = [opt for param in params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")]
    assert len(flags) == len(set(flags)), sorted({flag for flag in flags if flags.count(flag) > 1})
    names = [param.name for param in params]
    assert len(names) == len(set(names)), sorted({name for name in names if names.count(name) > 1})
    for flag in flags:
        assert flag in result.stdout, f"{command} --help does not show {flag}"


def test_the_entry_scripts_are_the_two_documented_ones():
    assert ENTRY_SCRIPTS == ["distillation_model_evaluation.py", "quick_evaluation.py"]


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_every_entry_script_teaches_with_help(script):
    done = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: {script} ")


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
    evaluation = Evaluation("Flickr30k-CN", "valid", "/d/ckpt.pt", "RN50", "RBT3-chinese", label="team",
                            stages=("extract", "recall"), skip_extraction=True)
    record = new_record(settings, evaluation, build_plan(settings, evaluation), new_run_id(),
                        "/d/evalkit/.evalkit/runs/x")
    store = LocalStore(Path(settings.results_dir))
    store.save_record(record)
    loaded = store.load_record(record.run_id)
    assert loaded == record
    assert loaded.plan == build_plan(settings, evaluation)  # attach follows the very steps that were started
    assert [r.run_id for r in store.newest_records(5)] == [record.run_id]


def test_a_record_from_another_version_is_named_not_a_traceback(tmp_path):
    store = LocalStore(tmp_path / "results")
    store.runs_dir.mkdir(parents=True)
    (store.runs_dir / "20250101-000000-abcdef.json").write_text('{"run_id": "20250101-000000-abcdef"}')
    result = invoke("attach", "20250101-000000-abcdef", "--results-dir", str(tmp_path / "results"))
    assert result.exit_code == UnknownRun.exit_code
    assert "unreadable or from another evalkit version" in result.stderr


@pytest.mark.parametrize("malformed", [{"settings": [["host", "gpu-box"]]}, {"settings": {"slurm": ["gpu"]}},
                                       {"plan": []}])
def test_a_malformed_record_is_named_by_attach_and_left_out_by_status(tmp_path, malformed):
    settings = Settings(host="gpu-box", datapath="/d", results_dir=str(tmp_path / "results"), device="cpu")
    evaluation = Evaluation("Flickr30k-CN", "valid", "/d/ckpt.pt", "RN50", "RBT3-chinese", label="team")
    store = LocalStore(Path(settings.results_dir))
    good = new_record(settings, evaluation, build_plan(settings, evaluation), "20250101-000000-000000", "/d/r")
    store.save_record(good)
    bad = json.loads(good.to_json())
    bad.update(malformed, run_id="20250101-000001-abcdef")
    (store.runs_dir / "20250101-000001-abcdef.json").write_text(json.dumps(bad))
    listed = invoke("status", "--results-dir", str(tmp_path / "results"))
    assert listed.exit_code == 0, listed.stderr  # the good run is listed; the other one left out
    attached = invoke("attach", "20250101-000001-abcdef", "--results-dir", str(tmp_path / "results"))
    assert attached.exit_code == UnknownRun.exit_code, attached.stderr
    assert "unreadable or from another evalkit version" in attached.stderr


def test_run_ids_made_later_sort_later_and_need_no_quoting(monkeypatch):
    # `status` lists runs by id: ids made across second, hour, day and year boundaries (where a
    # digit count or a field rolls over) must sort in the order they were made
    moments = [datetime(2024, 12, 31, 23, 59, 59), datetime(2025, 1, 1, 0, 0, 0),
               datetime(2025, 1, 1, 0, 0, 9), datetime(2025, 1, 1, 0, 0, 10),
               datetime(2025, 1, 1, 9, 59, 59), datetime(2025, 1, 1, 10, 0, 0)]
    clock = iter(moment.replace(tzinfo=timezone.utc) for moment in moments)
    monkeypatch.setattr("evalkit.clock.now", lambda: next(clock))
    ids = [new_run_id() for _ in moments]
    for run_id, moment in zip(ids, moments):
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id), run_id
        assert datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S") == moment
        assert shlex.quote(run_id) == run_id
    assert sorted(ids) == ids


def test_two_run_ids_made_in_one_second_differ(monkeypatch):
    monkeypatch.setattr("evalkit.clock.now", lambda: datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc))
    first, second = new_run_id(), new_run_id()
    assert first[:15] == second[:15] == "20250101-120000"
    assert first != second
