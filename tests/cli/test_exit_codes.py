"""Exit codes are a contract: distinct per failure kind, and documented in the guide (docs/exit-codes.md)."""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from evalkit import errors
from evalkit.errors import EXIT_CODES, EvalkitError

REPO = Path(__file__).resolve().parents[2]


def all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *all_subclasses(sub)]
    return found


def documented_codes() -> set[int]:
    page = REPO / "docs" / "exit-codes.md"
    assert page.exists(), "docs/exit-codes.md with an 'Exit codes' table is missing"
    text = page.read_text(encoding="utf-8")
    heading = re.search(r"^#+\s*Exit codes\s*$", text, re.MULTILINE | re.IGNORECASE)
    assert heading, "docs/exit-codes.md has no 'Exit codes' heading"
    section = text[heading.end():]
    following = re.search(r"^#+\s", section, re.MULTILINE)
    section = section[:following.start()] if following else section
    return {int(code) for code in re.findall(r"^\|\s*`?(\d+)`?\s*\|", section, re.MULTILINE)}


@pytest.mark.parametrize("code", sorted(EXIT_CODES))
def test_every_exit_code_is_in_the_guide_table(code):
    assert code in documented_codes()


def test_the_guide_documents_no_code_evalkit_does_not_use():
    assert documented_codes() <= set(EXIT_CODES)


def test_each_documented_failure_code_belongs_to_exactly_one_error_kind():
    kinds = all_subclasses(EvalkitError)
    reserved = {0, errors.UNEXPECTED_EXIT_CODE, errors.USAGE_EXIT_CODE, errors.INTERRUPTED_EXIT_CODE}
    codes = sorted(kind.exit_code for kind in kinds)
    # one kind per code: no code shared, none documented without a kind, no kind undocumented
    assert codes == sorted(set(EXIT_CODES) - reserved) == list(range(3, 3 + len(codes))), \
        {kind.__name__: kind.exit_code for kind in kinds}


@pytest.mark.parametrize("kind", all_subclasses(EvalkitError), ids=lambda kind: kind.__name__)
def test_error_kind_codes_are_documented_and_clash_with_nothing_reserved(kind):
    assert kind.exit_code in EXIT_CODES
    assert kind.exit_code not in (0, errors.UNEXPECTED_EXIT_CODE, errors.USAGE_EXIT_CODE,
                                  errors.INTERRUPTED_EXIT_CODE)
    assert 0 < kind.exit_code < 126, "126+ mean 'not executable' / signals to shells"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_every_console_script_entry_point_exists():
    import tomllib
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("scripts", {})
    for name, target in scripts.items():
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute, None)), f"{name} -> {target}"


def _buggy_command(tmp_path, monkeypatch, *extra: str):
    """A command whose body raises what no code path expects, with HOME pointing at tmp_path."""
    import click
    from click.testing import CliRunner

    from evalkit.cli.guard import debug_option, guarded

    monkeypatch.setenv("HOME", str(tmp_path))

    @click.command()
    @debug_option
    @guarded
    def broken(debug: bool) -> None:
        [][0]

    return CliRunner().invoke(broken, list(extra))


def test_a_bug_exits_1_with_one_line_and_keeps_its_traceback_in_a_file(tmp_path, monkeypatch):
    from evalkit.crashes import crash_dir

    result = _buggy_command(tmp_path, monkeypatch)
    assert result.exit_code == errors.UNEXPECTED_EXIT_CODE
    [kept] = crash_dir().iterdir()
    assert str(tmp_path) in str(kept)
    assert "Traceback" not in result.output
    assert f"unexpected error: IndexError: list index out of range\nits traceback is in {kept}" in result.output
    assert "Traceback (most recent call last)" in kept.read_text() and "[][0]" in kept.read_text()


def test_a_bug_under_an_unwritable_home_still_says_what_happened(tmp_path, monkeypatch):
    (tmp_path / ".cache").write_text("a file where the cache folder would be")
    result = _buggy_command(tmp_path, monkeypatch)
    assert result.exit_code == errors.UNEXPECTED_EXIT_CODE
    assert "unexpected error: IndexError" in result.output
    assert "rerun with --debug for the traceback" in result.output


@pytest.mark.parametrize("ending, code, said", [
    ("ctx.exit(0)", 0, ""),
    ("ctx.exit(14)", 14, ""),
    ("raise click.UsageError('no such option')", 2, "no such option"),
    ("raise SystemExit('a message')", 1, "a message"),
])
def test_a_program_ends_with_its_status_its_exit_handlers_run_and_its_output_flushed(tmp_path, ending, code, said):
    # the entry scripts end the process without the interpreter's teardown (cli._run_as_program):
    # nothing of a normal exit may be lost on the way
    program = tmp_path / "program.py"
    program.write_text(
        "import atexit, threading, time, click\n"
        "from evalkit.cli import _run_as_program\n"
        "atexit.register(lambda: print('exit handler ran', flush=True))\n"
        "late = threading.Thread(target=lambda: (time.sleep(0.2), print('thread ended')))\n"
        "@click.command()\n"
        "@click.pass_context\n"
        "def command(ctx):\n"
        "    late.start()\n"
        "    print('unflushed output', end='')\n"
        f"    {ending}\n"
        "_run_as_program(command, 'program')\n")
    import subprocess
    ran = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == code, ran.stderr
    assert ran.stdout.startswith("unflushed output") and "thread ended" in ran.stdout
    assert ran.stdout.rstrip().endswith("exit handler ran") and said in ran.stderr
