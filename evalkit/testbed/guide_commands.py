"""For the tests: the commands the README and the user guide show, read from their fenced shell
blocks (what a reader copies). Tests parse each with the real click commands (a renamed flag
fails) and run the blocks marked `<!-- demo: ... -->` against the demo server."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHELL_BLOCK = re.compile(r"^(?:(<!-- [^\n]*-->)\n)?```(?:bash|sh|console)\n(.*?)^```", re.M | re.S)
ENTRY_SCRIPTS = ("distillation_model_evaluation.py", "quick_evaluation.py")


@dataclass(frozen=True)
class Block:
    page: str          # the file, relative to the repository
    marker: str        # the HTML comment just above the block, or ""
    text: str


@dataclass(frozen=True)
class Invocation:
    page: str
    program: str       # "distillation_model_evaluation.py", "quick_evaluation.py" or "python -m evalkit"
    args: tuple[str, ...]


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks() -> list[Block]:
    found = []
    for page in pages():
        for match in SHELL_BLOCK.finditer(page.read_text(encoding="utf-8")):
            found.append(Block(str(page.relative_to(REPO)), match.group(1) or "", match.group(2)))
    return found


def invocations(block: Block) -> list[Invocation]:
    """Each call of evalkit in BLOCK, its arguments as the shell would split them (line
    continuations joined, comments dropped, pipes and && ending a call)."""
    text = block.text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        words = list(lexer)
        for start, word in enumerate(words):
            program, first = _program(words, start)
            if program:
                args = []
                for arg in words[first:]:
                    if arg in (";", "&&", "|", "||", "&"):
                        break
                    args.append(arg)
                found.append(Invocation(block.page, program, tuple(args)))
    return found


def _program(words: list[str], start: int) -> tuple[str, int]:
    word = words[start]
    if any(word.endswith(script) for script in ENTRY_SCRIPTS):
        return Path(word).name, start + 1
    if word.endswith("python") or word.endswith("python3"):
        if words[start + 1:start + 3] == ["-m", "evalkit"]:
            return "python -m evalkit", start + 3
    return "", start
