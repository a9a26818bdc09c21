"""Stages and their guard rails: which steps each --step plans, what the server's file check
reports, and when a stage may use the files an earlier one left (outputs.py)."""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.config import Settings
from evalkit.errors import MissingInput, OutputsNotReady
from evalkit.server_outputs import (FileFacts, ServerFacts, check_checkpoint, check_dataset, check_features,
                                    check_predictions, new_manifest, predictions_reusable, reuse_refusal, with_knn)
from evalkit.evaluation import Evaluation
from evalkit.plan import MANIFEST_NAME, build_plan, inspect_command
from evalkit.server import INSPECTOR as INSPECTOR_NAME, script_path as helper_path

CHECKPOINT = "/data/experiments/exp/checkpoints/epoch_latest.pt"
SETTINGS = Settings(datapath="/data")


def request(**overrides) -> Evaluation:
    return Evaluation(**{"dataset": "Flickr30k-CN", "split": "valid", "checkpoint": CHECKPOINT,
                         "vision_model": "RN50", "text_model": "RBT3-chinese", **overrides})


# --- which steps each stage plans --------------------------------------------------------------

@pytest.mark.parametrize("stages, names, results", [
    (("extract",), ["prepare", "extract", "verify"], []),
    (("knn",), ["prepare", "knn_t2i", "knn_i2t", "check_predictions"], []),
    (("recall",), ["prepare", "query_hits", "recall_t2i", "transform", "recall_i2t"],
     ["text_to_image", "image_to_text"]),
    (("extract", "knn", "recall"), ["prepare", "extract", "verify", "knn_t2i", "knn_i2t", "check_predictions",
                                    "query_hits", "recall_t2i", "transform", "recall_i2t"],
     ["text_to_image", "image_to_text"]),
])
def test_each_stage_plans_only_its_own_steps(stages, names, results):
    plan = build_plan(SETTINGS, request(stages=stages))
    assert [step.name for step in plan.steps] == names
    assert list(plan.result_files) == results


@pytest.mark.parametrize("overrides, removes_manifest", [
    ({"stages": ("extract",)}, True),
    ({}, True),
    ({"skip_extraction": True}, False),          # reused features keep their manifest
    ({"stages": ("knn",)}, False),
    ({"stages": ("recall",)}, False),
])
def test_only_an_extraction_removes_the_old_manifest_first(overrides, removes_manifest):
    # A manifest is rewritten only after a finished extraction, so one killed half way leaves none.
    plan = build_plan(SETTINGS, request(**overrides))
    assert (MANIFEST_NAME in plan.steps[0].command) is removes_manifest


@pytest.mark.parametrize("stages, copies", [(("extract",), False), (("knn",), False), (("recall",), True)])
def test_the_texts_are_copied_only_for_recall(stages, copies):
    assert ("cp " in build_plan(SETTINGS, request(stages=stages)).steps[0].command) is copies


def test_knn_steps_say_which_direction_they_serve_and_the_check_after_them_serves_none():
    plan = build_plan(SETTINGS, request(stages=("knn",)))
    assert [(step.name, step.directions) for step in plan.steps_of("knn")] == [
        ("knn_t2i", ("text_to_image",)), ("knn_i2t", ("image_to_text",)), ("check_predictions", ())]


@pytest.mark.parametrize("overrides, required", [
    ({}, ["t2i_predictions", "i2t_predictions"]),
    ({"skip_image_to_text": True}, ["t2i_predictions"]),
    ({"skip_text_to_image": True}, ["i2t_predictions"]),
])
def test_the_check_after_knn_requires_complete_predictions_of_the_planned_directions(overrides, required):
    check = build_plan(SETTINGS, request(**overrides)).steps_of("knn")[-1]
    argv = shlex.split(check.command.rsplit(" && ", 1)[1])
    assert [argv[i + 1] for i, word in enumerate(argv) if word == "--require-complete"] == required


@pytest.mark.parametrize("overrides, steps, writes", [
    ({}, ["knn_fast", "check_predictions"], ["--t2i-output", "--i2t-output"]),
    ({"skip_image_to_text": True}, ["knn_fast", "check_predictions"], ["--t2i-output"]),
    ({"skip_text_to_image": True}, ["knn_fast", "check_predictions"], ["--i2t-output"]),
])
def test_fast_knn_is_one_step_writing_upstreams_prediction_files(overrides, steps, writes):
    settings = dataclasses.replace(SETTINGS, knn="fast")
    plan = build_plan(settings, request(**overrides))
    assert [step.name for step in plan.steps_of("knn")] == steps
    knn = plan.steps_of("knn")[0]
    argv = shlex.split(knn.command.rsplit(" && ", 1)[1])
    assert argv[2] == helper_path(settings, "fast_knn.py")
    assert [word for word in argv if word.endswith("-output")] == writes
    if "--t2i-output" in writes:
        assert argv[argv.index("--t2i-output") + 1] == plan.files.t2i_predictions
    assert knn.directions == tuple(request(**overrides).directions)
    assert "recall_t2i" in [s.name for s in plan.steps] or "text_to_image" not in knn.directions


# --- the server's file check, run for real -----------------------------------------------------

HOSTILE = ["x; touch pwned", "$(touch pwned)", "`touch pwned`", "it's \"q\"", "a\nb; touch pwned", "空格 中文"]


def _fake_server(root: Path, dataset: str) -> Settings:
    datapath = root / "data"
    texts = datapath / "datasets" / dataset / "valid_texts.jsonl"
    (datapath / "datasets" / dataset / "lmdb" / "valid" / "imgs").mkdir(parents=True)
    texts.write_text('{"text_id": 1}\n{"text_id": 2}\n', encoding="utf-8")
    settings = Settings(datapath=str(datapath), python=sys.executable, activate="true")
    inspector = Path(helper_path(settings, INSPECTOR_NAME))
    inspector.parent.mkdir(parents=True)
    shutil.copy(Path(__file__).parents[2] / "evalkit" / "remote" / INSPECTOR_NAME, inspector)
    return settings


def _facts(settings: Settings, req: Evaluation, checkpoint: str | None, cwd: Path) -> dict:
    evaluation = dataclasses.replace(req, checkpoint=checkpoint or "")
    done = subprocess.run(["bash", "-c", inspect_command(settings, evaluation)], cwd=cwd,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("EVALKIT-FACTS ")]
    return json.loads(line.removeprefix("EVALKIT-FACTS "))


@pytest.mark.parametrize("hostile", HOSTILE)
def test_the_file_check_receives_hostile_values_as_text(tmp_path, hostile):
    dataset = hostile.replace("/", "_")
    settings = _fake_server(tmp_path, dataset)
    checkpoint = f"{settings.datapath}/experiments/{hostile}/epoch_latest.pt"
    facts = _facts(settings, request(dataset=dataset), checkpoint, tmp_path)
    assert facts["checkpoint"]["path"] == checkpoint and facts["checkpoint"]["exists"] is False
    assert facts["texts"]["count"] == 2
    assert not list(tmp_path.rglob("pwned"))


def test_the_file_check_counts_complete_lines_and_sees_a_partial_one(tmp_path):
    settings = _fake_server(tmp_path, "Flickr30k-CN")
    plan = build_plan(settings, request(checkpoint=str(tmp_path / "ckpt.pt")))
    Path(plan.output_dir).mkdir(parents=True)
    Path(plan.files.image_feats).write_text('{"image_id": 1}\n{"image_id": 2', encoding="utf-8")
    Path(plan.files.text_feats).write_text('{"text_id": 1}\n{"text_id": 2}\n', encoding="utf-8")
    facts = _facts(settings, request(), plan.checkpoint, tmp_path)
    assert facts["files"]["image_feats"]["lines"] == 1
    assert facts["files"]["image_feats"]["partial_last_line"] is True
    assert facts["files"]["text_feats"]["lines"] == 2
    assert facts["files"]["t2i_predictions"] is None


@pytest.mark.parametrize("predictions, exit_code, says", [
    ('{"text_id": 1}\n{"text_id": 2}\n', 0, "complete: text→image prediction file"),
    ('{"text_id": 1}\n', 3, "the text→image prediction file has 1 complete lines for 2 texts (is the disk full?)"),
    ('{"text_id": 1}\n{"text_', 3, "the text→image prediction file has 1 complete lines for 2 texts"),
])
def test_the_check_after_knn_passes_only_one_complete_line_per_query(tmp_path, predictions, exit_code, says):
    settings = _fake_server(tmp_path, "Flickr30k-CN")
    plan = build_plan(settings, request(checkpoint=str(tmp_path / "ckpt.pt"), skip_image_to_text=True))
    Path(plan.output_dir).mkdir(parents=True)
    Path(plan.files.t2i_predictions).write_text(predictions, encoding="utf-8")
    check = plan.steps_of("knn")[-1]
    done = subprocess.run(["bash", "-c", check.command], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == exit_code
    assert says in (done.stdout if exit_code == 0 else done.stderr)


def test_without_a_checkpoint_the_file_check_picks_the_newest_manifest_of_this_datapath(tmp_path):
    settings = _fake_server(tmp_path, "Flickr30k-CN")
    made = {}
    for name, when, datapath in (("old", "2026-01-01T00:00:00", settings.datapath),
                                 ("new", "2026-02-01T00:00:00", settings.datapath),
                                 ("other-datapath", "2026-03-01T00:00:00", "/elsewhere")):
        plan = build_plan(settings, request(checkpoint=f"/ckpt/{name}/checkpoints/epoch_latest.pt"))
        Path(plan.output_dir).mkdir(parents=True)
        Path(plan.manifest).write_text(json.dumps({"extracted_at": when, "datapath": datapath}))
        made[name] = plan.output_dir
    assert _facts(settings, request(checkpoint=""), None, tmp_path)["out_dir"] == made["new"]


# --- when a stage may use the files ------------------------------------------------------------

FEATURES = {"image_feats": FileFacts(100, 1, 20, False), "text_feats": FileFacts(200, 2, 80, False)}
CHECKPOINT_FACTS = {"path": CHECKPOINT, "exists": True, "readable": True, "size": 7, "mtime_ns": 9, "inode": "1:5"}
DATASET_STAMPS = {"images": {"size": 4096, "mtime_ns": 11}, "texts": {"size": 900, "mtime_ns": 12}}


def facts(manifest: dict | None = None, files: dict | None = None, **overrides) -> ServerFacts:
    values = dict(images_path="/data/imgs", image_count=20, images_problem=None,
                  texts_path="/data/valid_texts.jsonl", text_count=80, checkpoint=CHECKPOINT_FACTS,
                  out_dir="/out/exp-1", manifest=manifest, manifest_problem=None,
                  files=dict(FEATURES if files is None else files), dataset_files=DATASET_STAMPS)
    values.update(overrides)
    return ServerFacts(**values)


def extracted(**overrides) -> ServerFacts:
    """The facts right after a complete extraction, its manifest written."""
    before = facts(**overrides)
    manifest = new_manifest(SETTINGS, request(), before, "python extract_features.py", "2026-11-27T10:00:00")
    return dataclasses.replace(before, manifest=manifest)


def test_complete_unchanged_features_are_reused():
    assert reuse_refusal(SETTINGS, request(), extracted()) is None


@pytest.mark.parametrize("change, reason", [
    (lambda f: dataclasses.replace(f, manifest=None), "no earlier extraction"),
    (lambda f: dataclasses.replace(f, checkpoint={**CHECKPOINT_FACTS, "mtime_ns": 10}), "checkpoint changed"),
    (lambda f: dataclasses.replace(f, checkpoint={**CHECKPOINT_FACTS, "size": 8}), "checkpoint changed"),
    # replaced by mv or rsync -a: the same size and mtime, another file
    (lambda f: dataclasses.replace(f, checkpoint={**CHECKPOINT_FACTS, "inode": "1:6"}), "checkpoint changed"),
    (lambda f: dataclasses.replace(f, files={**FEATURES, "text_feats": None}), "text feature file is missing"),
    (lambda f: dataclasses.replace(f, files={**FEATURES, "image_feats": FileFacts(50, 1, 10, False)}),
     "image feature file is truncated: 10 complete lines for 20 images"),
    (lambda f: dataclasses.replace(f, files={**FEATURES, "image_feats": FileFacts(100, 1, 20, True)}),
     "image feature file is truncated"),
    (lambda f: dataclasses.replace(f, files={**FEATURES, "image_feats": FileFacts(101, 5, 20, False)}),
     "image feature file changed after evalkit extracted it"),
    (lambda f: dataclasses.replace(f, image_count=21), "truncated: 20 complete lines for 21 images"),
    # the split rewritten in place with the same counts: other texts, re-encoded images
    (lambda f: dataclasses.replace(f, dataset_files={**DATASET_STAMPS, "texts": {"size": 900, "mtime_ns": 13}}),
     "the dataset's texts file changed since the extraction"),
    (lambda f: dataclasses.replace(f, dataset_files={**DATASET_STAMPS, "images": {"size": 8192, "mtime_ns": 11}}),
     "the dataset's image LMDB (data.mdb) changed since the extraction"),
])
def test_features_are_extracted_again_when(change, reason):
    assert reason in reuse_refusal(SETTINGS, request(), change(extracted()))


def test_a_manifest_from_before_the_dataset_files_were_recorded_still_serves_its_features():
    old = extracted()
    manifest = {key: value for key, value in old.manifest.items() if key != "dataset_files"}
    assert reuse_refusal(SETTINGS, request(), dataclasses.replace(old, manifest=manifest)) is None


@pytest.mark.parametrize("different", [{"vision_model": "ViT-B-16"}, {"text_model": "RoBERTa-wwm-ext-base-chinese"}])
def test_other_models_are_not_served_old_features(different):
    assert "model changed" in reuse_refusal(SETTINGS, request(**different), extracted())


def test_another_context_length_is_not_served_old_features():
    other = dataclasses.replace(SETTINGS, context_length=64)
    assert "context length changed" in reuse_refusal(other, request(), extracted())


@pytest.mark.parametrize("state, phrase", [
    (facts(), "its feature files have no manifest"),        # an extraction killed half way
    (facts(files={}), "nothing has been extracted there yet"),
    (dataclasses.replace(facts(), manifest_problem="bad JSON"), "manifest in /out/exp-1 is unreadable"),
    (dataclasses.replace(extracted(), checkpoint={**CHECKPOINT_FACTS, "size": 8}), "changed after its features"),
    (dataclasses.replace(extracted(), checkpoint={**CHECKPOINT_FACTS, "inode": "1:6"}), "changed after its features"),
    (dataclasses.replace(extracted(), dataset_files={**DATASET_STAMPS, "texts": None}), "dataset's texts file changed"),
])
def test_knn_refuses_features_it_cannot_trust(state, phrase):
    with pytest.raises(OutputsNotReady) as info:
        check_features(state)
    assert phrase in info.value.message and info.value.hint


def test_a_manifest_from_before_inodes_were_recorded_is_judged_by_size_and_mtime():
    old = extracted()
    manifest = dict(old.manifest, checkpoint={key: value for key, value in old.manifest["checkpoint"].items()
                                              if key != "inode"})
    check_features(dataclasses.replace(old, manifest=manifest))  # no refusal


def test_knn_accepts_one_recorded_extraction_even_if_the_checkpoint_is_gone():
    check_features(dataclasses.replace(extracted(), checkpoint={"path": CHECKPOINT, "exists": False}))


PREDICTIONS = {"t2i_predictions": FileFacts(10, 3, 80, False), "i2t_predictions": FileFacts(20, 4, 20, False)}


def after_knn(**overrides) -> ServerFacts:
    state = dataclasses.replace(extracted(), files={**FEATURES, **PREDICTIONS})
    manifest = with_knn(state, {"text_to_image": "knn t2i", "image_to_text": "knn i2t"}, "later")
    return dataclasses.replace(state, manifest=manifest, **overrides)


def test_recall_accepts_predictions_made_from_the_current_features():
    check_predictions(after_knn(), ["text_to_image", "image_to_text"])


@pytest.mark.parametrize("state, phrase", [
    (extracted(), "no text→image KNN predictions"),
    (after_knn(files={**FEATURES, **PREDICTIONS, "t2i_predictions": None}), "no text→image KNN predictions"),
    (after_knn(files={**FEATURES, **PREDICTIONS, "i2t_predictions": FileFacts(5, 9, 3, True)}),
     "image→text predictions in /out/exp-1 changed or are incomplete"),
])
def test_recall_refuses_predictions_it_cannot_trust(state, phrase):
    with pytest.raises(OutputsNotReady) as info:
        check_predictions(state, ["text_to_image", "image_to_text"])
    assert phrase in info.value.message


PLANNED = {"text_to_image": "knn t2i", "image_to_text": "knn i2t"}


@pytest.mark.parametrize("state, planned, reusable", [
    (after_knn(), PLANNED, True),
    (after_knn(), {**PLANNED, "text_to_image": "knn t2i --top-k 20"}, False),   # another command
    (extracted(), PLANNED, False),                                            # no KNN yet
    (after_knn(files={**FEATURES, **PREDICTIONS, "t2i_predictions": FileFacts(11, 3, 80, False)}),
     PLANNED, False),                                                          # touched since
])
def test_a_second_run_reuses_knn_only_when_the_same_commands_made_untouched_predictions(state, planned,
                                                                                          reusable):
    assert predictions_reusable(state, planned) is reusable


def test_recall_refuses_predictions_made_from_older_features():
    state = after_knn()
    newer = {**state.manifest, "features": {"image_feats": {"size": 1, "mtime_ns": 1}}}
    with pytest.raises(OutputsNotReady, match="made from older features"):
        check_predictions(dataclasses.replace(state, manifest=newer), ["text_to_image"])


@pytest.mark.parametrize("state, phrase", [
    (facts(images_problem="missing"), "no image LMDB at /data/imgs"),
    (facts(text_count=None), "no texts file /data/valid_texts.jsonl"),
    (facts(images_problem="the LMDB has no num_images key"), "no num_images key"),
])
def test_a_split_that_is_not_there_is_named(state, phrase):
    with pytest.raises(MissingInput) as info:
        check_dataset(state, request())
    assert "split 'valid' of dataset 'Flickr30k-CN'" in info.value.message or "cannot count" in info.value.message
    assert phrase in info.value.message


@pytest.mark.parametrize("checkpoint, phrase", [
    ({"path": CHECKPOINT, "exists": False, "readable": False}, "checkpoint not found on the server"),
    ({**CHECKPOINT_FACTS, "readable": False}, "checkpoint is not readable"),
])
def test_a_missing_or_unreadable_checkpoint_is_named(checkpoint, phrase):
    with pytest.raises(MissingInput) as info:
        check_checkpoint(facts(checkpoint=checkpoint))
    assert phrase in info.value.message and CHECKPOINT in info.value.message


def test_the_manifest_records_inputs_counts_features_and_command():
    manifest = extracted().manifest
    assert manifest["checkpoint"] == {"path": CHECKPOINT, "size": 7, "mtime_ns": 9, "inode": "1:5"}
    assert (manifest["num_images"], manifest["num_texts"]) == (20, 80)
    assert manifest["features"] == {"image_feats": {"size": 100, "mtime_ns": 1},
                                    "text_feats": {"size": 200, "mtime_ns": 2}}
    assert manifest["commands"] == {"extract": "python extract_features.py"}
