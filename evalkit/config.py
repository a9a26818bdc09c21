"""Settings: built-in defaults < YAML config file < command-line flags, validated once.

The defaults describe the seed server (`ssh seetacloud-v800`, Chinese-CLIP under
/root/autodl-tmp, conda env `training`).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

DEVICES = ("cuda", "cpu")
VISION_MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "RN50")
TEXT_MODELS = ("RoBERTa-wwm-ext-base-chinese", "RoBERTa-wwm-ext-large-chinese", "RBT3-chinese")
KNN_MODES = ("upstream", "fast")
_CHOICES = {"device": DEVICES, "vision_model": VISION_MODELS, "text_model": TEXT_MODELS, "knn": KNN_MODES}


@dataclass(frozen=True)
class ModelEntry:
    """A registered checkpoint: `models: {team: {path: ..., vision_model: ...}}` in the config."""

    name: str
    path: str
    vision_model: str | None = None
    text_model: str | None = None


SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}")  # Slurm's forms: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
SLURM_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class SlurmSettings:
    """The `slurm:` section, read with `executor: slurm` (see executors/slurm.py)."""

    partition: str | None = None       # None: the cluster's default partition
    gpus_per_job: int = 1
    time: str = "04:00:00"
    account: str | None = None
    qos: str | None = None
    sbatch_args: tuple[str, ...] = ()  # extra `#SBATCH` lines, e.g. "--constraint=a100"
    setup: tuple[str, ...] = ()        # shell lines before `activate`, e.g. "module load cuda"
    poll_interval: float = 5.0         # squeue: first pause between asks, doubling up to poll_max
    poll_max: float = 60.0
    lost_after: float = 120.0          # a job gone from squeue, its run unfinished: lost after this long
    jobs_at_once: int = 8              # a command's evaluations checked, submitted and followed at once


_SLURM_TYPES: dict[str, tuple[type, ...]] = {
    "partition": (str,), "gpus_per_job": (int,), "time": (str,), "account": (str,), "qos": (str,),
    "sbatch_args": (list,), "setup": (list,), "poll_interval": (int, float), "poll_max": (int, float),
    "lost_after": (int, float), "jobs_at_once": (int,),
}


@dataclass(frozen=True)
class Settings:
    """Where and how to run: everything a config file may set."""

    host: str = "seetacloud-v800"
    ssh_config: str | None = None
    datapath: str = "/root/autodl-tmp/datapath"
    chinese_clip_dir: str = "/root/autodl-tmp/Chinese-CLIP"
    activate: str = "source /root/miniconda3/etc/profile.d/conda.sh && conda activate training"
    python: str = "python"
    remote_output_dir: str | None = None
    device: str = "cuda"
    gpu: int = 0
    vision_model: str = "ViT-B-16"
    text_model: str = "RoBERTa-wwm-ext-base-chinese"
    results_dir: str = "results"
    img_batch_size: int = 32
    text_batch_size: int = 32
    context_length: int = 52
    top_k: int = 10
    eval_batch_size: int = 32768
    knn: str = "upstream"
    image_to_image: bool = False
    executor: str = "ssh"
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    connect_timeout: float = 15.0
    step_timeout: float = 24 * 3600.0
    reconnect_timeout: float = 600.0
    watch_settle: float = 60.0     # --watch: a checkpoint untouched this long (and a readable zip) is complete
    watch_interval: float = 300.0  # --watch: seconds between looks at the checkpoints directory
    models: dict[str, ModelEntry] = field(default_factory=dict)

    @property
    def ssh_config_path(self) -> Path | None:
        return Path(self.ssh_config) if self.ssh_config else None

    @property
    def output_root(self) -> str:
        """Server directory holding one sub-directory per evaluated checkpoint."""
        return self.remote_output_dir or f"{self.datapath.rstrip('/')}/evalkit"


# What each key may hold, for messages that name the expected type.
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    f.name: ((int, float) if f.type == "float" else (int,) if f.type == "int" else (bool,) if f.type == "bool" else
             (dict,) if f.name in ("models", "slurm") else (str,))
    for f in dataclasses.fields(Settings)
}
_ENTRY_KEYS = ("path", "vision_model", "text_model")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ALL_MODELS = "all"
_NULLABLE = {"ssh_config", "remote_output_dir"}
_POSITIVE = {"img_batch_size", "text_batch_size", "context_length", "top_k", "eval_batch_size",
             "connect_timeout", "step_timeout", "reconnect_timeout", "watch_settle", "watch_interval"}
CONFIG_KEYS = tuple(_KEY_TYPES)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read and check a YAML config file; returns only the keys it sets."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}",
                          "check the --config path") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}{line} is not valid YAML", "fix the YAML syntax at that line") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values, not a {type(data).__name__}",
                          f"write `key: value` lines; known keys: {', '.join(CONFIG_KEYS)}")
    check_values(data, source=str(path))
    return data


def check_values(values: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError naming the first unknown key or wrongly typed value."""
    for key, value in values.items():
        if key not in _KEY_TYPES:
            raise ConfigError(f"unknown key {key!r} in {source}",
                              f"known keys: {', '.join(CONFIG_KEYS)}")
        if value is None and key in _NULLABLE:
            continue
        expected = _KEY_TYPES[key]
        if isinstance(value, bool) != (expected == (bool,)) or not isinstance(value, expected):
            raise ConfigError(f"{key!r} in {source} must be {_type_name(expected)}, "
                              f"got {type(value).__name__} {value!r}", f"fix {key!r} in {source}")
        if key in _POSITIVE and value <= 0:
            raise ConfigError(f"{key!r} in {source} must be positive, got {value!r}",
                              f"fix {key!r} in {source}")
    from .executors import EXECUTORS  # the registry: a new executor is one line there, not here
    for key, choices in {**_CHOICES, "executor": tuple(EXECUTORS)}.items():
        if values.get(key) is not None and values[key] not in choices:
            raise ConfigError(f"{key!r} in {source} must be one of {', '.join(choices)}, "
                              f"got {values[key]!r}", f"fix {key!r} in {source}")
    if values.get("gpu", 0) < 0:  # the type was checked above
        raise ConfigError(f"'gpu' in {source} must be >= 0, got {values['gpu']}", f"fix 'gpu' in {source}")
    for name, entry in values.get("models", {}).items():
        _check_model_entry(name, entry, source)
    if "slurm" in values:
        check_slurm_section(values["slurm"], source)


def check_slurm_section(section: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError naming the first wrong key or value of the `slurm:` section."""
    where = f"the slurm section of {source}"
    for key, value in section.items():
        if key not in _SLURM_TYPES:
            raise ConfigError(f"unknown key {key!r} in {where}", f"known keys: {', '.join(_SLURM_TYPES)}")
        expected = _SLURM_TYPES[key]
        if value is None and key in ("partition", "account", "qos"):
            continue
        if isinstance(value, bool) or not isinstance(value, expected) or \
                (expected == (list,) and not all(isinstance(line, str) for line in value)):
            kind = "a list of strings" if expected == (list,) else _type_name(expected)
            raise ConfigError(f"slurm {key!r} in {source} must be {kind}, got {value!r}",
                              f"fix slurm {key!r} in {source}")
    if section.get("gpus_per_job", 1) < 0:
        raise ConfigError(f"slurm 'gpus_per_job' in {source} must be >= 0, got {section['gpus_per_job']}",
                          f"fix slurm 'gpus_per_job' in {source}")
    for key in ("poll_interval", "poll_max", "lost_after", "jobs_at_once"):
        if key in section and section[key] <= 0:
            raise ConfigError(f"slurm {key!r} in {source} must be positive, got {section[key]!r}",
                              f"fix slurm {key!r} in {source}")
    if "time" in section and not SLURM_TIME.fullmatch(section["time"]):
        raise ConfigError(f"slurm 'time' in {source} is not a Slurm time limit: {section['time']!r}",
                          "write it as Slurm does: MINUTES, HH:MM:SS or DAYS-HH:MM:SS, e.g. 04:00:00")
    for key in ("sbatch_args", "setup"):
        _check_one_line_each(section, key, source)
    for key in ("partition", "account", "qos"):
        if section.get(key) is not None and not SLURM_NAME.fullmatch(section[key]):
            raise ConfigError(f"slurm {key!r} in {source} is not a Slurm name: {section[key]!r}",
                              f"fix slurm {key!r} in {source} (letters, digits, '_', '.', '+', '-')")


def _check_one_line_each(section: Mapping[str, Any], key: str, source: str) -> None:
    """Each item of a list of lines is one line: in the batch script, a line break inside an
    sbatch_args item ends Slurm's reading of `#SBATCH` lines there (sbatch ignores every later
    one without a word), and one inside a setup item hides a second command in it."""
    for line in section.get(key) or ():
        if "\n" in line or "\r" in line:
            raise ConfigError(f"slurm {key!r} in {source} has an item of several lines: {line!r}",
                              f"give each line its own item of slurm {key!r} (a YAML list: `- ...` per line), "
                              "not a block scalar (`|` or `>`)")


def slurm_settings(section: Mapping[str, Any]) -> SlurmSettings:
    """The checked `slurm:` section as typed values (lists become tuples)."""
    return SlurmSettings(**{key: tuple(value) if isinstance(value, list) else value for key, value in section.items()})


def _check_model_entry(name: Any, entry: Any, source: str) -> None:
    where = f"model {name!r} in {source}"
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or name == ALL_MODELS:
        raise ConfigError(f"{where}: a model name is letters, digits, '.', '_' or '-' (and not "
                          f"{ALL_MODELS!r})", f"rename it in {source}")
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
        raise ConfigError(f"{where} needs a `path:` (absolute, or relative to datapath)",
                          f"write `{name}: {{path: experiments/EXP/checkpoints/epoch_latest.pt}}`")
    for key, value in entry.items():
        if key not in _ENTRY_KEYS:
            raise ConfigError(f"unknown key {key!r} in {where}", f"known keys: {', '.join(_ENTRY_KEYS)}")
        choices = _CHOICES.get(key)
        if choices and value not in choices:
            raise ConfigError(f"{key!r} of {where} must be one of {', '.join(choices)}, got {value!r}",
                              f"fix {key!r} of {where}")


def _type_name(types: tuple[type, ...]) -> str:
    if bool in types:
        return "true or false"
    return "a number" if float in types else "an integer" if int in types else "a string"


def build_settings(config_path: Path | None, flags: Mapping[str, Any]) -> Settings:
    """Merge: built-in defaults < config file < flags (a flag of None means 'not given')."""
    merged: dict[str, Any] = {}
    if config_path is not None:
        merged.update(load_config_file(config_path))
    given = {key: value for key, value in flags.items() if value is not None}
    check_values(given, source="the command line")
    merged.update(given)
    merged["models"] = {name: ModelEntry(name, **entry) for name, entry in merged.get("models", {}).items()}
    merged["slurm"] = slurm_settings(merged.get("slurm", {}))
    return Settings(**merged)
