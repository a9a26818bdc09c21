"""PURE: which rows of a comparison cannot be compared with the others, and why.

Two rows compare only when their numbers were made the same way: the same images and texts
(the dataset's fingerprints), context length, precision, KNN mode, upstream scripts and top_k.
Each fact is compared with the value most rows share; a row that differs gets a footnote naming
the difference (without a majority, e.g. two rows, every row gets one). A row without provenance (evaluated before
evalkit recorded it) beside rows with one gets a footnote saying so, and is not refused for it.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # comparison.py builds its footnotes from here
    from .comparison import ModelResult

UNKNOWN = "no provenance recorded (evaluated by an older evalkit): comparability unknown"


def _dataset(provenance: dict) -> tuple | None:
    dataset = provenance.get("dataset") or {}
    found = (dataset.get("lmdb_fingerprint"), dataset.get("texts_sha256"))
    return None if None in found else found


def _setting(name: str) -> Callable[[dict], object]:
    return lambda provenance: (provenance.get("settings") or {}).get(name)


def _scripts(provenance: dict) -> tuple | None:
    hashes = provenance.get("upstream_scripts_sha256")
    return tuple(sorted(hashes.items())) if hashes else None


# (what differs, how to read it from a provenance, how to show a value)
FACTS: tuple[tuple[str, Callable[[dict], object], Callable[[object], str]], ...] = (
    ("dataset", _dataset, lambda value: f"images {value[0][:20]}…, texts {value[1][:12]}…"),
    ("context length", _setting("context_length"), str),
    ("precision", _setting("precision"), str),
    ("KNN", _setting("knn"), str),
    ("top_k", _setting("top_k"), str),
    ("upstream scripts", _scripts, lambda value: "sha256 " + ", ".join(f"{n} {h[:8] if h else '?'}" for n, h in value)),
)


def differences(results: list[ModelResult]) -> dict[str, list[str]]:
    """label -> why its row is not comparable with the others (only rows that differ, and
    successful ones)."""
    rows = [r for r in results if r.ok and r.provenance]
    found: dict[str, list[str]] = {}
    for name, read, show in FACTS:
        values = {r.label: _comparable_value(read, r, rows) for r in rows}
        known = [value for value in values.values() if value is not None]
        if len(set(known)) < 2:
            continue
        common, count = Counter(known).most_common(1)[0]
        majority = common if count * 2 > len(known) else None  # on a tie, every row differs from the others
        for label, value in values.items():
            if value is None or value == majority:
                continue
            others = majority if majority is not None else next(v for v in known if v != value)
            found.setdefault(label, []).append(f"{name} {show(value)} (the others: {show(others)})")
    return found


def _comparable_value(read: Callable[[dict], object], result: ModelResult, rows: list[ModelResult]) -> object:
    """READ's value; upstream scripts only over the scripts every row ran (--knn fast skips two)."""
    value = read(result.provenance)
    if read is not _scripts or value is None:
        return value
    shared = set.intersection(*(set((r.provenance.get("upstream_scripts_sha256") or {})) for r in rows))
    return tuple((name, digest) for name, digest in value if name in shared) or None


def footnotes(results: list[ModelResult]) -> dict[str, list[str]]:
    """label -> every footnote of its row: its differences, or, beside rows that have one, that its
    provenance is unknown (a table of older results only is shown as before)."""
    notes = differences(results)
    if not any(result.ok and result.provenance for result in results):
        return notes
    for result in results:
        if result.ok and not result.provenance:
            notes.setdefault(result.label, []).append(UNKNOWN)
    return notes


def is_comparable(results: list[ModelResult]) -> bool:
    return not differences(results)
