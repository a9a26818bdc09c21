"""`python -m evalkit doctor` over a Connection: resolve, connect, run the probe, interpret.

Also the evaluation's checkpoint preflight (check_checkpoint_architecture), which runs only the
checkpoint part of the same probe. What the facts mean is decided in doctor.py, without I/O.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from . import doctor
from .architecture import Architecture, infer_architecture
from .config import Settings
from .doctor import Check, ProbeRun
from .errors import EvalkitError
from .pipeline import upload_helper, upload_helpers
from .plan import Request, helper_path, resolve_checkpoint
from .ssh import Connection, Target, resolve_target

PROBE_TIMEOUT_SECONDS = 900.0  # loading a multi-GB checkpoint without mmap takes minutes


def run_doctor(settings: Settings, request: Request,
               on_check: Callable[[Check], None] = lambda check: None) -> list[Check]:
    """Every check in order, each handed to ON_CHECK as soon as it is known.

    Stops after a failed ssh check, since nothing on the server can be checked then.
    """
    checks: list[Check] = []

    def add(*found: Check) -> None:
        for check in found:
            checks.append(check)
            on_check(check)

    try:
        target = resolve_target(settings.host, Path(settings.ssh_config) if settings.ssh_config else None)
    except EvalkitError as error:
        add(doctor.alias_failure(error))
        return checks
    add(doctor.alias_check(settings.host, target.address, _existing(target.identity_files),
                           [hop.address for hop in target.proxy_jump]))
    connection = Connection(target, settings.connect_timeout)
    try:
        connection.open()
    except EvalkitError as error:
        add(*_connection_checks(target, error))
        return checks
    with connection:
        add(*_connection_checks(target, None))
        try:
            upload_helpers(connection, settings, extra=(doctor.PROBE_NAME,))
        except OSError as exc:  # sftp: permission denied, no such directory, disk full
            add(doctor.upload_failure(helper_path(settings, doctor.PROBE_NAME), str(exc) or type(exc).__name__))
            return checks
        checkpoint = resolve_checkpoint(settings, request.model_path) if request.model_path else None
        run = _probe(connection, doctor.doctor_command(settings, request, checkpoint), settings)
        add(*doctor.interpret(run, settings, request))
    return checks


def check_checkpoint_architecture(connection: Connection, settings: Settings,
                                  request: Request) -> Architecture | None:
    """Before extraction: raise unless request.model_path loads and has the towers requested.

    Raises MissingInput (exit 12) for a checkpoint that is missing, unreadable or cannot be
    loaded, ConfigError (exit 3) when its towers are not --vision-model / --text-model. Returns
    the inferred architecture, or None when the env could not run the probe (the upstream step
    will then fail and say why).
    """
    upload_helper(connection, settings, doctor.PROBE_NAME)
    checkpoint = resolve_checkpoint(settings, request.model_path)
    run = _probe(connection, doctor.checkpoint_probe_command(settings, checkpoint), settings)
    refusal = doctor.checkpoint_refusal(run, request)
    if refusal is not None:
        raise refusal
    shapes = ((run.facts or {}).get("checkpoint") or {}).get("shapes")
    return infer_architecture(shapes) if shapes else None


def preflight(connection: Connection, settings: Settings, request: Request,
              ran: tuple[int, bytes, bytes] | None = None) -> None:
    """Before an extraction, the doctor's cheap server-side checks for REQUEST; raise on the first ✗.

    One probe run (RAN: its exit status and output, when the run's starter ran it), with the
    probe already uploaded: the texts, the image ids they name in the
    LMDB, the upstream scripts, the disk, and the checkpoint's tensor shapes against the towers
    requested (read from the archive without importing torch: milliseconds, against minutes of
    GPU time for an extraction that would fail).
    """
    if ran is not None:  # by the run's starter, in the env it activated
        run = doctor.parse_probe(*ran, activated=True)
    else:
        checkpoint = resolve_checkpoint(settings, request.model_path)
        run = _probe(connection, doctor.preflight_command(settings, request, checkpoint), settings)
    refusal = doctor.preflight_refusal(run, settings, request)
    if refusal is not None:
        raise refusal


def _probe(connection: Connection, command: str, settings: Settings) -> ProbeRun:
    exit_code, stdout, stderr = connection.capture(command, timeout=min(settings.step_timeout,
                                                                         PROBE_TIMEOUT_SECONDS))
    return doctor.parse_probe(exit_code, stdout, stderr)


def _connection_checks(target: Target, error: EvalkitError | None) -> list[Check]:
    return doctor.connection_checks(target.address, target.known_hosts_name, target.user, error)


def _existing(paths: tuple[str, ...]) -> list[str]:
    return [path for path in paths if os.path.exists(path)]
