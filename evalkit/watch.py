"""--watch: evaluation while training. The checkpoints directory (or glob) is looked at every
`watch_interval` seconds; each complete checkpoint (sweep.is_settled) whose cells are not
unchanged since they were evaluated (unchanged.py: the record sweeps keep too, across restarts)
is evaluated on every dataset split, and the comparison shown after each look is made of that
look's cells only. It ends with --until-epoch N once a checkpoint holding epoch N or later has
been evaluated, or on Ctrl-C (the running evaluation's remote run is cancelled, as for any run).

A look that fails (the server gone, the listing broken) is reported and tried again at the next
interval; a cell that failed is said at once, the watch goes on, and it is tried again only once
its checkpoint or dataset changes. The watch returns the failed rows, so that its end can say so.
"""
from __future__ import annotations

import time
from typing import Callable

from .checkpoint_sets import patterns_of, settled_on_server
from .comparison import ModelResult
from .config import Settings
from .errors import ConnectError, ConnectionLost, EvalkitError
from .evaluation import Evaluation, Scope, Wanted
from .sweep import Listing, cell_state, cells, expanded, reached
from .unchanged import kept_rows

CellsRunner = Callable[[list[Evaluation], Listing], list[ModelResult]]
# this look's cells, each with its row (evaluated now, kept, or failed at an earlier look)
RowsShower = Callable[[list[tuple[Evaluation, ModelResult]]], None]


def watch(settings: Settings, scopes: list[Scope], wanted: list[Wanted], until_epoch: int | None,
          run_cells: CellsRunner, show: RowsShower, note: Callable[[str], None],
          sleep: Callable[[float], None] = time.sleep, reevaluate: bool = False) -> list[ModelResult]:
    """Evaluate each new or changed complete checkpoint with RUN_CELLS (which remembers each
    cell evaluated), SHOW the look's rows, look again after `watch_interval` seconds; return the
    rows that failed once a checkpoint of UNTIL_EPOCH or later was evaluated. REEVALUATE: the
    first look takes every complete checkpoint."""
    patterns = patterns_of(settings, wanted)
    failed: dict[Evaluation, tuple[dict | None, ModelResult]] = {}  # with the cell's state when it failed
    failures: list[ModelResult] = []
    said: set[str] = set()
    first = True
    while True:
        listing = look(settings, patterns, scopes, note, retry_any=not first)
        first = False
        if listing is None:
            sleep(settings.watch_interval)
            continue
        say_skipped(listing, note, said)
        every = cells(settings.datapath, scopes, expanded(wanted, {found.pattern: found for found in listing.sets},
                                                          settings.datapath))
        states = {cell: cell_state(settings, cell, listing) for cell in every}
        kept = {} if reevaluate else kept_rows(settings, every, listing, states)
        reevaluate = False
        todo = [cell for cell in every if cell not in kept and not (cell in failed and failed[cell][0] == states[cell])]
        ran = dict(zip(todo, run_cells(todo, listing))) if todo else {}
        for cell, row in ran.items():
            if not row.ok:
                failed[cell] = (states[cell], row)
                failures.append(row)
        if ran:
            show([(cell, ran.get(cell) or kept.get(cell) or failed[cell][1])
                  for cell in every if cell in ran or cell in kept or cell in failed])
            if any(not row.ok for row in ran.values()):
                note("the watch goes on: a failed checkpoint is evaluated again once it changes, and the watch "
                     "exits 14 at its end")
        if reached(listing, until_epoch):
            return failures
        done = len({cell.checkpoint for cell in every})
        note(f"{done} complete checkpoint{'s' if done != 1 else ''} evaluated; looking again in "
             f"{settings.watch_interval:g} s (Ctrl-C ends the watch)")
        sleep(settings.watch_interval)


def look(settings: Settings, patterns: list[str], scopes: list[Scope], note: Callable[[str], None],
         retry_any: bool) -> Listing | None:
    """The complete checkpoints now, or None (said) when the look failed: a lost connection at
    any look, any other failure after the first look (the first one's is the user's to fix)."""
    try:
        return settled_on_server(settings, patterns, scopes)
    except (ConnectError, ConnectionLost) as lost:
        failure = lost
    except EvalkitError as broken:
        if not retry_any:
            raise
        failure = broken
    note(f"could not look at the checkpoints ({failure.message}); looking again in "
         f"{settings.watch_interval:g} s")
    return None


def say_skipped(listing: Listing, note: Callable[[str], None], said: set[str]) -> None:
    """Each file the server could not list, said once per watch."""
    for found in listing.sets:
        for skipped in found.skipped:
            if skipped not in said:
                said.add(skipped)
                note(f"skipped {skipped}")
