"""`python -m evalkit doctor` and the evaluation's preflight: run the probe, hand its facts to
diagnosis.py (which decides, without I/O, what they mean)."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from . import diagnosis, slurm_job, zeroshot
from .config import Settings
from .diagnosis import Check
from .errors import DoctorFailed, EvalkitError, RemoteStepFailed
from .evaluation import Evaluation, Scope
from .server import PROBE, ZEROSHOT, scripts_for
from .session import Session
from .ssh import Connection, Target, resolve_target
from .starter import Starter
from .uploads import bootstrap_source

PROBE_TIMEOUT_SECONDS = 900.0  # loading a multi-GB checkpoint without mmap takes minutes


def run_doctors(settings: Settings, evaluations: list[Evaluation], on_check: Callable[[Check], None],
                on_model: Callable[[Evaluation], None] | None = None, probe_job: bool = False) -> int:
    """The doctor for each evaluation (ON_MODEL before each one's checks); the number of checks
    made, or DoctorFailed naming each kind of check that failed."""
    count, failed = 0, []
    for evaluation in evaluations:
        if on_model is not None:
            on_model(evaluation)
        found = run_doctor(settings, evaluation, on_check, probe_job)
        count += len(found)
        failed += [check.name for check in found if not check.ok and check.name not in failed]
    if failed:
        raise DoctorFailed(f"{len(failed)} of {count} checks failed: {', '.join(failed)}",
                           "fix the ✗ lines above, then run `python -m evalkit doctor` again")
    return count


def run_doctor(settings: Settings, evaluation: Evaluation,
               on_check: Callable[[Check], None] = lambda check: None, probe_job: bool = False) -> list[Check]:
    """Every check in order, each handed to ON_CHECK as soon as it is known.

    Stops after a failed ssh check, since nothing on the server can be checked then.
    """
    checks: list[Check] = []

    def add(*found: Check) -> None:
        for check in found:
            checks.append(check)
            on_check(check)

    try:
        target = resolve_target(settings.host, settings.ssh_config_path)
    except EvalkitError as error:
        add(diagnosis.alias_failure(error))
        return checks
    add(diagnosis.alias_check(settings.host, target.address, _existing(target.identity_files),
                              [hop.address for hop in target.proxy_jump]))
    connection = Connection(target, settings.connect_timeout)
    try:
        connection.open()
    except EvalkitError as error:
        add(*_connection_checks(target, error))
        return checks
    with connection:
        add(*_connection_checks(target, None))
        evaluation, layout = _with_task(settings, evaluation, Session(connection))
        if layout is not None:
            add(layout)
            if not layout.ok:
                return checks
        try:
            probed = _probe(connection, settings, evaluation)
        except RemoteStepFailed as refused:  # the scripts folder is unsafe, or cannot be written
            add(diagnosis.scripts_folder_failure(refused.message, refused.hint))
            return checks
        found = diagnosis.interpret(probed, settings, evaluation)
        if settings.executor != "slurm":
            add(*found)
            return checks
        slurm_checks, seen_by_job = _slurm_checks(connection, settings, [
            settings.datapath, settings.chinese_clip_dir, settings.output_root, evaluation.checkpoint]
            if probe_job else None)
        partition = next(check for check in slurm_checks if check.name == "Slurm partition")
        add(*(slurm_job.compute_node_gpu_check(check, partition, seen_by_job, settings) if check.name == "GPU"
              else check for check in found), *slurm_checks)
    return checks


def _probe(connection: Connection, settings: Settings, evaluation: Evaluation) -> diagnosis.ProbeRun:
    """The probe, run by the bootstrap once it made the server's scripts current by their
    digests (those a run needs too, as before any run: no SFTP, nothing sent when unchanged).
    A bootstrap that answered ran in the activated env; one that did not leaves the activation
    marker, or its absence, in what the command printed."""
    command = connection.start_command(diagnosis.doctor_command(settings, evaluation, bootstrap_source()))
    answered, (exit_code, stdout, stderr) = Starter(command, settings, scripts_for(settings, extra=(PROBE, ZEROSHOT))) \
        .run_to_end(min(settings.step_timeout, PROBE_TIMEOUT_SECONDS))
    return diagnosis.parse_probe(exit_code, stdout, stderr, activated=True if answered else None)


def _with_task(settings: Settings, evaluation: Evaluation, session: Session) -> tuple[Evaluation, Check | None]:
    """EVALUATION with the task and split its dataset folder's layout says (as an evaluation
    decides them: dataset_layout.look, zeroshot.scoped), and the line saying so: none for
    retrieval, a ✗ when the folder has label_cn.txt but no split of class folders."""
    from .dataset_layout import look
    try:
        layout = look(settings, [evaluation.dataset], session)[evaluation.dataset]
        scope, note = zeroshot.scoped(Scope(evaluation.dataset, evaluation.split), layout)
    except EvalkitError as error:
        return evaluation, Check("task", False, error.message, error.hint)
    if note is None:
        return evaluation, None
    return dataclasses.replace(evaluation, task=scope.task, split=scope.split), Check("task", True, note)


def _slurm_checks(connection: Connection, settings: Settings,
                  probed: list[str] | None) -> tuple[list[Check], str | None]:
    """The login node's Slurm: its commands, its controller, the partition and its GPUs; with
    PROBED, a tiny job that stats those paths on a compute node: its stdout too, when it ran."""
    def said(command: str) -> tuple[int, str]:
        code, stdout, stderr = connection.capture(command, timeout=settings.connect_timeout * 4)
        return code, (stdout or stderr).decode("utf-8", "replace")

    checks = slurm_job.doctor_checks(said(slurm_job.FOUND_COMMANDS)[1], said(slurm_job.PING),
                                     said(slurm_job.PARTITIONS), settings.slurm)
    if not probed or not all(check.ok for check in checks):
        return checks, None
    paths = [path for path in probed if path]
    code, stdout, stderr = connection.capture(slurm_job.probe_job_command(settings, paths),
                                              timeout=slurm_job.PROBE_WAIT + 120)
    said = stdout.decode("utf-8", "replace")
    checks.append(slurm_job.probe_job_check(code, said, stderr.decode("utf-8", "replace"), paths))
    lock = slurm_job.lock_check(said) if code == 0 else None
    checks += [lock] if lock else []
    return checks, said if code == 0 else None


def preflight(settings: Settings, evaluation: Evaluation, ran: tuple[int, bytes, bytes]) -> None:
    """Before an extraction, the doctor's cheap server-side checks for EVALUATION; raise on the first ✗.

    RAN is the probe's exit status and output, run by the run's starter in the env it activated
    (diagnosis.preflight_call): the texts, the image ids they name in the LMDB, the upstream
    scripts, the disk, and the checkpoint's tensor shapes against the towers requested (read
    from the archive without importing torch: milliseconds, against minutes of GPU time for an
    extraction that would fail).
    """
    refusal = diagnosis.preflight_refusal(diagnosis.parse_probe(*ran, activated=True), settings, evaluation)
    if refusal is not None:
        raise refusal


def _connection_checks(target: Target, error: EvalkitError | None) -> list[Check]:
    return diagnosis.connection_checks(target.address, target.known_hosts_name, target.user, error)


def _existing(paths: tuple[str, ...]) -> list[str]:
    return [path for path in paths if os.path.exists(path)]
