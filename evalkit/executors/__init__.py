"""Executors by name: a new one is a module in this package plus one line here."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry's names are read by config.py, which must not bring paramiko
    from .base import Executor

# name -> "module:class"; imported only when chosen (each brings the SSH side)
EXECUTORS = {
    "ssh": "evalkit.executors.ssh:SshExecutor",
    "slurm": "evalkit.executors.slurm:SlurmExecutor",
}
# executors whose scheduler chooses each job's GPUs (and sets CUDA_VISIBLE_DEVICES itself)
GPUS_FROM_SCHEDULER = frozenset({"slurm"})


def executor_class(name: str) -> "type[Executor]":
    module, _, cls = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
