"""Settings: built-in defaults < config file < command-line flags, checked once, errors that point."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from evalkit.config import CONFIG_KEYS, ModelEntry, Settings, SlurmSettings, build_settings, load_config_file
from evalkit.errors import ConfigError

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "seetacloud-v800.yaml"


def write(tmp_path: Path, text: str, name: str = "evalkit.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- precedence -------------------------------------------------------------------------------

@pytest.mark.parametrize("config_text, flags, expected_datapath", [
    # nothing given: the built-in default (the seed server)
    (None, {}, "/root/autodl-tmp/datapath"),
    # config file beats default
    ("datapath: /from/config\n", {}, "/from/config"),
    # flag beats default
    (None, {"datapath": "/from/flag"}, "/from/flag"),
    # flag beats config file
    ("datapath: /from/config\n", {"datapath": "/from/flag"}, "/from/flag"),
    # a flag of None means "not given": the config file still wins over the default
    ("datapath: /from/config\n", {"datapath": None}, "/from/config"),
    # a config that sets other keys leaves this one at its default
    ("host: elsewhere\n", {}, "/root/autodl-tmp/datapath"),
])
def test_flag_beats_config_file_beats_default(tmp_path, config_text, flags, expected_datapath):
    config = write(tmp_path, config_text) if config_text is not None else None
    assert build_settings(config, flags).datapath == expected_datapath


def test_precedence_is_per_key(tmp_path):
    config = write(tmp_path, "host: cfg-host\ngpu: 2\ndevice: cpu\n")
    settings = build_settings(config, {"gpu": 5, "host": None})
    assert (settings.host, settings.gpu, settings.device, settings.top_k) == ("cfg-host", 5, "cpu", 10)


def test_every_setting_can_come_from_the_config_file(tmp_path):
    values = {"host": "h", "ssh_config": "/c", "datapath": "/d", "chinese_clip_dir": "/cc",
              "activate": "echo ready", "python": "python3", "remote_output_dir": "/o", "device": "cpu",
              "gpu": 1, "results_dir": "r", "img_batch_size": 2, "text_batch_size": 3,
              "context_length": 4, "top_k": 5, "eval_batch_size": 6, "connect_timeout": 7.5,
              "step_timeout": 8, "reconnect_timeout": 9, "watch_settle": 10, "watch_interval": 11.5, "knn": "fast", "image_to_image": True, "executor": "ssh", "vision_model": "RN50",
              "text_model": "RBT3-chinese", "models": {"team": {"path": "experiments/t/checkpoints/epoch_latest.pt"}},
              "slurm": {"partition": "p", "setup": ["module load cuda"]}}
    assert set(values) == set(CONFIG_KEYS), "this test must cover every key"
    text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items())
    settings = build_settings(write(tmp_path, text), {})
    expected = {**values, "models": {"team": {"name": "team", "path": "experiments/t/checkpoints/epoch_latest.pt",
                                              "vision_model": None, "text_model": None}},
                "slurm": dataclasses.asdict(SlurmSettings(partition="p", setup=("module load cuda",)))}
    assert dataclasses.asdict(settings) == expected


# --- the model registry -------------------------------------------------------------------------

def test_registry_entries_carry_path_and_optional_models(tmp_path):
    text = ("models:\n"
            "  team: {path: experiments/team/checkpoints/epoch_latest.pt}\n"
            "  big:\n    path: /abs/big.pt\n    vision_model: ViT-L-14\n    text_model: RoBERTa-wwm-ext-large-chinese\n")
    models = build_settings(write(tmp_path, text), {}).models
    assert models["team"] == ModelEntry("team", "experiments/team/checkpoints/epoch_latest.pt")
    assert models["big"] == ModelEntry("big", "/abs/big.pt", "ViT-L-14", "RoBERTa-wwm-ext-large-chinese")


@pytest.mark.parametrize("text, phrase", [
    ("models: [team]\n", "'models'"),
    ("models:\n  team: experiments/x.pt\n", "needs a `path:`"),
    ("models:\n  team: {vision_model: RN50}\n", "needs a `path:`"),
    ("models:\n  team: {path: x.pt, epoch: 3}\n", "unknown key 'epoch' in model 'team'"),
    ("models:\n  team: {path: x.pt, vision_model: ViT-X}\n", "'vision_model' of model 'team'"),
    ("models:\n  all: {path: x.pt}\n", "model 'all'"),
    ("models:\n  'a b': {path: x.pt}\n", "model 'a b'"),
])
def test_a_bad_registry_entry_is_named(tmp_path, text, phrase):
    error, path = config_error(tmp_path, text)
    assert phrase in error.message and str(path) in error.message


# --- the shipped config -------------------------------------------------------------------------

def test_shipped_seed_config_spells_out_the_builtin_defaults():
    values = load_config_file(SHIPPED_CONFIG)
    assert values, "the shipped config should spell the seed server out, not be empty"
    del values["models"]
    assert Settings(**values) == Settings()


def test_shipped_seed_config_registers_the_seed_students():
    models = build_settings(SHIPPED_CONFIG, {}).models
    experiments = "experiments/muge_finetune_vit-b-16_roberta-base_"
    assert {name: entry.path for name, entry in models.items()} == {
        "team": f"{experiments}bs512_4gpu_team_distill/checkpoints/epoch_latest.pt",
        "large": f"{experiments}bs512_4gpu_large_distill/checkpoints/epoch_latest.pt",
        "huge": f"{experiments}bs512_4gpu_huge_distill/checkpoints/epoch_latest.pt",
        "baseline": f"{experiments}bs128_1gpu_baseline/checkpoints/epoch_latest.pt",
    }


def test_defaults_describe_the_seed_server():
    s = Settings()
    assert s.host == "seetacloud-v800"
    assert s.datapath == "/root/autodl-tmp/datapath"
    assert s.chinese_clip_dir == "/root/autodl-tmp/Chinese-CLIP"
    assert s.activate == "source /root/miniconda3/etc/profile.d/conda.sh && conda activate training"


# --- output_root ----------------------------------------------------------------------------------

@pytest.mark.parametrize("datapath, remote_output_dir, expected", [
    ("/root/autodl-tmp/datapath", None, "/root/autodl-tmp/datapath/evalkit"),
    ("/root/autodl-tmp/datapath/", None, "/root/autodl-tmp/datapath/evalkit"),
    ("/data", "/scratch/evals", "/scratch/evals"),
])
def test_output_root_defaults_to_datapath_evalkit_and_honours_remote_output_dir(
        datapath, remote_output_dir, expected):
    assert Settings(datapath=datapath, remote_output_dir=remote_output_dir).output_root == expected


def test_remote_output_dir_from_config_file_moves_output_root(tmp_path):
    config = write(tmp_path, "remote_output_dir: /scratch/out\n")
    assert build_settings(config, {}).output_root == "/scratch/out"


# --- empty files and nulls ------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_config_file_means_defaults(tmp_path, text):
    assert build_settings(write(tmp_path, text), {}) == Settings()


@pytest.mark.parametrize("key", ["ssh_config", "remote_output_dir"])
def test_nullable_keys_accept_null(tmp_path, key):
    assert getattr(build_settings(write(tmp_path, f"{key}: null\n"), {}), key) is None


# --- errors name the key and the file -------------------------------------------------------------

def config_error(tmp_path: Path, text: str) -> tuple[ConfigError, Path]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    return info.value, path


@pytest.mark.parametrize("text, key", [
    ("hots: seetacloud-v800\n", "hots"),
    ("host: a\ndata_path: /x\n", "data_path"),
    ("batch_size: 32\n", "batch_size"),
])
def test_unknown_key_error_names_the_key_and_the_file(tmp_path, text, key):
    error, path = config_error(tmp_path, text)
    assert key in error.message
    assert str(path) in error.message
    assert "datapath" in (error.hint or ""), "the hint should list the known keys"


@pytest.mark.parametrize("text, key", [
    ('gpu: "0"\n', "gpu"),
    ("img_batch_size: 1.5\n", "img_batch_size"),
    ("top_k: true\n", "top_k"),
    ("gpu: false\n", "gpu"),
    ("text_batch_size: '32'\n", "text_batch_size"),
    ("datapath: 42\n", "datapath"),
    ("host: [a, b]\n", "host"),
    ("connect_timeout: fast\n", "connect_timeout"),
    ("datapath: null\n", "datapath"),
    ("eval_batch_size: {a: 1}\n", "eval_batch_size"),
])
def test_wrong_type_names_the_key_and_the_file(tmp_path, text, key):
    error, path = config_error(tmp_path, text)
    assert repr(key) in error.message
    assert str(path) in error.message


@pytest.mark.parametrize("key", ["img_batch_size", "text_batch_size", "context_length", "top_k",
                                 "eval_batch_size", "connect_timeout", "step_timeout", "reconnect_timeout", "watch_settle", "watch_interval"])
@pytest.mark.parametrize("value", [0, -1])
def test_zero_and_negative_sizes_are_rejected(tmp_path, key, value):
    error, path = config_error(tmp_path, f"{key}: {value}\n")
    assert key in error.message and str(path) in error.message


def test_negative_gpu_is_rejected(tmp_path):
    error, path = config_error(tmp_path, "gpu: -1\n")
    assert "gpu" in error.message and str(path) in error.message


def test_gpu_zero_is_fine(tmp_path):
    assert build_settings(write(tmp_path, "gpu: 0\n"), {}).gpu == 0


@pytest.mark.parametrize("device", ["tpu", "CUDA", "gpu", ""])
def test_unknown_device_is_rejected(tmp_path, device):
    error, path = config_error(tmp_path, f"device: '{device}'\n")
    assert "device" in error.message and str(path) in error.message
    assert "cuda" in error.message and "cpu" in error.message, "say what is allowed"


@pytest.mark.parametrize("key, value, allowed", [
    ("vision_model", "ViT-B-17", "ViT-B-16"),
    ("text_model", "roberta", "RoBERTa-wwm-ext-base-chinese"),
])
def test_unknown_model_name_is_rejected_with_the_known_ones(tmp_path, key, value, allowed):
    error, path = config_error(tmp_path, f"{key}: {value}\n")
    assert repr(key) in error.message and str(path) in error.message
    assert allowed in error.message


def test_bad_flag_value_is_blamed_on_the_command_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        build_settings(None, {"device": "tpu"})
    assert "command line" in info.value.message


@pytest.mark.parametrize("text, line", [
    ("host: a\ngpu: 0\n  bad: indentation\n", 3),
    ("gpu: 1\n\tdevice: cpu\n", 2),
    ("host: 'unterminated\n", 2),
])
def test_malformed_yaml_error_says_file_and_line(tmp_path, text, line):
    error, path = config_error(tmp_path, text)
    assert f"{path}:{line}" in error.message


@pytest.mark.parametrize("text, kind", [
    ("- host\n- datapath\n", "list"),
    ("just a string\n", "str"),
    ("42\n", "int"),
])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    error, path = config_error(tmp_path, text)
    assert str(path) in error.message
    assert kind in error.message


def test_missing_config_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        build_settings(missing, {})
    assert str(missing) in info.value.message


def test_first_bad_key_is_reported_before_later_good_ones_apply(tmp_path):
    # A config with an error never yields settings, even partly applied ones.
    with pytest.raises(ConfigError):
        build_settings(write(tmp_path, "datapath: /ok\ntop_k: 0\n"), {"host": "x"})


def test_the_guide_documents_every_config_key():
    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = page.split("# Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [key for key in CONFIG_KEYS if f"| `{key}` |" not in table]
    assert missing == [], f"docs/configuration.md's table lacks {missing}"


def test_the_guides_example_config_loads_and_names_every_key(tmp_path):
    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    example = page.split("## Example: every key", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    settings = build_settings(write(tmp_path, example), {})
    assert set(load_config_file(write(tmp_path, example))) == set(CONFIG_KEYS)
    assert settings.slurm.partition == "a100" and list(settings.models) == ["team", "large"]
