"""evalkit's server scripts (evalkit/remote/, listed in server.SERVER_SCRIPTS): their sources in
this package and their digests, which the bootstrap compares with the server's copies before it
writes those that differ (starter.py), and a Slurm job's before it runs them."""
from __future__ import annotations

import hashlib
from importlib import resources

from .config import Settings
from .server import BOOTSTRAP, DRIVER_SCRIPTS


def script_source(name: str) -> bytes:
    return resources.files("evalkit.remote").joinpath(name).read_bytes()


def bootstrap_source() -> str:
    """remote/bootstrap.py, given inline to python -c: it runs before any script is on the server."""
    return script_source(BOOTSTRAP).decode("utf-8")


def script_digests(names: list[str]) -> dict[str, str]:
    return {name: hashlib.sha256(script_source(name)).hexdigest() for name in names}


def slurm_batch_script(settings: Settings, run_id: str, label: str, run_dir: str) -> str:
    """The batch script of a Slurm run: its driver started by the bootstrap, inline, once it has
    checked the scripts folder and the SHA-256 of job.py (and what it imports) as submitted now."""
    from .slurm_job import batch_script
    return batch_script(settings, run_id, label, run_dir, bootstrap_source(),
                        script_digests(list(DRIVER_SCRIPTS)))
