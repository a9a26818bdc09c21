"""The one clock: every time evalkit writes is UTC, ISO 8601; names use its compact form.

Manifests keep microseconds because "the most recent extraction" on the server compares these
strings; everything else keeps seconds. Both sort as text in time order.
"""
from __future__ import annotations

from datetime import datetime, timezone


def now() -> datetime:
    return datetime.now(timezone.utc)


def timestamp(moment: datetime | None = None) -> str:
    """2026-12-02T12:03:04+00:00"""
    return (moment or now()).isoformat(timespec="seconds")


def precise_timestamp(moment: datetime | None = None) -> str:
    """2026-12-02T12:03:04.123456+00:00: the same format, to the microsecond."""
    return (moment or now()).isoformat(timespec="microseconds")


def name_stamp(moment: datetime | None = None) -> str:
    """20261202-120304: the same instant, safe in a file name or a shell without quoting."""
    return (moment or now()).strftime("%Y%m%d-%H%M%S")
