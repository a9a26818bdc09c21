"""PURE: upstream's result JSONs read as recall, and the summary.json kept beside them."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import clock
from .errors import EvaluationFailed
from .evaluation import CLASSIFICATION, Evaluation
from .outcome import RunOutcome
from .traps import trap_warnings
from .plan import I2I_RESULT, I2T_RESULT, T2I_RESULT
from .significance import ci95_of, parse_query_hits

RESULT_FILE_NAMES = {"text_to_image": T2I_RESULT, "image_to_text": I2T_RESULT, "image_to_image": I2I_RESULT,
                     CLASSIFICATION: "zeroshot_classification_results.json"}


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


@dataclass(frozen=True)
class ImageRecall(Recall):
    """Image→image (remote/image_to_image.py): recall, mAP@10 (percent) and how many queries."""

    map10: float
    num_queries: int

    @classmethod
    def from_result(cls, result: dict) -> "ImageRecall":
        score = result["scoreJson"]
        return cls(score["r1"], score["r5"], score["r10"], score["mean_recall"], score["map10"],
                   score["num_queries"])


def recalls(outcome: RunOutcome) -> dict:
    """Each direction's numbers (zero-shot classification's under CLASSIFICATION); a skipped
    direction (no relevant pairs) has none."""
    from .zeroshot import Classification
    kinds = {"image_to_image": ImageRecall, CLASSIFICATION: Classification}
    return {direction: kinds.get(direction, Recall).from_result(result)
            for direction, result in outcome.results.items() if "skipped" not in result}


def skipped(outcome: RunOutcome) -> dict[str, str]:
    """Direction -> the sentence saying why it was skipped."""
    return {direction: result["skipped"] for direction, result in outcome.results.items() if "skipped" in result}


def parse_result(raw: bytes, path: str, direction: str) -> dict:
    """A result JSON, unless upstream says it failed: evaluation.py exits 0 even then."""
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise EvaluationFailed(f"{path} is not valid JSON", "rerun the evaluation") from exc
    if not isinstance(parsed, dict) or parsed.get("success") is not True:
        reason = parsed.get("errorMsg", "no reason given") if isinstance(parsed, dict) else "not an object"
        raise EvaluationFailed(f"upstream {direction} evaluation reported failure: {reason} ({path})",
                               "the predictions do not match the annotations: check the dataset "
                               "split, top_k (upstream evaluation requires 10) and the step output")
    return parsed


def build_summary(outcome: RunOutcome, evaluation: Evaluation, host: str, log_path: Path | None,
                  provenance: dict | None = None, run_id: str | None = None) -> dict:
    plan = outcome.plan
    summary = {
        "label": plan.label,
        # where the row belongs, from the evaluation itself (never re-parsed from the label)
        "experiment": evaluation.experiment,
        "epoch": evaluation.epoch,
        "step": evaluation.step,
        "run_id": run_id,
        "checkpoint": plan.checkpoint,
        "checkpoint_chosen_by": evaluation.chosen_by,
        "host": host,
        "dataset": evaluation.dataset,
        "split": evaluation.split,
        "task": evaluation.task,
        "vision_model": evaluation.vision_model,
        "text_model": evaluation.text_model,
        "server_output_dir": plan.output_dir,
        "recall": {direction: asdict(recall) for direction, recall in recalls(outcome).items()},
        **({"skipped": skipped(outcome)} if skipped(outcome) else {}),
        **_intervals(outcome),
        "steps": [{"name": s.name, "seconds": round(s.seconds, 3), "started_at": s.started_at,
                   "finished_at": s.finished_at, "command": s.command} for s in outcome.steps],
        "log": str(log_path) if log_path else None,
        "timestamp": clock.timestamp(),
    }
    if provenance is not None:  # what the numbers were made from, and the traps they fell into
        summary["provenance"] = provenance
        summary["warnings"] = trap_warnings(provenance, summary["recall"])
    return summary


def _intervals(outcome: RunOutcome) -> dict:
    """{"ci95": direction -> metric -> [low, high]} when the run wrote per-query hits."""
    found = ci95_of(parse_query_hits(outcome.raw_query_hits)) if outcome.raw_query_hits else None
    return {"ci95": found} if found else {}
