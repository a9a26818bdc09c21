"""--image-to-image on the laptop side: its step, scripts and result in the plan; its numbers in
the summary, the table and the comparison; a skipped direction; and nothing of it when off."""
from __future__ import annotations

import dataclasses
import json
import shlex

import pytest
from rich.console import Console

from evalkit import view
from evalkit.comparison import ModelResult, build_comparison, to_csv, to_markdown
from evalkit.config import Settings, build_settings
from evalkit.errors import ConfigError, OutputsNotReady
from evalkit.evaluation import Evaluation
from evalkit.outcome import RunOutcome
from evalkit.plan import build_plan, directions, inspect_command, knn_commands
from evalkit.server import IMAGE_TO_IMAGE, SERVER_SCRIPTS, script_path, scripts_for
from evalkit.server_outputs import FileFacts, ServerFacts, check_predictions, predictions_reusable, with_knn
from evalkit.summary import ImageRecall, build_summary, parse_result, recalls

SETTINGS = Settings(datapath="/data", image_to_image=True)
CHECKPOINT = "/data/experiments/exp/checkpoints/epoch_latest.pt"
SCORES = {"r1": 40.0, "r5": 70.0, "r10": 80.0, "mean_recall": 63.333, "map10": 35.5, "num_queries": 120}
RESULT = {"success": True, "score": 63.333, "relevance": "shared_text", "scoreJson": {"score": 63.333, **SCORES}}
SKIPPED = {"success": True, "skipped": "image→image skipped: no text of /t.jsonl lists two images", "relevance":
           "shared_text", "scoreJson": {"num_queries": 0}}
UPSTREAM = {"success": True, "score": 50.0, "scoreJson": {"score": 50.0, "mean_recall": 50.0, "r1": 30.0, "r5": 50.0,
                                                           "r10": 70.0}}


def request(**overrides) -> Evaluation:
    return Evaluation(**{"dataset": "MUGE", "split": "valid", "checkpoint": CHECKPOINT, **overrides})


def argv_of(command: str) -> list[str]:
    return shlex.split(command.rsplit(" && ", 1)[1])


# --- the plan -----------------------------------------------------------------------------------

@pytest.mark.parametrize("knn, knn_steps", [
    ("upstream", ["knn_t2i", "knn_i2t", "knn_i2i", "check_predictions"]),
    ("fast", ["knn_fast", "knn_i2i", "check_predictions"]),
])
def test_one_knn_step_ranks_and_scores_image_to_image_from_the_image_features(knn, knn_steps):
    settings = dataclasses.replace(SETTINGS, knn=knn)
    plan = build_plan(settings, request())
    assert [step.name for step in plan.steps_of("knn")] == knn_steps
    [step] = [step for step in plan.steps if step.name == "knn_i2i"]
    assert step.directions == ("image_to_image",)
    argv = argv_of(step.command)
    assert argv[2] == script_path(settings, IMAGE_TO_IMAGE)
    assert argv[argv.index("--image-feats") + 1] == plan.files.image_feats
    assert argv[argv.index("--texts") + 1] == "/data/datasets/MUGE/valid_texts.jsonl"
    assert argv[argv.index("--labels") + 1] == "/data/datasets/MUGE/valid_imgs_labels.jsonl"
    assert argv[argv.index("--output") + 1] == plan.result_files["image_to_image"] == plan.files.i2i_result
    assert plan.files.i2i_result.endswith("/image_to_image_results.json")


def test_recall_pulls_the_image_to_image_result_and_knn_records_its_command():
    assert list(build_plan(SETTINGS, request(stages=("recall",))).result_files) == [
        "text_to_image", "image_to_text", "image_to_image"]
    assert "image_to_image" in knn_commands(SETTINGS, request())
    assert directions(SETTINGS, request(skip_text_to_image=True)) == ["image_to_text", "image_to_image"]


def test_the_check_after_knn_sees_the_result_file_but_requires_lines_only_of_predictions():
    check = next(step for step in build_plan(SETTINGS, request()).steps if step.name == "check_predictions")
    argv = argv_of(check.command)
    assert "i2i_result=image_to_image_results.json" in argv
    assert [argv[i + 1] for i, word in enumerate(argv) if word == "--require-complete"] == [
        "t2i_predictions", "i2t_predictions"]


def test_image_to_image_needs_its_script_and_fast_knn_beside_it():
    assert {IMAGE_TO_IMAGE, "fast_knn.py"} <= set(scripts_for(SETTINGS))
    assert IMAGE_TO_IMAGE in SERVER_SCRIPTS


def test_off_it_leaves_every_command_as_it_was():
    off, on = Settings(datapath="/data"), SETTINGS
    assert IMAGE_TO_IMAGE not in scripts_for(off)
    plan = build_plan(off, request())
    assert "image_to_image" not in plan.result_files and "knn_i2i" not in [s.name for s in plan.steps]
    assert "i2i_result" not in inspect_command(off, request())
    checks = ("verify", "check_predictions")  # evalkit's own file checks: they look at the result file too
    common = [s.command for s in build_plan(on, request()).steps if s.name not in ("knn_i2i", *checks)]
    assert common == [s.command for s in plan.steps if s.name not in checks]


# --- the config key and its checks ----------------------------------------------------------------

def test_the_config_key_is_a_boolean(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("image_to_image: true\n")
    assert build_settings(config, {}).image_to_image is True
    config.write_text("image_to_image: 'yes please'\n")
    with pytest.raises(ConfigError, match="'image_to_image' .* must be true or false"):
        build_settings(config, {})
    config.write_text("gpu: true\n")
    with pytest.raises(ConfigError, match="'gpu'"):
        build_settings(config, {})


# --- reuse: like KNN predictions ------------------------------------------------------------------

def facts_after_knn(result_fingerprint: dict) -> ServerFacts:
    files = {"i2i_result": FileFacts(**result_fingerprint, lines=1, partial_last_line=False)}
    manifest = {"features": {"image_feats": {"size": 1, "mtime_ns": 2}}, "knn": {}}
    facts = ServerFacts("/i", 10, None, "/t", 20, None, "/out", manifest, None, files)
    return dataclasses.replace(facts, manifest=with_knn(facts, {"image_to_image": "the i2i command"}, "now"))


def test_the_result_is_reused_only_when_the_same_command_wrote_it_from_these_features():
    facts = facts_after_knn({"size": 300, "mtime_ns": 5})
    assert predictions_reusable(facts, {"image_to_image": "the i2i command"})
    assert not predictions_reusable(facts, {"image_to_image": "another command"})
    touched = dataclasses.replace(facts, files={"i2i_result": FileFacts(301, 6, 1, False)})
    with pytest.raises(OutputsNotReady, match="image→image"):
        check_predictions(touched, ["image_to_image"])


# --- the result, the summary, the table, the comparison -------------------------------------------

def outcome_with(**results: dict) -> RunOutcome:
    outcome = RunOutcome(build_plan(SETTINGS, request()))
    outcome.results.update(results)
    return outcome


def test_the_summary_has_map10_and_the_query_count_beside_upstreams_recall():
    outcome = outcome_with(text_to_image=UPSTREAM, image_to_image=RESULT)
    summary = build_summary(outcome, request(), "host", None)
    assert summary["recall"]["image_to_image"] == SCORES
    assert summary["recall"]["text_to_image"] == {"r1": 30.0, "r5": 50.0, "r10": 70.0, "mean_recall": 50.0}
    assert "skipped" not in summary


def test_a_skipped_direction_is_a_success_with_its_sentence_and_no_numbers():
    raw = json.dumps(SKIPPED).encode()
    assert parse_result(raw, "/out/image_to_image_results.json", "image_to_image") == SKIPPED
    outcome = outcome_with(text_to_image=UPSTREAM, image_to_image=SKIPPED)
    assert list(recalls(outcome)) == ["text_to_image"]
    assert build_summary(outcome, request(), "host", None)["skipped"] == {"image_to_image": SKIPPED["skipped"]}


def test_the_table_has_a_third_row_with_map10():
    out = Console(record=True, width=200)
    out.print(view.recall_table("team", {"text_to_image": recalls(outcome_with(text_to_image=UPSTREAM))["text_to_image"],
                                         "image_to_image": ImageRecall(**SCORES)}))
    text = out.export_text()
    assert "mAP@10" in text
    assert [line.split("│")[1].strip() for line in text.splitlines() if "→" in line] == ["text→image", "image→image"]
    assert "35.50" in text


def model(label: str, image: dict | None) -> ModelResult:
    recall = {"text_to_image": {"r1": 30.0, "r5": 50.0, "r10": 70.0, "mean_recall": 50.0},
              "image_to_text": {"r1": 31.0, "r5": 51.0, "r10": 71.0, "mean_recall": 51.0}}
    return ModelResult(label, f"/c/{label}.pt", "ok", {**recall, **({"image_to_image": image} if image else {})})


def test_the_comparison_gets_an_image_to_image_column_group_in_every_format():
    team, baseline = model("team", SCORES), model("baseline", dict(SCORES, map10=30.0))
    comparison = build_comparison([team, baseline], "MUGE", "valid", "2026-01-01T00:00:00+00:00")
    assert comparison.to_dict()["models"][0]["delta"]["image_to_image"]["map10"] == pytest.approx(5.5)
    assert comparison.to_dict()["best"]["i2i_map10"] == ["team"]
    assert "| image→image R@1 | image→image R@5 | image→image R@10 | image→image MR | image→image mAP@10 |" \
        in to_markdown(comparison)
    assert "**35.50** (+5.50) |" in to_markdown(comparison)
    header = to_csv(comparison).splitlines()[0].split(",")
    i2i = ["i2i_r1", "i2i_r5", "i2i_r10", "i2i_mean_recall", "i2i_map10"]
    assert header[2 + 8:2 + 13] == i2i and header[-7:-2] == [f"delta_{key}" for key in i2i]


def test_without_image_to_image_numbers_the_comparison_is_as_before():
    comparison = build_comparison([model("team", None)], "MUGE", "valid", "2026-01-01T00:00:00+00:00")
    assert "image→image" not in to_markdown(comparison) and "i2i" not in to_csv(comparison)
    assert not any(key.startswith("i2i") for key in comparison.to_dict()["best"])
