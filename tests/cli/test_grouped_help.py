"""--help as a newcomer reads it: the evaluation's options under headings, each command with an
example to copy."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from evalkit.cli import doctor, evaluate_command, quick_command
from evalkit.cli.grouped_help import OPTION_GROUPS, OTHER
from evalkit.cli.reference_page import programs

GROUPED = {"distillation_model_evaluation.py": evaluate_command, "quick_evaluation.py": quick_command,
           "python -m evalkit doctor": doctor}


def help_of(command, prog_name: str) -> str:
    result = CliRunner().invoke(command, ["--help"], prog_name=prog_name, terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.stdout


def sections(text: str) -> dict[str, str]:
    """Each heading of the help (a line ending in ':' at column 0) and the lines under it."""
    found, title = {}, None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            title = line[:-1]
            found[title] = ""
        elif title:
            found[title] += line + "\n"
    return found


@pytest.mark.parametrize("prog_name", GROUPED)
def test_every_option_is_under_a_heading_of_its_own_kind(prog_name):
    shown = sections(help_of(GROUPED[prog_name], prog_name))
    assert OTHER not in shown, f"an option of {prog_name} has no group in OPTION_GROUPS:\n{shown[OTHER]}"
    assert [title for title in shown if title != "Usage: " + prog_name] == \
        [title for title, _ in OPTION_GROUPS if title in shown]


def test_the_evaluation_help_starts_with_what_to_evaluate_and_ends_with_output():
    shown = sections(help_of(evaluate_command, "distillation_model_evaluation.py"))
    assert list(shown)[:3] == ["What to evaluate", "The server", "Models and towers"]
    assert "--model-path" in shown["What to evaluate"] and "--host" in shown["The server"]
    assert "--vision-model" in shown["Models and towers"] and "--gpus" in shown["Running: GPUs, detach, executor"]
    assert "--reevaluate" in shown["Steps and reuse"] and "--watch" in shown["Sweeps and evaluation while training"]
    assert list(shown)[-1] == "Output" and "--json" in shown["Output"] and "-h, --help" in shown["Output"]


@pytest.mark.parametrize("prog_name,command", programs(), ids=[name for name, _ in programs()])
def test_every_command_shows_an_example(prog_name, command):
    text = help_of(command, prog_name)
    assert "Example:\n    python " in text
