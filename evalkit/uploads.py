"""evalkit's server scripts (evalkit/remote/, listed in server.SERVER_SCRIPTS): their sources in
this package, and their upload over SFTP where no run's starter brings them (see starter.py)."""
from __future__ import annotations

import hashlib
from importlib import resources

from .config import Settings
from .server import BOOTSTRAP, DRIVER_SCRIPTS, script_path
from .ssh import Connection


def script_source(name: str) -> bytes:
    return resources.files("evalkit.remote").joinpath(name).read_bytes()


def script_digests(names: list[str]) -> dict[str, str]:
    return {name: hashlib.sha256(script_source(name)).hexdigest() for name in names}


def slurm_batch_script(settings: Settings, run_id: str, label: str, run_dir: str) -> str:
    """The batch script of a Slurm run: its driver started by the bootstrap, inline, once it has
    checked the scripts folder and the SHA-256 of job.py (and what it imports) as submitted now."""
    from .slurm_job import batch_script
    return batch_script(settings, run_id, label, run_dir, script_source(BOOTSTRAP).decode("utf-8"),
                        script_digests(list(DRIVER_SCRIPTS)))


def upload_scripts(connection: Connection, settings: Settings, names: list[str]) -> None:
    """Each of NAMES to the server's scripts folder, atomically; the folder, if new, is the
    user's alone (0o700), as the bootstrap makes it: it holds code evalkit runs."""
    for name in names:
        connection.write_bytes(script_path(settings, name), script_source(name), folder_mode=0o700)
