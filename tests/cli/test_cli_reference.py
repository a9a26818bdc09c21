"""The guide's CLI reference (docs/cli.md) is made from the commands, so a new flag without
documentation fails here: the committed page is what the generator makes, and it names every
option of every command with its default."""
from __future__ import annotations

import click
import pytest

from evalkit.cli.reference_page import PAGE, programs, render

COMMANDS = programs()


def test_the_committed_reference_is_what_the_commands_say():
    assert PAGE.read_text(encoding="utf-8") == render(), \
        "docs/cli.md is out of date: run python -m evalkit.cli.reference_page and commit it"


def section_of(prog_name: str) -> str:
    page = PAGE.read_text(encoding="utf-8")
    return page.split(f"## `{prog_name}`\n", 1)[1].split("\n## ", 1)[0]


def documented_section(command: click.Command) -> str:
    """The section holding COMMAND's help (a group's alias of an entry script points to it)."""
    first = next(name for name, found in COMMANDS if found is command)
    return section_of(first)


@pytest.mark.parametrize("prog_name,command", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_option_is_in_the_guide_with_its_help_and_default(prog_name, command):
    section = documented_section(command)
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        for flag in [*param.opts, *param.secondary_opts]:
            assert f"  {flag}" in section or f", {flag}" in section, f"{prog_name}: {flag} is not in docs/cli.md"
        assert param.help, f"{prog_name}: {param.opts[0]} has no help text"
        shown = param.show_default and param.default not in (None, False, ())
        if shown:
            default = param.default if isinstance(param.default, (str, int, float)) else ", ".join(param.default)
            assert f"default: {default}" in " ".join(section.split()), f"{prog_name}: {param.opts[0]}'s default"
