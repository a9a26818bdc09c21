"""Local records of runs started on a server, so `attach`, `logs`, `status` and `cancel` can find
them again later, from any terminal: RESULTS_DIR/runs/<run id>.json."""
from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .config import Settings
from .errors import UnknownRun
from .plan import Plan, Request
from .results import write_atomically


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    created_at: str
    settings: Settings
    request: Request        # as decided before the start (extraction skipped when reused, ...)
    label: str
    checkpoint: str
    server_run_dir: str

    def to_json(self) -> str:
        settings = dataclasses.asdict(self.settings)
        settings.pop("models")  # the registry is not needed to follow a run
        return json.dumps({"run_id": self.run_id, "created_at": self.created_at, "settings": settings,
                           "request": dataclasses.asdict(self.request), "label": self.label,
                           "checkpoint": self.checkpoint, "server_run_dir": self.server_run_dir},
                          ensure_ascii=False, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        data = json.loads(text)
        request = dict(data["request"], stages=tuple(data["request"]["stages"]))
        return cls(data["run_id"], data["created_at"], Settings(**data["settings"]), Request(**request),
                   data["label"], data["checkpoint"], data["server_run_dir"])


def new_run_id() -> str:
    """Sortable by time, unique, and safe in a path or a shell without quoting."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def new_record(settings: Settings, request: Request, plan: Plan, run_id: str, server_run_dir: str) -> RunRecord:
    return RunRecord(run_id, datetime.now().astimezone().isoformat(timespec="seconds"), settings, request,
                     plan.label, plan.checkpoint, server_run_dir)


def records_dir(results_dir: Path) -> Path:
    return results_dir / "runs"


def save(record: RunRecord) -> Path:
    path = records_dir(Path(record.settings.results_dir)) / f"{record.run_id}.json"
    return write_atomically(path, record.to_json().encode("utf-8"))


def load(results_dir: Path, run_id: str) -> RunRecord:
    path = records_dir(results_dir) / f"{run_id}.json"
    if "/" in run_id or not path.is_file():
        known = [record.run_id for record in newest(results_dir, 5)]
        raise UnknownRun(f"no run {run_id!r} in {records_dir(results_dir)}",
                         "python -m evalkit status lists the runs" + (f"; newest: {', '.join(known)}" if known else ""))
    return RunRecord.from_json(path.read_text(encoding="utf-8"))


def newest(results_dir: Path, count: int) -> list[RunRecord]:
    paths = sorted(records_dir(results_dir).glob("*.json"), reverse=True)[:count]
    records = []
    for path in paths:
        try:
            records.append(RunRecord.from_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a record from another version, or edited by hand
    return records
