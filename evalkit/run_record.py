"""The local record of a run started on a server: what `attach`, `logs`, `status` and `cancel`
need to find and follow it again later, from any terminal (kept by store.LocalStore)."""
from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass

from . import clock
from .config import Settings, slurm_settings
from .evaluation import Evaluation
from .plan import Plan


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    created_at: str
    settings: Settings
    evaluation: Evaluation  # as decided before the start (extraction skipped when reused, ...)
    plan: Plan              # the steps the server runs: followed, cancelled and read by these
    server_run_dir: str
    state: str = "started"  # "starting" while evalkit launches it: saved first, so it can always be found

    @property
    def label(self) -> str:
        return self.plan.label

    @property
    def checkpoint(self) -> str:
        return self.plan.checkpoint

    def to_json(self) -> str:
        settings = dataclasses.asdict(self.settings)
        settings.pop("models")  # the registry is not needed to follow a run
        return json.dumps({"run_id": self.run_id, "created_at": self.created_at, "settings": settings,
                           "evaluation": dataclasses.asdict(self.evaluation), "plan": self.plan.to_dict(),
                           "server_run_dir": self.server_run_dir, "state": self.state},
                          ensure_ascii=False, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        """Raises ValueError, KeyError or TypeError for a record that is not one of this version's."""
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(data.get(key), dict) for key in ("settings", "evaluation",
                                                                                          "plan")):
            raise ValueError("not a run record: its settings, evaluation and plan must be mappings")
        if not isinstance(data["settings"].get("slurm") or {}, dict):
            raise ValueError("not a run record: its slurm settings must be a mapping")
        evaluation = dict(data["evaluation"], stages=tuple(data["evaluation"]["stages"]))
        settings = dict(data["settings"], slurm=slurm_settings(data["settings"].get("slurm") or {}))
        return cls(data["run_id"], data["created_at"], Settings(**settings), Evaluation(**evaluation),
                   Plan.from_dict(data["plan"]), data["server_run_dir"], data.get("state", "started"))


def new_run_id() -> str:
    """Sortable by time, unique, and safe in a path or a shell without quoting."""
    return f"{clock.name_stamp()}-{secrets.token_hex(3)}"


def new_record(settings: Settings, evaluation: Evaluation, plan: Plan, run_id: str, server_run_dir: str) -> RunRecord:
    return RunRecord(run_id, clock.timestamp(), settings, evaluation, plan, server_run_dir, state="starting")
