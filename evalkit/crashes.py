"""A bug's traceback, kept in a file of its own: a fault that shows once in fifty runs cannot be
reproduced by running again with --debug."""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path


def crash_dir() -> Path:
    return Path.home() / ".cache" / "evalkit" / "crashes"


def keep_traceback() -> Path | None:
    """The exception being handled, with the command line, in a new file under crash_dir(); None
    when that cannot be written (a read-only home must not hide the error itself)."""
    path = crash_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6:06d}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{' '.join(sys.argv)}\n\n{traceback.format_exc()}", encoding="utf-8")
    except OSError:
        return None
    return path


def where_it_is(kept: Path | None) -> str:
    return f"its traceback is in {kept}" if kept else "rerun with --debug for the traceback"
