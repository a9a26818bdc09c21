"""--watch: evaluation while training. The checkpoints directory (or glob) is looked at every
`watch_interval` seconds; each complete checkpoint (sweep.is_settled) not yet evaluated as it
is now (the store's record, kept across restarts) is evaluated on every dataset split. It ends
with --until-epoch N, or on Ctrl-C (the running evaluation's remote run is cancelled, as for any
run). A lost connection while looking is reported and tried again at the next look."""
from __future__ import annotations

import time
from typing import Callable

from .checkpoint_sets import patterns_of, settled_on_server
from .comparison import ModelResult
from .config import Settings
from .errors import ConnectError, ConnectionLost
from .evaluation import Evaluation, Scope, Wanted
from .store import LocalStore
from .sweep import CheckpointSet, cells, expanded, reached

CellsRunner = Callable[[list[Evaluation]], list[ModelResult]]


def watch(settings: Settings, scopes: list[Scope], wanted: list[Wanted], until_epoch: int | None,
          run_cells: CellsRunner, note: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> None:
    """Evaluate each new or changed complete checkpoint with RUN_CELLS, look after
    `watch_interval` seconds, again; return once a checkpoint of UNTIL_EPOCH or later was evaluated."""
    store, patterns = LocalStore.of(settings), patterns_of(settings, wanted)
    while True:
        try:
            sets = settled_on_server(settings, patterns)
        except (ConnectError, ConnectionLost) as lost:
            note(f"could not look at the checkpoints ({lost.message}); looking again in "
                 f"{settings.watch_interval:g} s")
            sleep(settings.watch_interval)
            continue
        todo = new_cells(store, settings, scopes, wanted, sets)
        if todo:
            stats = _stats(sets)
            for evaluation, result in zip(todo, run_cells(todo)):
                if result.ok:
                    store.mark_watched(settings, evaluation, *stats[evaluation.checkpoint])
        done = [path for found in sets for path in found.checkpoints]
        if reached(done, until_epoch):
            return
        note(f"{len(done)} complete checkpoint{'s' if len(done) != 1 else ''} evaluated; looking again in "
             f"{settings.watch_interval:g} s (Ctrl-C ends the watch)")
        sleep(settings.watch_interval)


def new_cells(store: LocalStore, settings: Settings, scopes: list[Scope], wanted: list[Wanted],
              sets: list[CheckpointSet]) -> list[Evaluation]:
    """The cells of the complete checkpoints not yet evaluated as they are now."""
    stats = _stats(sets)
    every = cells(settings.datapath, scopes, expanded(wanted, {found.pattern: found for found in sets},
                                                      settings.datapath))
    return [cell for cell in every if not store.was_watched(settings, cell, *stats[cell.checkpoint])]


def _stats(sets: list[CheckpointSet]) -> dict[str, tuple[int, int]]:
    return {entry.path: (entry.size, entry.mtime_ns) for found in sets for entry in found.files}
