"""Where many recorded runs stand (`status`): one connection per server, all of its runs in one
ask (the executor's look_all: remote/job.py states), the servers at once. A far server then costs
`status` a few round trips whatever the number of runs, not a connection per run."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from .errors import EvalkitError
from .executors.base import JobState, RemoteRun
from .run_record import RunRecord
from .server import JOB_RUNNER, script_call, in_server_env

MOST_SERVERS_AT_ONCE = 8


def states(records: list[RunRecord]) -> dict[str, JobState]:
    """Each record's run's state, by run id. A server that cannot be asked makes its runs'
    states unknown (with why), never the others'."""
    servers = _grouped(records, lambda record: (record.settings.host, record.settings.ssh_config_path))
    if not servers:
        return {}
    with ThreadPoolExecutor(min(len(servers), MOST_SERVERS_AT_ONCE)) as pool:
        found: dict[str, JobState] = {}
        for answered in pool.map(_states_on_server, servers):
            found.update(answered)
        return found


def _states_on_server(records: list[RunRecord]) -> dict[str, JobState]:
    """One connection; one ask for each way of running job.py among RECORDS (usually one)."""
    from .pipeline import connected, sweep_connection  # the SSH side loads only when a command runs
    found: dict[str, JobState] = {}
    try:
        with sweep_connection(records[0].settings) as connection:
            for alike in _grouped(records, _asked_alike):
                try:
                    with connected(alike[0].settings, shared=connection) as (_, executor):
                        found.update(executor.look_all([_remote(record) for record in alike]))
                except EvalkitError as error:
                    found.update(_unknown(alike, error))
    except EvalkitError as error:  # the server itself: unreachable, refused, its host key
        found.update(_unknown(records, error))
    return found


def _asked_alike(record: RunRecord) -> tuple:
    """Records whose runs one job.py call can answer: the same executor and the same command
    (the env's activation, the python, evalkit's folder on the server)."""
    settings = record.settings
    return settings.executor, in_server_env(settings, script_call(settings, JOB_RUNNER, ()))


def _grouped(records: Iterable[RunRecord], key) -> list[list[RunRecord]]:
    groups: dict = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return list(groups.values())


def _unknown(records: list[RunRecord], error: EvalkitError) -> dict[str, JobState]:
    return {record.run_id: JobState(None, False, unknown=error.message) for record in records}


def _remote(record: RunRecord) -> RemoteRun:
    return RemoteRun(record.run_id, record.server_run_dir, record.plan)
