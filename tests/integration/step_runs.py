"""What the step-by-step tests check of a run: its local results, its server directory and
manifest, and a refusal's one clean message."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .conftest import DatasetSpec

TEAM_LABEL = "muge_finetune_rn50_rbt3_team_distill"
RESULT_FILES = ("text_to_image_results.json", "image_to_text_results.json")


def assert_clean_failure(run: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert run.returncode == code, run.stderr + run.stdout
    assert "\nTraceback" not in "\n" + run.stderr
    assert run.stderr.startswith("error: ") and "\nfix: " in run.stderr
    for phrase in phrases:
        assert phrase in run.stderr, run.stderr


def results_of(bed, spec: DatasetSpec, label: str) -> dict[str, dict]:
    local = bed.results_dir / spec.name / spec.split / label
    return {name: json.loads((local / name).read_text()) for name in RESULT_FILES}


def no_results(bed) -> bool:
    """No result file was pulled (run records in runs/ and logs/ say what happened, and stay)."""
    return not any(p.is_file() and p.suffix == ".json" and p.relative_to(bed.results_dir).parts[0] != "runs"
                   for p in bed.results_dir.rglob("*"))


def server_dir_of(bed, spec: DatasetSpec) -> Path:
    [directory] = (bed.server_outputs / spec.name / spec.split).iterdir()
    return directory


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())
