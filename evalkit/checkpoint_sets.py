"""The checkpoints a sweep names, listed on the server where they live: one command for every
directory or glob of one evalkit command (remote/list_checkpoints.py, sent inline)."""
from __future__ import annotations

from .config import Settings
from .errors import RemoteStepFailed
from .evaluation import Wanted, checkpoint_path
from .progress import last_marked_json
from .server import CHECKPOINT_LISTER, ServerCall, in_server_env
from .sweep import CheckpointSet, Listed, choose, expanded, is_checkpoint_set, is_settled
from .uploads import script_source

MARKER = b"EVALKIT-CHECKPOINTS "


def patterns_of(settings: Settings, wanted: list[Wanted]) -> list[str]:
    """The absolute directories and globs among WANTED, each once."""
    return list(dict.fromkeys(checkpoint_path(settings.datapath, item.model_path) for item in wanted
                              if item.model_path and is_checkpoint_set(item.model_path)))


def expand(settings: Settings, wanted: list[Wanted]) -> tuple[list[Wanted], list[CheckpointSet]]:
    """WANTED with every directory or glob replaced by its checkpoints, in epoch order, each
    content once; no connection when there is none."""
    patterns = patterns_of(settings, wanted)
    if not patterns:
        return wanted, []
    sets = list_on_server(settings, patterns)
    return expanded(wanted, {found.pattern: found for found in sets}, settings.datapath), sets


def listing_command(settings: Settings, patterns: list[str]) -> str:
    source = script_source(CHECKPOINT_LISTER).decode("utf-8")
    return in_server_env(settings, ServerCall(settings.python, "-c", (source, *patterns)))


def list_on_server(settings: Settings, patterns: list[str]) -> list[CheckpointSet]:
    answer = ask_server(settings, patterns)
    return [choose(found["pattern"], found["kind"], found["searched"],
                   [Listed.from_dict(entry) for entry in found["files"]]) for found in answer["sets"]]


def settled_on_server(settings: Settings, patterns: list[str]) -> list[CheckpointSet]:
    """--watch: the complete checkpoints of each pattern (see sweep.is_settled); none yet is no error."""
    answer = ask_server(settings, patterns)
    sets = []
    for found in answer["sets"]:
        ready = [entry for entry in map(Listed.from_dict, found["files"])
                 if is_settled(entry, int(answer["now_ns"]), settings.watch_settle)]
        sets.append(choose(found["pattern"], found["kind"], found["searched"], ready) if ready
                    else CheckpointSet(found["pattern"], found["searched"], ()))
    return sets


def ask_server(settings: Settings, patterns: list[str]) -> dict:
    from .pipeline import connected  # the SSH side loads only when a sweep needs it
    with connected(settings) as (session, _):
        exit_code, stdout, stderr = session.capture(listing_command(settings, patterns),
                                                    timeout=settings.step_timeout)
    answer = last_marked_json(stdout, MARKER)
    if answer is None:
        tail = (stderr or stdout).decode("utf-8", "replace").strip().splitlines()[-5:]
        raise RemoteStepFailed(f"listing the checkpoints of {', '.join(patterns)} failed (status {exit_code}): "
                               + " / ".join(tail), "check the `activate` and `python` settings "
                                                   "(python -m evalkit doctor)")
    return answer
