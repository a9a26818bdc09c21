"""PURE: evalkit's own lines as a terminal shows them: broken at spaces at its width, never inside a
word or a path; the same warning for several rows said once, naming them."""
from __future__ import annotations

import re
import unicodedata

SPACES = re.compile(r"( +)")


def display_width(text: str) -> int:
    """Columns TEXT takes in a terminal: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def wrap_words(text: str, width: int, indent: str = "  ") -> list[str]:
    """TEXT in lines of at most WIDTH columns, broken only at spaces; the lines after the first begin
    with INDENT. A word or path longer than a line is a line of its own, whole, for copy and paste
    (the terminal folds it)."""
    lines: list[str] = []
    line = ""
    for space, word in _words(text):
        if not line.strip() or display_width(line + space + word) <= width:
            line += space + word
        else:
            lines.append(line)
            line = indent + word
    return lines + [line]


def _words(text: str) -> list[tuple[str, str]]:
    """(the spaces before it, word) pairs; a path's parts split by a space stay one word, and so do
    a leading mark ('·', '✓') and the word after it."""
    parts = SPACES.split(text)
    words = [("", parts[0])] + list(zip(parts[1::2], parts[2::2]))
    joined: list[tuple[str, str]] = []
    for space, word in words:
        if joined and space == " " and (_continues_path(joined[-1][1], word) or _is_mark(joined)):
            joined[-1] = (joined[-1][0], f"{joined[-1][1]} {word}")
        else:
            joined.append((space, word))
    return joined


def _is_mark(joined: list[tuple[str, str]]) -> bool:
    return len(joined) == 1 and len(joined[0][1]) == 1 and not joined[0][1].isalnum()


def _continues_path(before: str, word: str) -> bool:
    """'/data/实验' then 'sweep/ckpt/epoch_1.pt': one path with a space in it."""
    is_path = before.startswith(("/", "~")) or " /" in before or " ~" in before
    return is_path and "/" in before.split(" ")[-1] and "/" in word and not word.startswith(("/", "~", "("))


def named_rows(labels: list[str]) -> str:
    """'exp@epoch_1, @epoch_2, @epoch_3, team': an experiment's label after its first is its @epoch."""
    named, experiment = [], None
    for label in labels:
        before, at, after = label.rpartition("@")
        named.append(f"@{after}" if at and before == experiment else label)
        experiment = before if at else None
    return ", ".join(named)


def said_once(rows: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    """'warning: LABELS: WARNING' once per distinct warning of ROWS ((label, its warnings) in order),
    naming every row that has it."""
    labels_of: dict[str, list[str]] = {}
    for label, warnings in rows:
        for warning in warnings:
            labels_of.setdefault(warning, []).append(label)
    return [f"warning: {named_rows(labels)}: {warning}" for warning, labels in labels_of.items()]
