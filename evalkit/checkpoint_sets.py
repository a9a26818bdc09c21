"""The checkpoints a sweep names, listed on the server where they live: one command for every
directory or glob of one evalkit command, which also describes the dataset split files of its
cells (remote/list_checkpoints.py, sent inline)."""
from __future__ import annotations

import json
import posixpath

from .config import Settings
from .errors import RemoteStepFailed
from .evaluation import Scope, Wanted, checkpoint_path
from .progress import last_marked_json
from .server import CHECKPOINT_LISTER, ServerCall, in_server_env, scripts_dir
from .sweep import CheckpointSet, Listed, Listing, choose, dataset_files, expanded, is_checkpoint_set, is_settled, \
    without_aliases
from .uploads import script_source

MARKER = b"EVALKIT-CHECKPOINTS "
# in the server's .evalkit folder: each file's identity (device, inode, size, mtime, ctime) -> the
# epoch, step and digests read from it, so that an unchanged file is not read again
FACTS_CACHE = "checkpoint-facts.json"


def patterns_of(settings: Settings, wanted: list[Wanted]) -> list[str]:
    """The absolute directories and globs among WANTED, each once."""
    return list(dict.fromkeys(checkpoint_path(settings.datapath, item.model_path) for item in wanted
                              if item.model_path and is_checkpoint_set(item.model_path)))


def expand(settings: Settings, wanted: list[Wanted], scopes: list[Scope],
           will_evaluate: bool = True) -> tuple[list[Wanted], Listing]:
    """WANTED with every directory or glob replaced by its checkpoints, in epoch order, each
    content once, and what the listing saw; no connection when there is no directory or glob.
    WILL_EVALUATE: evaluations follow on the listing's connection (not a dry run)."""
    patterns = patterns_of(settings, wanted)
    if not patterns:
        return wanted, Listing()
    answer = ask_server(settings, patterns, dataset_files(settings, scopes), will_evaluate)
    sets = tuple(choose(found["pattern"], found["kind"], found["searched"],
                        [Listed.from_dict(entry) for entry in found["files"]], skipped_of(found))
                 for found in answer["sets"])
    return expanded(wanted, {found.pattern: found for found in sets}, settings.datapath), \
        Listing(sets, answer.get("files") or {})


def settled_on_server(settings: Settings, patterns: list[str], scopes: list[Scope]) -> Listing:
    """--watch: the complete checkpoints of each pattern (see sweep.is_settled); none yet is no error."""
    answer = ask_server(settings, patterns, dataset_files(settings, scopes))
    sets = []
    for found in answer["sets"]:
        ready = [entry for entry in map(Listed.from_dict, found["files"])
                 if is_settled(entry, int(answer["now_ns"]), settings.watch_settle)]
        sets.append(without_aliases(CheckpointSet(found["pattern"], found["searched"], (),
                                                  skipped=skipped_of(found)), ready))
    return Listing(tuple(sets), answer.get("files") or {})


def skipped_of(found: dict) -> tuple[str, ...]:
    """What the server could not list in one set, one clause each: a file that vanished or
    cannot be read, a name that is not UTF-8."""
    return tuple(f"{entry.get('path')}: {entry.get('why')}" for entry in found.get("skipped") or ()
                 if isinstance(entry, dict))


def listing_command(settings: Settings, patterns: list[str], files: list[str]) -> str:
    source = script_source(CHECKPOINT_LISTER).decode("utf-8")
    cache = posixpath.join(scripts_dir(settings), FACTS_CACHE)
    return in_server_env(settings, ServerCall(settings.python, "-c",
                                              (source, cache, json.dumps(files, ensure_ascii=False), *patterns)))


def ask_server(settings: Settings, patterns: list[str], files: list[str], will_evaluate: bool = True) -> dict:
    from .pipeline import looking  # the SSH side loads only when a sweep needs it
    with looking(settings, will_evaluate) as session:  # the evaluations' connection, opened here
        exit_code, stdout, stderr = session.capture(listing_command(settings, patterns, files),
                                                    timeout=settings.step_timeout)
    answer = last_marked_json(stdout, MARKER)
    if answer is None:
        tail = (stderr or stdout).decode("utf-8", "replace").strip().splitlines()[-5:]
        raise RemoteStepFailed(f"listing the checkpoints of {', '.join(patterns)} failed (status {exit_code}): "
                               + " / ".join(tail), "check the `activate` and `python` settings "
                                                   "(python -m evalkit doctor)")
    return answer
