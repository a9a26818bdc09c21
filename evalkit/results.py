"""Results on the laptop: the upstream JSONs unchanged, a summary.json, written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .comparison import ModelResult, to_csv, to_markdown
from .errors import LocalWriteError
from .plan import I2T_RESULT, T2I_RESULT, Request

if TYPE_CHECKING:  # pipeline brings paramiko: kept out of `--help`'s start-up
    from .pipeline import RunOutcome

RESULT_FILE_NAMES = {"text_to_image": T2I_RESULT, "image_to_text": I2T_RESULT}


@dataclass(frozen=True)
class Recall:
    """One direction's recall, in percent, as upstream reports it."""

    r1: float
    r5: float
    r10: float
    mean_recall: float

    @classmethod
    def from_result(cls, result: dict) -> "Recall":
        score = result["scoreJson"]
        return cls(score["r1"], score["r5"], score["r10"], score["mean_recall"])


def local_result_dir(results_dir: Path, request: Request, label: str) -> Path:
    return results_dir / request.dataset / request.split / label


def recalls(outcome: RunOutcome) -> dict[str, Recall]:
    return {direction: Recall.from_result(result) for direction, result in outcome.results.items()}


def build_summary(outcome: RunOutcome, request: Request, host: str, log_path: Path | None) -> dict:
    plan = outcome.plan
    return {
        "label": plan.label,
        "checkpoint": plan.checkpoint,
        "host": host,
        "dataset": request.dataset,
        "split": request.split,
        "vision_model": request.vision_model,
        "text_model": request.text_model,
        "server_output_dir": plan.output_dir,
        "recall": {direction: asdict(recall) for direction, recall in recalls(outcome).items()},
        "steps": [{"name": s.name, "seconds": round(s.seconds, 3), "started_at": s.started_at,
                   "finished_at": s.finished_at, "command": s.command} for s in outcome.steps],
        "log": str(log_path) if log_path else None,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_results(outcome: RunOutcome, destination: Path, summary: dict) -> list[Path]:
    """Write the result JSONs byte for byte and summary.json; returns the paths written."""
    written = []
    for direction, raw in outcome.raw_results.items():
        written.append(write_atomically(destination / RESULT_FILE_NAMES[direction], raw))
    text = json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
    written.append(write_atomically(destination / "summary.json", text.encode("utf-8")))
    return written


def write_atomically(path: Path, data: bytes) -> Path:
    """Readers see the old file or the new one, never half of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        raise LocalWriteError(f"cannot write {path}: {exc.strerror or exc}",
                              "check the --results-dir location is writable") from exc
    return path


def save_comparison(document: dict, paths: dict[str, Path]) -> list[Path]:
    """comparison.json, .csv and .md, each written atomically."""
    texts = {"json": json.dumps(document, ensure_ascii=False, indent=2) + "\n",
             "csv": to_csv(document), "md": to_markdown(document)}
    return [write_atomically(paths[suffix], texts[suffix].encode("utf-8")) for suffix in ("json", "csv", "md")]


def load_evaluated(results_dir: Path, dataset: str | None = None,
                   split: str | None = None) -> dict[tuple[str, str], list[ModelResult]]:
    """Every label's latest summary.json under RESULTS_DIR, grouped by (dataset, split)."""
    found: dict[tuple[str, str], list[ModelResult]] = {}
    for path in sorted(results_dir.glob("*/*/*/summary.json")):
        label_dir = path.parent
        key = (label_dir.parent.parent.name, label_dir.parent.name)
        if (dataset and key[0] != dataset) or (split and key[1] != split):
            continue
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            result = ModelResult(label_dir.name, summary["checkpoint"], "ok", summary["recall"],
                                 finished_at=summary.get("timestamp"),
                                 server_output_dir=summary.get("server_output_dir"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not one of ours, or half-edited by hand: never block the others
        found.setdefault(key, []).append(result)
    return found


def in_registry_order(results: list[ModelResult], registry: list[str]) -> list[ModelResult]:
    """Registered models first, in the config's order (team, large, ...), then the rest by name."""
    rank = {name: index for index, name in enumerate(registry)}
    return sorted(results, key=lambda r: (rank.get(r.label, len(rank)), r.label))
