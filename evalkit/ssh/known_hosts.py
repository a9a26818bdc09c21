"""known_hosts read the way OpenSSH reads it, and the host key check built on it.

paramiko's own loader stops at a `@cert-authority` or `@revoked` line and keeps one key per host
and key type, so a stale line hides the right one. Here every line is kept: markers, hashed
names (`|1|salt|hash`), patterns with `*`, `?` and `!negation`, and `[host]:port`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import HostKeyError
from ._paramiko import paramiko
from .resolve import Target

# Host key algorithms that verify each kind of key in known_hosts (RSA keys sign with SHA-2).
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    return _fingerprint_of(key.asbytes())


def _fingerprint_of(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class Verdict(Enum):
    TRUSTED = "trusted"
    REVOKED = "revoked"
    CHANGED = "changed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Entry:
    """One known_hosts line: its marker ('' for a plain key), host names and key."""

    origin: str  # file:line
    marker: str
    names: str
    key_type: str
    blob: bytes

    def matches(self, name: str) -> bool:
        """Whether NAME (`host` or `[host]:port`) is one this line names, as OpenSSH decides."""
        if self.names.startswith("|1|"):
            return _hashed_name_matches(self.names, name)
        verdict = False
        for pattern in self.names.split(","):
            negated = pattern.startswith("!")
            if _pattern_matches(pattern[1:] if negated else pattern, name):
                if negated:
                    return False  # a negated match rules the line out, whatever else matches
                verdict = True
        return verdict


def _pattern_matches(pattern: str, name: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE | re.DOTALL) is not None


def _hashed_name_matches(hashed: str, name: str) -> bool:
    try:
        _, _, salt, digest = hashed.split("|")
        expected = base64.b64decode(digest, validate=True)
        actual = hmac.new(base64.b64decode(salt, validate=True), name.lower().encode(), "sha1").digest()
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def parse_line(line: str, origin: str) -> Entry | None:
    """The entry on one known_hosts line; None for a comment, a blank or a malformed line."""
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = fields.pop(0) if fields[0].startswith("@") else ""
    if len(fields) < 3:
        return None
    names, key_type, data = fields[:3]
    try:
        blob = base64.b64decode(data, validate=True)
    except binascii.Error:
        return None
    return Entry(origin, marker, names, key_type, blob)


class KnownHosts:
    """Every usable line of the known_hosts files, in order."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, paths: tuple[str, ...]) -> "KnownHosts":
        entries = []
        for path in paths:
            try:
                text = Path(path).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue  # a missing file (known_hosts2, the global one) holds no keys
            for number, line in enumerate(text.splitlines(), 1):
                entry = parse_line(line, f"{path}:{number}")
                if entry is not None:
                    entries.append(entry)
        return cls(entries)

    def for_host(self, name: str) -> list[Entry]:
        """The lines that name NAME: plain keys and @revoked ones.

        @cert-authority lines are left out: they vouch for host *certificates*, which paramiko does
        not verify, so they can never accept a plain host key.
        """
        return [e for e in self.entries if e.marker in ("", "@revoked") and e.matches(name)]

    def check(self, name: str, blob: bytes) -> tuple[Verdict, list[Entry]]:
        """Whether the server key BLOB is trusted for NAME, and the lines that decided it."""
        lines = self.for_host(name)
        revoked = [e for e in lines if e.marker == "@revoked" and e.blob == blob]
        if revoked:
            return Verdict.REVOKED, revoked
        plain = [e for e in lines if not e.marker]
        if any(e.blob == blob for e in plain):  # any line will do, as in ssh
            return Verdict.TRUSTED, [e for e in plain if e.blob == blob]
        return (Verdict.CHANGED, plain) if plain else (Verdict.UNKNOWN, [])

    def preferred_algorithms(self, name: str) -> list[str]:
        """Host key algorithms to ask for first: those whose keys known_hosts holds for NAME."""
        wanted: list[str] = []
        for entry in self.for_host(name):
            for algorithm in _ALGORITHMS.get(entry.key_type, (entry.key_type,)):
                if not entry.marker and algorithm not in wanted:
                    wanted.append(algorithm)
        return wanted


class KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Decides every host key of TARGET itself: paramiko is given no keys, so it asks here."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.known = KnownHosts.load(target.known_hosts_files)

    def preferred_algorithms(self) -> list[str]:
        return self.known.preferred_algorithms(self.target.known_hosts_name)

    def missing_host_key(self, client, hostname, key) -> None:
        target, name = self.target, self.target.known_hosts_name
        verdict, lines = self.known.check(name, key.asbytes())
        where, offered = f"{target.alias} ({target.address})", fingerprint(key)
        if verdict is Verdict.TRUSTED:
            return
        if verdict is Verdict.REVOKED:
            raise HostKeyError(
                f"the host key of {where} is REVOKED: {lines[0].origin} marks its "
                f"{key.get_name()} key {offered} as @revoked, so it is never trusted",
                "ask the server's provider for its new host key; remove the @revoked line only "
                "if they confirm that key is safe again")
        if verdict is Verdict.CHANGED:
            known = ", ".join(f"{_fingerprint_of(e.blob)} ({e.origin})" for e in lines)
            raise HostKeyError(
                f"the host key of {where} CHANGED: known_hosts has {known}, the server offered "
                f"{offered}. This can mean someone is intercepting the connection, or the server "
                f"was reinstalled",
                f"if the provider confirms the new key, remove the old one with "
                f"`ssh-keygen -R '{name}'` and connect once with `ssh {target.alias}`")
        raise HostKeyError(
            f"{target.alias} ({name}) is not in known_hosts: its {key.get_name()} key is {offered}",
            f"check that fingerprint with the server's provider, then trust it once with "
            f"`ssh {target.alias}` (answer yes) or `ssh-keyscan -p {target.port} "
            f"{target.hostname} >> ~/.ssh/known_hosts`")
