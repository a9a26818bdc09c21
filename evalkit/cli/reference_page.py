"""The CLI reference of the user guide (docs/cli.md), made from the click commands themselves,
so that it cannot drift: `python -m evalkit.cli.reference_page` rewrites it, and a test checks
that the committed page is what this makes."""
from __future__ import annotations

import sys
from pathlib import Path

import click

WIDTH = 100
PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
INTRO = """# CLI reference

Every command and option, as `--help` prints it (`-h` is the same). This page is generated from
the code by `python -m evalkit.cli.reference_page`; a test fails when it is out of date, so a
new option cannot go undocumented. The task pages of this guide say when to use which.
"""


def programs() -> list[tuple[str, click.Command]]:
    """Each command as a user types it: the two entry scripts, then `python -m evalkit`'s."""
    from . import evaluate_command, main, quick_command
    found = [("distillation_model_evaluation.py", evaluate_command), ("quick_evaluation.py", quick_command),
             ("python -m evalkit", main)]
    found += [(f"python -m evalkit {name}", command) for name, command in sorted(main.commands.items())]
    return found


def help_text(prog_name: str, command: click.Command) -> str:
    """COMMAND's --help at a fixed width, whatever the terminal."""
    # make_context applies the command's context settings (-h beside --help), as a real run does
    with command.make_context(prog_name, [], resilient_parsing=True, terminal_width=WIDTH,
                              max_content_width=WIDTH) as ctx:
        return command.get_help(ctx)


def render() -> str:
    sections, shown = [INTRO], {}
    for prog_name, command in programs():
        if command in shown:  # `python -m evalkit evaluate` is the entry script's command
            sections.append(f"## `{prog_name}`\n\nThe same command as `{shown[command]}`, above.\n")
            continue
        shown[command] = prog_name
        sections.append(f"## `{prog_name}`\n\n```text\n{help_text(prog_name, command)}\n```\n")
    return "\n".join(sections)


if __name__ == "__main__":
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE}", file=sys.stderr)
