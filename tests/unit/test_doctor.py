"""The doctor's conclusions: which towers a checkpoint holds, and what each server fact means.

The architecture table is checked against cn_clip's own model configs (copied unchanged from
cn_clip/clip/model_configs into tests/unit/model_configs); tests/integration checks the same
inference on state_dicts of the real upstream models.
"""
from __future__ import annotations

import ast
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit import diagnosis as doctor
from evalkit.architecture import infer_architecture, mismatch
from evalkit.config import TEXT_MODELS, VISION_MODELS, Settings
from evalkit.diagnosis import Check, ProbeRun
from evalkit.errors import AuthenticationError, ConfigError, ConnectError, HostKeyError, MissingInput
from evalkit.evaluation import Evaluation as Request
from evalkit.server import script_path as helper_path
from evalkit.uploads import bootstrap_source, script_digests

CONFIGS = Path(__file__).with_name("model_configs")
PROBE = Path(__file__).resolve().parents[2] / "evalkit" / "remote" / "doctor_probe.py"


# --- architecture inference, table-driven from the upstream configs ----------------------------

def upstream_state_dict(vision: str, text: str) -> dict[str, list[int]]:
    """The tensor shapes cn_clip's CLIP(**config) has (cn_clip/clip/model.py), as training saves them."""
    v = json.loads((CONFIGS / f"{vision}.json").read_text())
    t = json.loads((CONFIGS / f"{text}.json").read_text())
    width, embed, resolution = v["vision_width"], v["embed_dim"], v["image_resolution"]
    shapes: dict[str, list[int]] = {}
    if v["vision_patch_size"]:
        patch = v["vision_patch_size"]
        shapes.update({"visual.conv1.weight": [width, 3, patch, patch],
                       "visual.class_embedding": [width],
                       "visual.positional_embedding": [(resolution // patch) ** 2 + 1, width],
                       "visual.proj": [width, embed]})
        for layer in range(v["vision_layers"]):
            shapes[f"visual.transformer.resblocks.{layer}.ln_1.weight"] = [width]
    else:
        layers = ast.literal_eval(v["vision_layers"])
        shapes.update({"visual.conv1.weight": [width // 2, 3, 3, 3],
                       "visual.conv3.weight": [width, width // 2, 3, 3],
                       "visual.attnpool.positional_embedding": [(resolution // 32) ** 2 + 1, width * 32],
                       "visual.attnpool.c_proj.weight": [embed, width * 32]})
        for stage, blocks in enumerate(layers, start=1):
            for block in range(blocks):
                shapes[f"visual.layer{stage}.{block}.conv1.weight"] = [width * 2 ** (stage - 1), 1, 1, 1]
    hidden = t["text_hidden_size"]
    shapes.update({"bert.embeddings.word_embeddings.weight": [t["vocab_size"], hidden],
                   "text_projection": [hidden, embed], "logit_scale": []})
    for layer in range(t["text_num_hidden_layers"]):
        shapes[f"bert.encoder.layer.{layer}.intermediate.dense.weight"] = [t["text_intermediate_size"], hidden]
    return {f"module.{name}": shape for name, shape in shapes.items()}


@pytest.mark.parametrize("vision,text", list(itertools.product(VISION_MODELS, TEXT_MODELS)))
def test_every_upstream_model_is_recognised_from_its_shapes(vision, text):
    architecture = infer_architecture(upstream_state_dict(vision, text))
    assert (architecture.vision, architecture.text) == (vision, text)
    assert architecture.embed_dim == json.loads((CONFIGS / f"{vision}.json").read_text())["embed_dim"]
    assert mismatch(architecture, vision, text) is None


def test_every_upstream_config_is_one_evalkit_offers():
    assert {path.stem for path in CONFIGS.glob("*.json")} == {*VISION_MODELS, *TEXT_MODELS}


def test_a_state_dict_without_the_module_prefix_is_recognised_too():
    shapes = {name[len("module."):]: shape for name, shape in upstream_state_dict("ViT-B-16", "RBT3-chinese").items()}
    assert infer_architecture(shapes).describe() == "ViT-B-16 + RBT3-chinese"


def test_a_mismatch_names_the_checkpoints_towers_and_the_wrong_option():
    found = infer_architecture(upstream_state_dict("ViT-L-14", "RoBERTa-wwm-ext-large-chinese"))
    assert mismatch(found, "ViT-B-16", "RoBERTa-wwm-ext-large-chinese") == (
        "checkpoint looks like ViT-L-14 + RoBERTa-wwm-ext-large-chinese, but --vision-model ViT-B-16 was given")
    assert mismatch(found, "ViT-B-16", "RBT3-chinese") == (
        "checkpoint looks like ViT-L-14 + RoBERTa-wwm-ext-large-chinese, but --vision-model ViT-B-16 "
        "and --text-model RBT3-chinese were given")


def test_a_tower_cn_clip_does_not_have_is_described_by_its_shape():
    shapes = upstream_state_dict("ViT-B-16", "RBT3-chinese")
    shapes = {name: shape for name, shape in shapes.items() if ".resblocks.11." not in name}  # 11 layers, not 12
    found = infer_architecture(shapes)
    assert found.vision is None
    assert mismatch(found, "ViT-B-16", "RBT3-chinese") == (
        "checkpoint looks like a ViT with patch 16, width 768, 11 layers, 224 px + RBT3-chinese, "
        "but --vision-model ViT-B-16 was given")


def test_a_state_dict_of_something_else_has_no_towers():
    found = infer_architecture({"fc.weight": [10, 512], "fc.bias": [10]})
    assert (found.vision, found.text, found.embed_dim) == (None, None, None)
    assert found.describe() == "no image tower + no text tower"


# --- interpreting the probe's facts -------------------------------------------------------------

SETTINGS = Settings(datapath="/srv/data", chinese_clip_dir="/srv/Chinese-CLIP", device="cuda",
                    activate="conda activate training", vision_model="RN50", text_model="RBT3-chinese")
REQUEST = Request("Flickr30k-CN", "valid", "/srv/ckpt.pt", vision_model="RN50", text_model="RBT3-chinese")


def healthy_facts() -> dict:
    return {
        "python": {"version": "3.11.7", "executable": "/env/bin/python"},
        "torch": {"version": "2.3.1", "cuda_build": "12.1",
                  "gpu": {"available": True, "name": "NVIDIA H100", "free": 70 << 30, "total": 80 << 30}},
        "clip": {"dir": "/srv/Chinese-CLIP", "dir_exists": True, "missing_scripts": [],
                 "module": "/srv/Chinese-CLIP/cn_clip"},
        "images": {"path": "/srv/data/datasets/Flickr30k-CN/lmdb/valid/imgs", "exists": True,
                   "count": 1000, "problem": None},
        "texts": {"path": "/srv/data/datasets/Flickr30k-CN/valid_texts.jsonl", "exists": True,
                  "lines": 5000, "bad_lines": [], "bad_count": 0, "image_ids": 1000,
                  "missing_ids": [], "missing_count": 0, "ids_checked": True},
        "checkpoint": {"path": "/srv/ckpt.pt", "exists": True, "readable": True, "size": 300 << 20,
                       "keys": ["epoch", "name", "state_dict", "step"],
                       "shapes": upstream_state_dict("RN50", "RBT3-chinese")},
        "disk": {"path": "/srv/data/evalkit", "existing": "/srv/data", "free": 50 << 30,
                 "total": 100 << 30, "writable": True},
    }


def checks_for(facts: dict, settings: Settings = SETTINGS, request: Request = REQUEST) -> list[Check]:
    return doctor.interpret(ProbeRun(0, True, facts, ()), settings, request)


def failed(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks if not check.ok}


def test_a_healthy_server_passes_every_check_in_order():
    checks = checks_for(healthy_facts())
    assert [check.name for check in checks] == ["activate", "python", "torch", "cn_clip", "GPU", "images",
                                                "texts", "image ids", "checkpoint", "architecture", "disk"]
    assert failed(checks) == {}
    found = {check.name: check.found for check in checks}
    assert found["GPU"] == "GPU 0 (NVIDIA H100): 70.0 GiB free of 80.0 GiB"
    assert found["images"] == "/srv/data/datasets/Flickr30k-CN/lmdb/valid/imgs: 1000 images (num_images)"
    assert found["architecture"] == "RN50 + RBT3-chinese, as --vision-model and --text-model say"
    # 6000 vectors of RN50's 1024 dims, about 20 bytes per float as JSON text
    assert found["disk"] == ("50.0 GiB free at /srv/data/evalkit (on /srv/data, which exists); "
                             "the features need about 117.2 MiB")


def broken(path: str, value) -> dict:
    facts = healthy_facts()
    *parents, leaf = path.split(".")
    target = facts
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    return facts


@pytest.mark.parametrize("facts,name,found,fix", [
    (broken("torch", {"error": "ModuleNotFoundError: No module named 'torch'"}), "torch",
     "torch cannot be imported in the env: ModuleNotFoundError: No module named 'torch'", "install torch"),
    (broken("clip.dir_exists", False), "cn_clip", "chinese_clip_dir /srv/Chinese-CLIP does not exist",
     "set chinese_clip_dir"),
    (broken("clip.missing_scripts", ["evaluation_tr.py"]), "cn_clip",
     "/srv/Chinese-CLIP/cn_clip/eval lacks the upstream evaluation_tr.py", "set chinese_clip_dir"),
    (broken("torch.gpu", {"available": False}), "GPU", "torch sees no CUDA GPU with CUDA_VISIBLE_DEVICES=0",
     "nvidia-smi"),
    (broken("torch.gpu.free", 200 << 20), "GPU", "GPU 0 (NVIDIA H100) has only 200.0 MiB free of 80.0 GiB",
     "--gpu N"),
    (broken("images.exists", False), "images", "split 'valid' of dataset 'Flickr30k-CN' has no image LMDB",
     "--dataset-name and --split"),
    (broken("images.problem", "the python module lmdb is not installed in this env"), "images",
     "cannot be read: the python module lmdb is not installed", "pip install lmdb"),
    (broken("texts.exists", False), "texts", "has no texts file /srv/data/datasets/Flickr30k-CN/valid_texts.jsonl",
     "--dataset-name and --split"),
    (broken("texts.lines", 0), "texts", "the texts file /srv/data/datasets/Flickr30k-CN/valid_texts.jsonl is empty",
     "one JSON object per line"),
    (broken("texts.bad_count", 1) | {"texts": {**healthy_facts()["texts"], "bad_count": 2, "bad_lines": [
        {"line": 3, "problem": "is not JSON (Expecting value: line 1 column 1 (char 0))"},
        {"line": 9, "problem": "has no image_ids"}]}}, "texts",
     "2 of the 5000 lines of /srv/data/datasets/Flickr30k-CN/valid_texts.jsonl are unusable: line 3 is not "
     "JSON (Expecting value: line 1 column 1 (char 0)), line 9 has no image_ids", "fix those lines"),
    (broken("texts.missing_count", 1) | {"texts": {**healthy_facts()["texts"], "missing_count": 1,
                                                   "missing_ids": [{"id": "999999", "line": 17}]}},
     "image ids", "1 of the 1000 image ids the texts name are not in the LMDB, e.g. 999999 (line 17)",
     "rebuild the LMDB"),
    (broken("checkpoint.exists", False), "checkpoint", "checkpoint not found on the server: /srv/ckpt.pt",
     "check --model-path"),
    (broken("checkpoint.load_error", "RuntimeError: PytorchStreamReader failed reading zip archive"),
     "checkpoint", "checkpoint /srv/ckpt.pt (300.0 MiB) cannot be loaded: RuntimeError: PytorchStreamReader "
     "failed reading zip archive (truncated or not a checkpoint?)", "copy it again"),
    (broken("checkpoint.keys", ["state_dict"]), "checkpoint",
     "checkpoint /srv/ckpt.pt has no epoch or step, which upstream extract_features.py reads", "cn_clip training"),
    (broken("checkpoint.shapes", upstream_state_dict("ViT-B-16", "RBT3-chinese")), "architecture",
     "checkpoint looks like ViT-B-16 + RBT3-chinese, but --vision-model RN50 was given",
     "pass --vision-model ViT-B-16 --text-model RBT3-chinese"),
    (broken("disk.free", 10 << 20), "disk", "only 10.0 MiB free at /srv/data/evalkit", "df -h"),
])
def test_each_broken_fact_fails_its_own_check_with_a_fix(facts, name, found, fix):
    failures = failed(checks_for(facts))
    assert list(failures) == [name]
    assert found in failures[name].found
    assert fix in failures[name].fix


def test_on_cpu_the_gpu_check_says_it_is_skipped():
    cpu = Settings(**{**SETTINGS.__dict__, "device": "cpu"})
    gpu = next(check for check in checks_for(healthy_facts(), cpu) if check.name == "GPU")
    assert gpu == Check("GPU", True, "skipped: --device cpu runs the scripts on the CPU")


def test_image_ids_are_not_judged_when_the_lmdb_is_missing():
    names = [check.name for check in checks_for(broken("images", {"path": "/x", "exists": False, "count": None}))]
    assert "image ids" not in names


def test_without_model_path_the_checkpoint_is_skipped():
    facts = healthy_facts()
    del facts["checkpoint"]
    checks = checks_for(facts)
    assert Check("checkpoint", True, "skipped: no --model-path given") in checks
    assert "architecture" not in [check.name for check in checks]


def test_a_failing_activate_command_is_the_only_line_and_shows_its_error():
    run = doctor.parse_probe(1, b"", b"bash: /opt/conda/etc/profile.d/conda.sh: No such file or directory\n")
    assert doctor.interpret(run, SETTINGS, REQUEST) == [Check(
        "activate", False, "the activate command 'conda activate training' exited with status 1: "
        "bash: /opt/conda/etc/profile.d/conda.sh: No such file or directory",
        "fix `activate` in your config file (on the server, `conda env list` shows the environments)")]


def test_a_python_that_does_not_start_fails_the_python_check():
    run = doctor.parse_probe(127, b"EVALKIT-ACTIVATED\n", b"bash: python3.99: command not found\n")
    checks = doctor.interpret(run, SETTINGS, REQUEST)
    assert [(check.name, check.ok) for check in checks] == [("activate", True), ("python", False)]
    assert "bash: python3.99: command not found" in checks[1].found


def test_the_probe_facts_are_found_after_whatever_activation_prints():
    stdout = b"conda says hi\nEVALKIT-ACTIVATED\nEVALKIT-DOCTOR {\"python\": {}}\n"
    assert doctor.parse_probe(0, stdout, b"") == ProbeRun(0, True, {"python": {}}, ())


@pytest.mark.parametrize("error,lines", [
    (ConnectError("cannot connect to h (u@h:22): Connection refused", "check the port"),
     [("server reachable", False)]),
    (HostKeyError("h ([h]:2222) is not in known_hosts", "trust it"), [("server reachable", True), ("host key", False)]),
    (AuthenticationError("h refused authentication as 'u'", "check keys"),
     [("server reachable", True), ("host key", True), ("authentication", False)]),
    (None, [("server reachable", True), ("host key", True), ("authentication", True)]),
])
def test_ssh_checks_pass_up_to_the_one_that_failed(error, lines):
    checks = doctor.connection_checks("u@h:22", "h", "u", error)
    assert [(check.name, check.ok) for check in checks] == lines
    if error:
        assert (checks[-1].found, checks[-1].fix) == (error.message, error.hint)


def test_the_evaluation_preflight_refuses_a_mismatch_as_a_config_error_and_a_bad_file_as_missing():
    refusal = doctor.checkpoint_refusal(ProbeRun(0, True, broken("checkpoint.shapes", upstream_state_dict(
        "ViT-L-14", "RBT3-chinese")), ()), REQUEST)
    assert isinstance(refusal, ConfigError) and "looks like ViT-L-14 + RBT3-chinese" in refusal.message
    refusal = doctor.checkpoint_refusal(ProbeRun(0, True, broken("checkpoint.exists", False), ()), REQUEST)
    assert isinstance(refusal, MissingInput)
    assert doctor.checkpoint_refusal(ProbeRun(0, True, healthy_facts(), ()), REQUEST) is None


# --- the remote command: hostile values stay data ------------------------------------------------

HOSTILE = ["x; touch pwned", "$(touch pwned)", "`touch pwned`", "it's \"q\"; touch pwned", "a\ntouch pwned",
           "中文 数据 $(touch pwned)"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to run the command")
@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_reach_the_probe_as_text_and_never_run(tmp_path, hostile):
    root = tmp_path / hostile
    settings = Settings(datapath=str(root / "data"), chinese_clip_dir=str(root / "clip"), activate="true",
                        python=sys.executable, remote_output_dir=str(root / "out"), device="cpu")
    request = Request(hostile, "valid", str(root / "ckpt.pt"))
    command = doctor.doctor_command(settings, request, bootstrap_source())
    # as the doctor sends them: the probe's digest, then (it is missing) its source
    exchange = [{"files": script_digests([doctor.PROBE_NAME])}, {"files": {doctor.PROBE_NAME: PROBE.read_text()}}]
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, timeout=60,
                          input="".join(json.dumps(line) + "\n" for line in exchange).encode())
    run = doctor.parse_probe(done.returncode, done.stdout, done.stderr)
    assert run.activated and run.facts is not None, done.stderr
    assert Path(helper_path(settings, doctor.PROBE_NAME)).read_bytes() == PROBE.read_bytes()  # made current
    assert run.facts["clip"]["dir"] == str(root / "clip")
    assert run.facts["texts"]["path"] == f"{root}/data/datasets/{hostile}/valid_texts.jsonl"
    assert run.facts["checkpoint"] == {"path": str(root / "ckpt.pt"), "exists": False, "readable": False}
    assert not list(tmp_path.rglob("pwned"))


# --- a zero-shot classification dataset ----------------------------------------------------------

CLASSIFYING = Request("cifar-100", "test", "/srv/ckpt.pt", vision_model="RN50", text_model="RBT3-chinese",
                      task="zeroshot_classification")


def test_a_classification_dataset_is_probed_through_its_label_file_and_class_folders():
    command = doctor.doctor_command(SETTINGS, CLASSIFYING, bootstrap_source())
    assert ("--classification cifar-100 --class-images /srv/data/datasets/cifar-100/test "
            "--label-file /srv/data/datasets/cifar-100/label_cn.txt") in command
    assert "--texts" not in command


def test_each_classification_check_the_probe_made_is_a_line_of_its_own():
    facts = {key: value for key, value in healthy_facts().items() if key not in ("images", "texts")}
    facts["classification"] = {"checks": [
        {"name": "blank lines", "ok": False, "found": "label_cn.txt line 3 is blank", "fix": "remove it"},
        {"name": "templates", "ok": True, "found": "cifar-100: openai_templates (183 templates)", "fix": None}]}
    checks = checks_for(facts, request=CLASSIFYING)
    assert [check.name for check in checks] == ["activate", "python", "torch", "cn_clip", "GPU", "blank lines",
                                                "templates", "checkpoint", "architecture", "disk"]
    assert failed(checks) == {"blank lines": Check("blank lines", False, "label_cn.txt line 3 is blank", "remove it")}
    assert checks[-1].found == ("50.0 GiB free at /srv/data/evalkit (on /srv/data, which exists); "
                                "a classification writes no features, only its results")


def test_a_probe_that_did_not_check_the_classification_dataset_fails_its_line():
    facts = {key: value for key, value in healthy_facts().items() if key not in ("images", "texts")}
    assert list(failed(checks_for(facts, request=CLASSIFYING))) == ["classification dataset"]
