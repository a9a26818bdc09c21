"""What each dataset folder on the server is laid out for, looked at once per command before any
cell is made (zeroshot.scoped decides, pure): label_cn.txt beside class folders is zero-shot
classification, anything else retrieval. Asked of the first run's starter, begun on the
connection the evaluations then use (pipeline.looking, starter.py look_early): one round trip,
with the scripts' check, and no shell of its own (a login shell runs ~/.bashrc: conda's hook
alone can take a second). Elsewhere (the doctor) one `find` on an exec channel."""
from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from .config import Settings
from .evaluation import SPLITS
from .zeroshot import Layout, looked_at

if TYPE_CHECKING:
    from .session import Session

LOOK_TIMEOUT = 60.0


def look(settings: Settings, datasets: list[str], session: "Session | None" = None) -> dict[str, Layout]:
    """Dataset name -> its Layout, for each of DATASETS; on SESSION, else on the connection the
    command's evaluations will take."""
    wanted = {dataset: looked_at(settings, dataset) for dataset in dict.fromkeys(datasets)}
    paths = [path for paths in wanted.values() for path in paths.values()]
    if session is None:
        from .pipeline import looking  # the SSH side loads only when a command runs
        from .starter import Starter
        with looking(settings) as kept:  # the evaluations' connection, opened here, and their starter begun
            there = Starter.look_early(kept.connection, settings, paths)
            if there is None:
                there = existing(kept, paths)
    else:
        there = existing(session, paths)
    found = {}
    for dataset, paths in wanted.items():
        has_labels = paths["labels"] in there
        found[dataset] = Layout(dataset, has_labels, tuple(split for split in SPLITS
                                                           if has_labels and paths[split] in there))
    return found


def existing(session: "Session", paths: list[str]) -> set[str]:
    """Those of PATHS that exist on the server: one command (any login shell runs it); stats over
    SFTP where `find` cannot say."""
    exit_code, stdout, _ = session.capture(existing_command(paths), timeout=LOOK_TIMEOUT)
    if exit_code in (0, 1):  # 1: some are missing (find said so on stderr)
        return existing_from(stdout, paths)
    return {path for path in paths if session.size_of(path) is not None}


def existing_command(paths: list[str]) -> str:
    """`find` printing each of PATHS that exists, NUL-terminated (a relative one as ./PATH, which
    find cannot take for an option)."""
    return shlex.join(["find", *(_not_an_option(path) for path in paths), "-maxdepth", "0", "-print0"])


def existing_from(stdout: bytes, paths: list[str]) -> set[str]:
    printed = set(stdout.decode("utf-8", "surrogateescape").split("\0"))
    return {path for path in paths if _not_an_option(path) in printed}


def _not_an_option(path: str) -> str:
    return path if path.startswith("/") else f"./{path}"
