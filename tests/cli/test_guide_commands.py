"""Every evalkit command the README and the user guide show parses with the commands as they
are: a renamed flag, a dropped option or a choice no longer offered fails here, not a reader."""
from __future__ import annotations

import click
import pytest

from evalkit.cli import evaluate_command, main, quick_command
from evalkit.testbed.guide_commands import REPO, blocks, invocations

PROGRAMS = {"distillation_model_evaluation.py": evaluate_command, "quick_evaluation.py": quick_command,
            "python -m evalkit": main}
SHOWN = [invocation for block in blocks() for invocation in invocations(block)]


def test_the_guide_shows_each_entry_point():
    assert {invocation.program for invocation in SHOWN} == set(PROGRAMS)
    assert len(SHOWN) >= 30


@pytest.mark.parametrize("invocation", SHOWN, ids=lambda i: f"{i.page}: {i.program} {' '.join(i.args)}"[:120])
def test_each_command_shown_parses(invocation, monkeypatch):
    monkeypatch.chdir(REPO)   # configs/seetacloud-v800.yaml, as a reader in the clone has it
    command, args = PROGRAMS[invocation.program], list(invocation.args)
    name = invocation.program
    if command is main:
        assert args and args[0] in main.commands, f"no command {args[:1]} in python -m evalkit"
        command, name, args = main.commands[args[0]], f"{name} {args[0]}", args[1:]
    try:
        command.make_context(name, args)
    except click.exceptions.Exit:   # --help, --version
        pass
    except click.UsageError as error:
        pytest.fail(f"{invocation.page}: `{name} {' '.join(invocation.args)}`: {error.format_message()}")
