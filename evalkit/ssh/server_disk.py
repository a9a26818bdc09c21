"""Why the server refused a write: SFTP says only "Failure" for a full disk, a quota or an I/O
error (SSH2_FX_FAILURE carries no errno), so the disk under the path is asked with `df`."""
from __future__ import annotations

import posixpath
import shlex
from typing import Callable

from ..diagnosis import size
from ..errors import EvalkitError, ServerFileError

Capture = Callable[[str, float], tuple[int, bytes, bytes]]  # Connection.capture
FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded")  # strerror(ENOSPC), strerror(EDQUOT)
# a refused write with this little left was the disk filling up (others may have freed a little since)
NEARLY_FULL = 1 << 20


def write_failure(capture: Capture, path: str, cause: BaseException | str, timeout: float) -> ServerFileError:
    """The error for PATH not written on the server: the file, the cause and the disk it is on."""
    said = cause if isinstance(cause, str) else (cause.strerror or str(cause) or type(cause).__name__)
    disk = disk_of(capture, posixpath.dirname(path.rstrip("/")) or "/", timeout)
    if disk is None:
        return ServerFileError(f"could not write {path} on the server: {said}",
                               "check that the server's disk has room and that the path is writable there")
    mount, free = disk
    if free < NEARLY_FULL or any(text in said for text in FULL_DISK_TEXTS):
        return ServerFileError(f"the server's disk at {mount} is full ({size(free)} free): {path} could not be "
                               f"written ({said})", f"free space on {mount}, or set remote_output_dir to a bigger disk")
    return ServerFileError(f"could not write {path} on the server: {said} ({mount} has {size(free)} free, so a "
                           "disk quota, an I/O error or a directory in its way)", "check that path on the server")


def filled_up(capture: Capture, step: str, folder: str, said: str, timeout: float) -> ServerFileError:
    """The error for STEP stopped by a full disk under FOLDER (its output said SAID)."""
    disk = disk_of(capture, folder, timeout)
    where, now = (f"at {disk[0]}", f"; {size(disk[1])} free now") if disk else (f"under {folder}", "")
    return ServerFileError(f"step {step} stopped: the server's disk {where} filled up ({said.strip()}){now}",
                           "free space on it, or set remote_output_dir to a bigger disk; the step's half-written "
                           "outputs were removed")


def disk_of(capture: Capture, folder: str, timeout: float) -> tuple[str, int] | None:
    """(mount point, bytes free to the user) of the disk FOLDER is on, or None when df cannot say."""
    try:
        exit_code, stdout, _ = capture(f"df -Pk -- {shlex.quote(folder)}", timeout)
    except EvalkitError:
        return None
    return parse_df(stdout.decode("utf-8", "replace")) if exit_code == 0 else None


def parse_df(output: str) -> tuple[str, int] | None:
    """`df -Pk`'s one row: (its mount point, which may hold spaces; its available bytes)."""
    lines = output.strip().splitlines()
    fields = lines[-1].split(None, 5) if len(lines) > 1 else []
    if len(fields) < 6 or not fields[3].isdigit():
        return None
    return fields[5], int(fields[3]) * 1024

