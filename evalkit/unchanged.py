"""A sweep's cells that need no new run, and the record that tells them
(RESULTS_DIR/runs/evaluated-cells.json, kept by store.py): sweeps and --watch share it.

A cell is unchanged when it was evaluated before as the same cell (sweep.cell_key), all its
numbers were made of is as it was then (sweep.cell_state: the checkpoint's size, mtime and inode
and the dataset split's files, from the listing the sweep makes anyway; the commands planned),
and its local results are that run's, complete. Its row keeps that run's numbers, marked reused.
"""
from __future__ import annotations

import dataclasses

from . import clock
from .comparison import ModelResult
from .config import Settings
from .evaluation import Evaluation
from .store import LocalStore
from .sweep import Listing, cell_key, cell_state, is_unchanged


def kept_rows(settings: Settings, cells: list[Evaluation], listing: Listing,
              states: dict[Evaluation, dict | None] | None = None) -> dict[Evaluation, ModelResult]:
    """Each unchanged cell's kept row (the others are not in it). STATES: each cell's
    sweep.cell_state, when the caller has them already (each one plans the cell's commands)."""
    if not listing.sets:
        return {}  # checkpoint files named one by one: nothing listed, nothing known unchanged
    store = LocalStore.of(settings)
    if states is None:
        states = {cell: cell_state(settings, cell, listing) for cell in cells}
    found = {cell: kept_row(store, settings, cell, states[cell]) for cell in cells}
    return {cell: row for cell, row in found.items() if row is not None}


def kept_row(store: LocalStore, settings: Settings, cell: Evaluation, state: dict | None) -> ModelResult | None:
    """CELL's kept row when its record holds for STATE (its sweep.cell_state now)."""
    recorded = store.evaluated_cell(cell_key(settings, cell))
    if recorded is None or not is_unchanged(recorded, state):
        return None
    kept = store.kept_result(cell.dataset, cell.split, cell.label)
    # another run of this label since (a file evaluated alone, other options) has replaced its results
    if kept is None or kept.run_id != recorded.get("run_id") or kept.checkpoint != cell.checkpoint \
            or not store.has_result_files(cell.dataset, cell.split, cell.label, list(kept.recall)):
        return None
    return dataclasses.replace(kept, reused=True)


def remember(settings: Settings, cell: Evaluation, listing: Listing, result: ModelResult) -> None:
    """Record CELL as evaluated by RESULT's run, from what the listing saw before it ran."""
    state = cell_state(settings, cell, listing)
    if state is None or not result.ok or not result.run_id:
        return
    LocalStore.of(settings).remember_cell(cell_key(settings, cell),
                                          dict(state, run_id=result.run_id, evaluated_at=clock.timestamp()))
