"""The plan: settings + request -> the exact upstream commands, quoted so no value can run code."""
from __future__ import annotations

import json
import os
import posixpath
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.config import Settings
from evalkit.evaluation import Evaluation, checkpoint_label, checkpoint_path
from evalkit.plan import CHECK_STEPS, I2T_RESULT, QUERY_HITS_STEP, T2I_RESULT, build_plan, dataset_paths

SEED_CHECKPOINT = "/root/autodl-tmp/datapath/experiments/exp/checkpoints/epoch_latest.pt"
# evalkit's per-query hits first among the recall steps: they run beside upstream's three
ALL_STEPS = ["prepare", "extract", "verify", "knn_t2i", "knn_i2t", "check_predictions", "query_hits", "recall_t2i",
             "transform", "recall_i2t"]
# upstream's scripts; query_hits.py is evalkit's own (tests/unit/test_query_hits.py)
PYTHON_STEPS = [name for name in ALL_STEPS if name not in ("prepare", *CHECK_STEPS, QUERY_HITS_STEP)]


def request(**overrides) -> Evaluation:
    """An evaluation as the CLI resolves it: MODEL_PATH relative to the default datapath."""
    values = {"dataset": "Flickr30k-CN", "split": "valid", "model_path": SEED_CHECKPOINT}
    values.update(overrides)
    return Evaluation(checkpoint=checkpoint_path(Settings().datapath, values.pop("model_path")), **values)


def steps_by_name(plan) -> dict:
    return {step.name: step for step in plan.steps}


def upstream_steps(plan) -> list:
    """The steps that run an upstream cn_clip/eval script (not evalkit's prepare and verify)."""
    return [step for step in plan.steps if step.name in PYTHON_STEPS]


def upstream_argv(command: str) -> list[str]:
    """The python invocation at the end of a step (benign settings only: split on the last &&)."""
    return shlex.split(command.rsplit(" && ", 1)[1])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --- checkpoint labels and paths ---------------------------------------------------------------

@pytest.mark.parametrize("checkpoint, label", [
    ("/root/autodl-tmp/datapath/experiments/distill_v3/checkpoints/epoch_latest.pt", "distill_v3"),
    ("/root/autodl-tmp/datapath/experiments/distill_v3/checkpoints/epoch_5.pt", "distill_v3@epoch_5"),
    ("/root/autodl-tmp/datapath/experiments/distill_v3/checkpoints/epoch_10.pt", "distill_v3@epoch_10"),
    ("/other/distill_v3/checkpoints/epoch_latest.pt", "distill_v3"),
    ("experiments/exp/checkpoints/epoch_latest.pt", "exp"),
    ("/a/b/model.pt", "model"),
    ("/a/b/model", "model"),
    ("/a/b/model.tar.gz", "model.tar"),
    ("model.pt", "model"),
    ("checkpoints/epoch_latest.pt", "epoch_latest"),     # no experiment directory above
    ("/a/checkpoints/epoch_3.pt", "a@epoch_3"),
    ("/checkpoints/epoch_latest.pt", "epoch_latest"),
    ("/a/中文实验/checkpoints/epoch_latest.pt", "中文实验"),
])
def test_checkpoint_label(checkpoint, label):
    assert checkpoint_label(checkpoint) == label


@pytest.mark.parametrize("checkpoint, label", [
    ("/d/experiments/team_distill/checkpoints/epoch_latest.pt", "team"),
    ("/d/experiments/team_distill/checkpoints/epoch_5.pt", "team@epoch_5"),
    ("/d/weights/model.pt", "team"),
])
def test_a_registry_name_stands_for_the_experiment(checkpoint, label):
    assert checkpoint_label(checkpoint, "team") == label


def test_epochs_of_one_experiment_and_its_namesake_elsewhere_never_share_a_label():
    from evalkit.evaluation import Scope, Wanted, resolve
    from evalkit.errors import ConfigError
    scope = Scope("Flickr30k-CN", "valid")
    epochs = [Wanted(f"/d/experiments/exp/checkpoints/epoch_{n}.pt", "RN50", "RBT3-chinese") for n in (5, 10)]
    labels = [e.label for e in resolve("/d", scope, [*epochs, Wanted("experiments/exp/checkpoints/epoch_latest.pt",
                                                                       "RN50", "RBT3-chinese")])]
    assert labels == ["exp@epoch_5", "exp@epoch_10", "exp"]
    elsewhere = Wanted("/other/exp/checkpoints/epoch_latest.pt", "RN50", "RBT3-chinese")
    with pytest.raises(ConfigError, match="two checkpoints would share the label 'exp': "
                                          "/d/experiments/exp/checkpoints/epoch_latest.pt and /other/exp"):
        resolve("/d", scope, [Wanted("experiments/exp/checkpoints/epoch_latest.pt", "RN50", "RBT3-chinese"),
                              elsewhere])
    renamed = resolve("/d", scope, [elsewhere.__class__(**{**elsewhere.__dict__, "label": "exp-other"})])
    assert renamed[0].label == "exp-other"


def test_labels_one_folder_apart_only_on_a_case_insensitive_disk_are_refused():
    # macOS: Exp@epoch_1 and exp@epoch_1 would be one results folder, one cell's results replacing the other's
    from evalkit.evaluation import Scope, Wanted, resolve
    from evalkit.errors import ConfigError
    scope = Scope("Flickr30k-CN", "valid")
    upper, lower = (Wanted(f"/d/experiments/{name}/checkpoints/epoch_1.pt", "RN50", "RBT3-chinese")
                    for name in ("Exp", "exp"))
    with pytest.raises(ConfigError) as raised:
        resolve("/d", scope, [upper, lower])
    assert raised.value.message == ("two checkpoints would share one results folder on a case-insensitive disk "
                                    "(macOS, Windows): 'Exp@epoch_1' and 'exp@epoch_1': "
                                    "/d/experiments/Exp/checkpoints/epoch_1.pt and /d/experiments/exp/checkpoints/epoch_1.pt")
    composed, decomposed = "实验é", "实验e\u0301"  # one name to macOS's disk
    with pytest.raises(ConfigError):
        resolve("/d", scope, [Wanted("/d/a.pt", "RN50", "RBT3-chinese", label=composed),
                              Wanted("/d/b.pt", "RN50", "RBT3-chinese", label=decomposed)])


@pytest.mark.parametrize("model_path, checkpoint", [
    ("experiments/e/checkpoints/epoch_latest.pt", "/root/autodl-tmp/datapath/experiments/e/checkpoints/epoch_latest.pt"),
    ("./experiments/e/../f/epoch_1.pt", "/root/autodl-tmp/datapath/experiments/f/epoch_1.pt"),
    ("model.pt", "/root/autodl-tmp/datapath/model.pt"),
    ("/abs/model.pt", "/abs/model.pt"),
    ("/abs//x/./model.pt", "/abs/x/model.pt"),
])
def test_relative_model_path_is_taken_under_datapath(model_path, checkpoint):
    assert checkpoint_path(Settings().datapath, model_path) == checkpoint


def test_relative_model_path_follows_the_configured_datapath():
    assert checkpoint_path("/data/", "m.pt") == "/data/m.pt"


def test_two_checkpoints_of_one_experiment_name_get_different_output_dirs():
    a = build_plan(Settings(), request(model_path="/x/experiments/e/checkpoints/epoch_latest.pt"))
    b = build_plan(Settings(), request(model_path="/y/experiments/e/checkpoints/epoch_latest.pt"))
    c = build_plan(Settings(), request(model_path="/x/experiments/e/checkpoints/epoch_2.pt"))
    assert (a.label, b.label, c.label) == ("e", "e", "e@epoch_2")
    assert len({a.output_dir, b.output_dir, c.output_dir}) == 3
    assert len({tuple(p.result_files.values()) for p in (a, b, c)}) == 3


def test_the_same_checkpoint_always_gets_the_same_output_dir():
    absolute = build_plan(Settings(), request(model_path=SEED_CHECKPOINT))
    relative = build_plan(Settings(), request(model_path="experiments/exp/checkpoints/epoch_latest.pt"))
    messy = build_plan(Settings(), request(model_path="/root/autodl-tmp//datapath/./experiments/exp/"
                                                      "checkpoints/epoch_latest.pt"))
    assert absolute.output_dir == relative.output_dir == messy.output_dir
    assert build_plan(Settings(), request()).output_dir == absolute.output_dir


@pytest.mark.parametrize("other", [{"dataset": "MUGE"}, {"split": "test"}])
def test_dataset_and_split_get_their_own_output_dirs(other):
    assert build_plan(Settings(), request()).output_dir != build_plan(Settings(), request(**other)).output_dir


def test_output_dir_is_under_output_root_and_names_the_checkpoint():
    plan = build_plan(Settings(), request())
    assert plan.output_dir.startswith("/root/autodl-tmp/datapath/evalkit/Flickr30k-CN/valid/exp-")
    moved = build_plan(Settings(remote_output_dir="/scratch/ev"), request())
    assert moved.output_dir.startswith("/scratch/ev/Flickr30k-CN/valid/exp-")


# --- steps ----------------------------------------------------------------------------------------

def test_steps_run_in_upstream_order():
    assert [step.name for step in build_plan(Settings(), request()).steps] == ALL_STEPS


@pytest.mark.parametrize("skips, names, results", [
    ({}, ALL_STEPS, {"text_to_image", "image_to_text"}),
    ({"skip_extraction": True}, [n for n in ALL_STEPS if n not in ("extract", "verify")],
     {"text_to_image", "image_to_text"}),
    ({"skip_text_to_image": True}, ["prepare", "extract", "verify", "knn_i2t", "check_predictions", "query_hits",
                                    "transform", "recall_i2t"], {"image_to_text"}),
    ({"skip_image_to_text": True}, ["prepare", "extract", "verify", "knn_t2i", "check_predictions", "query_hits",
                                    "recall_t2i"], {"text_to_image"}),
    ({"skip_extraction": True, "skip_image_to_text": True}, ["prepare", "knn_t2i", "check_predictions",
                                                            "query_hits", "recall_t2i"], {"text_to_image"}),
])
def test_skip_flags_remove_their_steps_and_results(skips, names, results):
    plan = build_plan(Settings(), request(**skips))
    assert [step.name for step in plan.steps] == names
    assert set(plan.result_files) == results
    # the per-query hits run beside upstream's recall steps, not after them
    assert [step.name for step in plan.steps if step.beside_rest] == ["query_hits"]


@pytest.mark.parametrize("stages, has_provenance", [(("extract", "knn", "recall"), True), (("recall",), True),
                                                    (("extract",), False), (("knn",), False)])
def test_the_provenance_is_hashed_beside_the_steps_when_recall_runs(stages, has_provenance):
    plan = build_plan(Settings(), request(stages=stages))
    beside = plan.beside_step("provenance")
    assert (beside is not None) == has_provenance
    assert "provenance" not in [step.name for step in plan.steps]
    if has_provenance:
        assert "provenance.py" in beside.command and "--checkpoint" in beside.command
        assert type(plan).from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize("settings, evaluation, last", [
    ({}, {}, "knn_i2t"),
    ({"knn": "fast"}, {}, "knn_fast"),
    ({"image_to_image": True}, {}, "knn_i2i"),
    ({}, {"skip_image_to_text": True}, "knn_t2i"),
    ({}, {"stages": ("extract",)}, "extract"),
    ({}, {"stages": ("recall",)}, None),  # the predictions exist: the CPU alone
])
def test_the_gpu_is_needed_until_the_last_extract_or_knn_step(settings, evaluation, last):
    """A queue's next evaluation on the GPU starts once this step has ended (gpu_lane.py): the
    checks, upstream's recall scripts and the per-query hits after it read files on the CPU."""
    plan = build_plan(Settings(**settings), request(**evaluation))
    assert plan.last_gpu_step == last
    names = [step.name for step in plan.steps]
    after = names[names.index(last) + 1:] if last else names
    assert not set(after) & {"extract", "knn_t2i", "knn_i2t", "knn_fast", "knn_i2i"}


def test_result_files_are_upstream_names_in_the_output_dir():
    plan = build_plan(Settings(), request())
    assert plan.result_files == {"text_to_image": posixpath.join(plan.output_dir, T2I_RESULT),
                                 "image_to_text": posixpath.join(plan.output_dir, I2T_RESULT)}


def test_prepare_removes_stale_results_before_anything_runs():
    plan = build_plan(Settings(), request())
    prepare = shlex.split(plan.steps[0].command)
    assert prepare[:3] == ["mkdir", "-p", plan.output_dir]
    rm = prepare.index("rm")
    assert prepare[rm:rm + 4] == ["rm", "-f", *plan.result_files.values()]


@pytest.mark.parametrize("skip_image_to_text, copies", [(False, True), (True, False)])
def test_prepare_copies_the_texts_only_when_image_to_text_needs_them(skip_image_to_text, copies):
    plan = build_plan(Settings(), request(skip_image_to_text=skip_image_to_text))
    _, texts = dataset_paths(Settings(), "Flickr30k-CN", "valid")
    words = shlex.split(plan.steps[0].command)
    assert ("cp" in words) is copies
    if copies:
        assert words[words.index("cp") + 1:] == [texts, posixpath.join(plan.output_dir, "valid_texts.jsonl")]


# --- upstream arguments ---------------------------------------------------------------------------

def test_extract_uses_upstream_extract_features_arguments():
    s = Settings(img_batch_size=48, text_batch_size=64, context_length=77)
    plan = build_plan(s, request(vision_model="ViT-L-14", text_model="RoBERTa-wwm-ext-large-chinese"))
    argv = upstream_argv(steps_by_name(plan)["extract"].command)
    images, texts = dataset_paths(s, "Flickr30k-CN", "valid")
    assert argv[:3] == ["python", "-u", "cn_clip/eval/extract_features.py"]
    assert "--extract-image-feats" in argv and "--extract-text-feats" in argv
    assert {name: option(argv, name) for name in (
        "--image-data", "--text-data", "--image-feat-output-path", "--text-feat-output-path",
        "--img-batch-size", "--text-batch-size", "--context-length", "--resume", "--vision-model",
        "--text-model")} == {
        "--image-data": images,
        "--text-data": texts,
        "--image-feat-output-path": f"{plan.output_dir}/valid_imgs.img_feat.jsonl",
        "--text-feat-output-path": f"{plan.output_dir}/valid_texts.txt_feat.jsonl",
        "--img-batch-size": "48", "--text-batch-size": "64", "--context-length": "77",
        "--resume": SEED_CHECKPOINT, "--vision-model": "ViT-L-14",
        "--text-model": "RoBERTa-wwm-ext-large-chinese"}
    assert images == "/root/autodl-tmp/datapath/datasets/Flickr30k-CN/lmdb/valid/imgs"
    assert texts == "/root/autodl-tmp/datapath/datasets/Flickr30k-CN/valid_texts.jsonl"


@pytest.mark.parametrize("step, script, output", [
    ("knn_t2i", "make_topk_predictions.py", "valid_predictions.jsonl"),
    ("knn_i2t", "make_topk_predictions_tr.py", "valid_tr_predictions.jsonl"),
])
def test_knn_uses_upstream_make_topk_arguments(step, script, output):
    plan = build_plan(Settings(top_k=20, eval_batch_size=1024), request())
    argv = upstream_argv(steps_by_name(plan)[step].command)
    assert argv == ["python", "-u", f"cn_clip/eval/{script}",
                    "--image-feats", f"{plan.output_dir}/valid_imgs.img_feat.jsonl",
                    "--text-feats", f"{plan.output_dir}/valid_texts.txt_feat.jsonl",
                    "--top-k", "20", "--eval-batch-size", "1024",
                    "--output", f"{plan.output_dir}/{output}"]


def test_recall_and_transform_use_upstream_positional_arguments():
    plan = build_plan(Settings(), request(split="test"))
    steps, out = steps_by_name(plan), plan.output_dir
    _, texts = dataset_paths(Settings(), "Flickr30k-CN", "test")
    assert upstream_argv(steps["recall_t2i"].command)[2:] == [
        "cn_clip/eval/evaluation.py", texts, f"{out}/test_predictions.jsonl", f"{out}/{T2I_RESULT}"]
    assert upstream_argv(steps["transform"].command)[2:] == [
        "cn_clip/eval/transform_ir_annotation_to_tr.py", "--input", f"{out}/test_texts.jsonl"]
    assert upstream_argv(steps["recall_i2t"].command)[2:] == [
        "cn_clip/eval/evaluation_tr.py", f"{out}/test_texts.tr.jsonl", f"{out}/test_tr_predictions.jsonl",
        f"{out}/{I2T_RESULT}"]


def test_output_dir_is_not_inside_the_dataset_directory():
    s = Settings()
    plan = build_plan(s, request())
    datasets = posixpath.join(s.datapath, "datasets") + "/"
    assert not plan.output_dir.startswith(datasets)
    assert not any(path.startswith(datasets) for path in plan.result_files.values())


def test_every_written_path_is_in_the_output_dir_and_only_inputs_point_into_the_dataset():
    s = Settings()
    plan = build_plan(s, request())
    steps = steps_by_name(plan)
    images, texts = dataset_paths(s, "Flickr30k-CN", "valid")
    inside = lambda path: path.startswith(plan.output_dir + "/")  # noqa: E731
    extract = upstream_argv(steps["extract"].command)
    assert inside(option(extract, "--image-feat-output-path"))
    assert inside(option(extract, "--text-feat-output-path"))
    for name in ("knn_t2i", "knn_i2t"):
        assert inside(option(upstream_argv(steps[name].command), "--output"))
    for name in ("recall_t2i", "recall_i2t"):
        assert inside(upstream_argv(steps[name].command)[-1])
    # transform_ir_annotation_to_tr.py writes beside its --input: that must be our copy
    assert inside(option(upstream_argv(steps["transform"].command), "--input"))
    dataset_dir = posixpath.join(s.datapath, "datasets", "Flickr30k-CN")
    mentions = [word for step in plan.steps for word in shlex.split(step.command.split(" && ")[-1])
                if dataset_dir in word]
    assert set(mentions) == {images, texts}, "the dataset is only ever read"


# --- device and GPU -------------------------------------------------------------------------------

def test_cpu_device_runs_every_script_through_the_launcher_in_fp32():
    s = Settings(device="cpu")
    plan = build_plan(s, request())
    assert plan.cpu_launcher == posixpath.join(s.output_root, ".evalkit", "cpu_launch.py")
    for step in upstream_steps(plan):
        argv = upstream_argv(step.command)
        assert argv[:3] == ["python", "-u", plan.cpu_launcher], step.name
        assert argv[3].startswith("cn_clip/eval/")
    extract = upstream_argv(steps_by_name(plan)["extract"].command)
    assert option(extract, "--precision") == "fp32"


def test_cuda_device_runs_scripts_directly_at_upstream_precision():
    plan = build_plan(Settings(device="cuda"), request())
    assert plan.cpu_launcher is None
    for step in upstream_steps(plan):
        argv = upstream_argv(step.command)
        assert argv[2].startswith("cn_clip/eval/"), step.name
        assert "--precision" not in argv
        assert not any("cpu_launch" in word for word in argv)


@pytest.mark.parametrize("gpu", [0, 3])
def test_every_script_sees_only_the_chosen_gpu(gpu):
    plan = build_plan(Settings(gpu=gpu), request())
    for step in upstream_steps(plan):
        assert f"CUDA_VISIBLE_DEVICES={gpu} " in step.command, step.name


def test_scripts_run_from_chinese_clip_dir_after_activation():
    plan = build_plan(Settings(), request())
    for step in upstream_steps(plan):
        assert step.command.startswith("cd /root/autodl-tmp/Chinese-CLIP && source /root/miniconda3/"
                                       "etc/profile.d/conda.sh && conda activate training && export "), step.name


# --- executing the commands: hostile values stay data --------------------------------------------

FAKE_UPSTREAM = r'''#!{python} -S
"""Stands in for python + Chinese-CLIP: logs its argv, checks inputs, writes upstream's outputs."""
import json, os, sys
argv = sys.argv[1:]
script_at = next(i for i, word in enumerate(argv) if word.startswith("cn_clip/eval/"))
script, args = argv[script_at][len("cn_clip/eval/"):], argv[script_at + 1:]
with open(os.environ["FAKE_UPSTREAM_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps({{"program": sys.argv[0], "argv": argv, "cwd": os.getcwd(),
                          "pythonpath": os.environ.get("PYTHONPATH"),
                          "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}}) + "\n")
opt = lambda name: args[args.index(name) + 1]
def need(*paths):
    for path in paths:
        if not os.path.exists(path):
            sys.exit("missing input: " + path)
def write(path, text="{{}}\n"):
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)
if script == "extract_features.py":
    need(opt("--image-data"), opt("--text-data"), opt("--resume"))
    write(opt("--image-feat-output-path")); write(opt("--text-feat-output-path"))
elif script.startswith("make_topk_predictions"):
    need(opt("--image-feats"), opt("--text-feats")); write(opt("--output"))
elif script == "transform_ir_annotation_to_tr.py":
    need(opt("--input")); write(opt("--input")[:-len(".jsonl")] + ".tr.jsonl")
elif script.startswith("evaluation"):
    need(args[0], args[1]); write(args[2], '{{"success": true}}\n')
else:
    sys.exit("unknown script " + script)
'''

HOSTILE = {
    "semicolon": "x; touch pwned",
    "command-substitution": "$(touch pwned)",
    "backticks": "`touch pwned`",
    "single-quote": "it's'; touch pwned; echo '",
    "double-quote": 'say "hi"; touch pwned; echo "',
    "newline": "line1\ntouch pwned",
    "spaces": "my  data set",
    "chinese": "中文 数据集",
    "variables": "$HOME${IFS}$(id)",
    "pipe-redirect-background": "a | tee pwned > pwned2 & b",
    "glob": "*",
    "leading-dash": "-rf",
}


class FakeServer:
    """A datapath, a Chinese-CLIP dir and a fake upstream in tmp_path; runs steps with bash -c."""

    def __init__(self, root: Path, hostile_field: str | None = None, hostile: str = "",
                 **settings) -> None:
        self.root = root
        value = lambda field, normal: hostile if hostile_field == field else normal  # noqa: E731
        datapath = root / "srv" / value("datapath", "datapath")
        clip = root / "srv" / value("chinese_clip_dir", "Chinese-CLIP")
        python = root / "bin" / value("python", "python-bin") / "python"
        self.checkpoint = root / "srv" / "experiments" / value("model_path", "exp") / "checkpoints" / "epoch_latest.pt"
        output = root / "srv" / "out" / value("remote_output_dir", "evalkit")
        self.dataset = value("dataset", "Flickr30k-CN")
        self.dataset_dir = datapath / "datasets" / self.dataset
        for directory in (clip, python.parent, self.checkpoint.parent, self.dataset_dir / "lmdb" / "valid" / "imgs"):
            directory.mkdir(parents=True, exist_ok=True)
        (self.dataset_dir / "lmdb" / "valid" / "imgs" / "data.mdb").write_bytes(b"lmdb")
        (self.dataset_dir / "valid_texts.jsonl").write_text('{"text_id": 1, "text": "一只猫"}\n', encoding="utf-8")
        self.checkpoint.write_bytes(b"ckpt")
        python.write_text(FAKE_UPSTREAM.format(python=sys.executable), encoding="utf-8")
        python.chmod(0o755)
        self.log = root / "upstream-calls.jsonl"
        self.cwd = root / "login-dir"
        self.cwd.mkdir()
        defaults = {"datapath": str(datapath), "chinese_clip_dir": str(clip), "python": str(python),
                    "activate": "true"}
        if hostile_field == "remote_output_dir":
            defaults["remote_output_dir"] = str(output)
        self.settings = Settings(**{**defaults, **settings})

    def run(self, plan) -> list[dict]:
        env = {**os.environ, "FAKE_UPSTREAM_LOG": str(self.log)}
        env.pop("PYTHONPATH", None)
        for step in plan.steps:
            if step.name in (*CHECK_STEPS, QUERY_HITS_STEP):
                continue  # evalkit's own scripts, run for real in test_stages.py and test_query_hits.py
            done = subprocess.run(["bash", "-c", step.command], cwd=self.cwd, env=env,
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, f"{step.name} failed: {done.stderr}\n$ {step.command}"
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]

    def snapshot_dataset(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.dataset_dir)): p.read_bytes() if p.is_file() else b"<dir>"
                for p in self.dataset_dir.rglob("*")}

    def injected_files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.name in ("pwned", "pwned2")]


@pytest.mark.parametrize("hostile", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("field", ["datapath", "dataset", "model_path", "chinese_clip_dir", "python",
                                   "remote_output_dir"])
def test_hostile_values_reach_upstream_literally_and_never_run(tmp_path, field, hostile):
    server = FakeServer(tmp_path, field, hostile)
    s = server.settings
    plan = build_plan(s, request(dataset=server.dataset, model_path=str(server.checkpoint)))
    before = server.snapshot_dataset()

    calls = server.run(plan)

    assert server.injected_files() == [], "a value was executed as shell code"
    assert [call["argv"][1] for call in calls] == [
        "cn_clip/eval/extract_features.py", "cn_clip/eval/make_topk_predictions.py",
        "cn_clip/eval/make_topk_predictions_tr.py", "cn_clip/eval/evaluation.py",
        "cn_clip/eval/transform_ir_annotation_to_tr.py", "cn_clip/eval/evaluation_tr.py"]
    for call in calls:
        assert call["program"] == s.python
        assert call["argv"][0] == "-u"
        assert call["cwd"] == s.chinese_clip_dir
        assert call["pythonpath"] == f"{s.chinese_clip_dir}:{s.chinese_clip_dir}/cn_clip"
        assert call["cuda"] == "0"
    extract = calls[0]["argv"]
    images, texts = dataset_paths(s, server.dataset, "valid")
    assert option(extract, "--image-data") == images
    assert option(extract, "--text-data") == texts
    assert option(extract, "--resume") == str(server.checkpoint)
    assert option(extract, "--image-feat-output-path") == f"{plan.output_dir}/valid_imgs.img_feat.jsonl"
    where_hostile_lands = {"datapath": images, "dataset": images, "model_path": option(extract, "--resume"),
                           "chinese_clip_dir": calls[0]["cwd"], "python": calls[0]["program"],
                           "remote_output_dir": option(extract, "--image-feat-output-path")}
    assert hostile in where_hostile_lands[field]
    for path in plan.result_files.values():
        assert json.loads(Path(path).read_text(encoding="utf-8")) == {"success": True}
    assert server.snapshot_dataset() == before, "the dataset directory was written to"


def test_running_the_plan_writes_nothing_into_the_dataset_directory(tmp_path):
    server = FakeServer(tmp_path)
    plan = build_plan(server.settings, request(model_path=str(server.checkpoint)))
    before = server.snapshot_dataset()
    server.run(plan)
    assert server.snapshot_dataset() == before
    assert sorted(p.name for p in Path(plan.output_dir).iterdir()) == sorted([
        "valid_imgs.img_feat.jsonl", "valid_texts.txt_feat.jsonl", "valid_predictions.jsonl",
        "valid_tr_predictions.jsonl", "valid_texts.jsonl", "valid_texts.tr.jsonl", T2I_RESULT, I2T_RESULT])


def test_rerun_removes_a_stale_result_before_the_steps(tmp_path):
    server = FakeServer(tmp_path)
    plan = build_plan(server.settings, request(model_path=str(server.checkpoint)))
    server.run(plan)
    stale = Path(plan.result_files["text_to_image"])
    stale.write_text('{"success": true, "stale": 1}', encoding="utf-8")
    prepare = subprocess.run(["bash", "-c", plan.steps[0].command], cwd=server.cwd)
    assert prepare.returncode == 0
    assert not stale.exists()


def test_cpu_plan_executes_with_the_launcher_and_gpu_setting(tmp_path):
    server = FakeServer(tmp_path, device="cpu", gpu=2)
    plan = build_plan(server.settings, request(model_path=str(server.checkpoint)))
    calls = server.run(plan)
    assert all(call["argv"][:2] == ["-u", plan.cpu_launcher] for call in calls)
    assert all(call["cuda"] == "2" for call in calls)
    assert option(calls[0]["argv"], "--precision") == "fp32"


def test_activate_runs_before_the_scripts_and_its_failure_stops_them(tmp_path):
    server = FakeServer(tmp_path, activate="false")
    plan = build_plan(server.settings, request(model_path=str(server.checkpoint)))
    extract = steps_by_name(plan)["extract"]
    done = subprocess.run(["bash", "-c", extract.command], cwd=server.cwd)
    assert done.returncode != 0
    assert not server.log.exists(), "upstream ran although activation failed"


LONG_EXPERIMENT = "蒸馏" * 45  # 90 Chinese characters: 270 bytes in UTF-8


def test_a_label_too_long_for_a_folder_name_is_refused_before_anything_runs():
    from evalkit.evaluation import Scope, Wanted, resolve
    from evalkit.errors import ConfigError
    checkpoint = f"/d/experiments/{LONG_EXPERIMENT}/checkpoints/epoch_latest.pt"
    with pytest.raises(ConfigError) as raised:
        resolve("/d", Scope("Flickr30k-CN", "valid"), [Wanted(checkpoint, "RN50", "RBT3-chinese")])
    assert raised.value.message == (f"the label {LONG_EXPERIMENT!r} of {checkpoint} is 270 bytes in UTF-8, "
                                    "and a results folder's name can be at most 255")
    assert "--label" in raised.value.hint
    [named] = resolve("/d", Scope("Flickr30k-CN", "valid"), [Wanted(checkpoint, "RN50", "RBT3-chinese", label="short")])
    assert named.label == "short"


@pytest.mark.parametrize("experiment", ["蒸" * 80, LONG_EXPERIMENT])
def test_names_evalkit_makes_from_a_long_experiment_name_fit_a_file_name(experiment, tmp_path):
    from evalkit.file_names import NAME_MAX
    from evalkit.plan import checkpoint_output_dir
    from evalkit.store import LocalStore
    checkpoint = f"/d/experiments/{experiment}/checkpoints/epoch_latest.pt"
    leaf = checkpoint_output_dir(Settings(datapath="/d"), "Flickr30k-CN", "valid", checkpoint).rsplit("/", 1)[1]
    log = LocalStore(tmp_path).new_log_path(Evaluation("Flickr30k-CN", "valid", checkpoint, label=experiment[:80]),
                                            experiment[:80]).name
    for name in (leaf, log):
        assert len(name.encode()) <= NAME_MAX and name.startswith(("Flickr30k-CN-valid-蒸", "蒸"))
    assert log.endswith(".log") and leaf[-9:-8] == "-"  # the checkpoint path's hash stays last
    other = checkpoint_output_dir(Settings(datapath="/d"), "Flickr30k-CN", "valid", checkpoint.replace("latest", "1"))
    assert other.rsplit("/", 1)[1] != leaf
