"""PURE: file names evalkit makes from names people chose (a label, an experiment folder), kept
within what every filesystem allows (NAME_MAX bytes); a Chinese character is three bytes in UTF-8."""
from __future__ import annotations

import hashlib

NAME_MAX = 255  # bytes in one file name: ext4, XFS, Lustre, NFS, APFS, NTFS (UTF-16 units there)
_MARK_BYTES = 9  # "~" and 8 hex digits


def byte_length(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


def fits(name: str) -> bool:
    return byte_length(name) <= NAME_MAX


def fit(name: str, tail: str = "") -> str:
    """NAME + TAIL when that fits; else NAME's beginning (whole characters), `~`, 8 hex digits of
    NAME's SHA-256 (two long names alike at their beginning stay apart), then TAIL."""
    if fits(name + tail):
        return name + tail
    encoded = name.encode("utf-8", "surrogateescape")
    budget = max(0, NAME_MAX - byte_length(tail) - _MARK_BYTES)
    head = encoded[:budget].decode("utf-8", "ignore")  # a character cut in two is left out
    return f"{head}~{hashlib.sha256(encoded).hexdigest()[:8]}{tail}"
