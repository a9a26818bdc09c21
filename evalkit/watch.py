"""--watch: evaluation while training. The checkpoints directory (or glob) is looked at every
`watch_interval` seconds; each complete checkpoint (sweep.is_settled) whose cells are not
unchanged since they were evaluated (unchanged.py: the record sweeps keep too, across restarts)
is evaluated on every dataset split. It ends with --until-epoch N, or on Ctrl-C (the running
evaluation's remote run is cancelled, as for any run). A lost connection while looking is
reported and tried again at the next look."""
from __future__ import annotations

import time
from typing import Callable

from .checkpoint_sets import patterns_of, settled_on_server
from .comparison import ModelResult
from .config import Settings
from .errors import ConnectError, ConnectionLost
from .evaluation import Evaluation, Scope, Wanted
from .sweep import Listing, cells, expanded, reached
from .unchanged import kept_rows

CellsRunner = Callable[[list[Evaluation], Listing], list[ModelResult]]


def watch(settings: Settings, scopes: list[Scope], wanted: list[Wanted], until_epoch: int | None,
          run_cells: CellsRunner, note: Callable[[str], None], sleep: Callable[[float], None] = time.sleep,
          reevaluate: bool = False) -> None:
    """Evaluate each new or changed complete checkpoint with RUN_CELLS (which remembers each
    cell evaluated), look after `watch_interval` seconds, again; return once a checkpoint of
    UNTIL_EPOCH or later was evaluated. REEVALUATE: the first look takes every complete checkpoint."""
    patterns = patterns_of(settings, wanted)
    while True:
        try:
            listing = settled_on_server(settings, patterns, scopes)
        except (ConnectError, ConnectionLost) as lost:
            note(f"could not look at the checkpoints ({lost.message}); looking again in "
                 f"{settings.watch_interval:g} s")
            sleep(settings.watch_interval)
            continue
        todo = new_cells(settings, scopes, wanted, listing, reevaluate)
        reevaluate = False
        if todo:
            run_cells(todo, listing)
        done = [path for found in listing.sets for path in found.checkpoints]
        if reached(done, until_epoch):
            return
        note(f"{len(done)} complete checkpoint{'s' if len(done) != 1 else ''} evaluated; looking again in "
             f"{settings.watch_interval:g} s (Ctrl-C ends the watch)")
        sleep(settings.watch_interval)


def new_cells(settings: Settings, scopes: list[Scope], wanted: list[Wanted], listing: Listing,
              reevaluate: bool = False) -> list[Evaluation]:
    """The cells of the complete checkpoints not unchanged since they were evaluated (REEVALUATE: all)."""
    every = cells(settings.datapath, scopes, expanded(wanted, {found.pattern: found for found in listing.sets},
                                                      settings.datapath))
    kept = {} if reevaluate else kept_rows(settings, every, listing)
    return [cell for cell in every if cell not in kept]
