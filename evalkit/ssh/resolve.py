"""Resolve an ssh alias the way the user's own `ssh` would, into a Target per hop.

The OpenSSH client parses the config (`ssh -G`), so HostName, Port, User, IdentityFile,
ProxyJump, Include and Match behave as in the user's terminal; without it, paramiko's parser.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConnectError
from ._paramiko import lend_invoke, paramiko


@dataclass(frozen=True)
class Target:
    """One SSH hop, resolved."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    known_hosts_files: tuple[str, ...] = ()
    proxy_jump: tuple["Target", ...] = field(default=())

    @property
    def address(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this host in known_hosts."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def default_ssh_config() -> Path:
    return Path.home() / ".ssh" / "config"


def resolve_target(destination: str, ssh_config: Path | None = None) -> Target:
    """Resolve [user@]HOST[:port] the way `ssh` would, from ssh_config (default ~/.ssh/config).

    An explicit user or port wins over the config file, as on ssh's command line.
    """
    if not destination or destination.startswith("-") or any(c.isspace() for c in destination):
        raise ConnectError(f"invalid host {destination!r}", "give an alias from ~/.ssh/config or user@host")
    user, alias, port = _split_destination(destination)
    config = ssh_config or default_ssh_config()
    options = _ssh_g(alias, config) if shutil.which("ssh") else _paramiko_lookup(alias, config)
    jumps = tuple(resolve_target(hop, ssh_config) for hop in _jump_hops(options))
    return Target(
        alias=destination,
        hostname=options.get("hostname", [alias])[0],
        port=port or int(options.get("port", ["22"])[0]),
        user=user or options.get("user", [pwd.getpwuid(os.getuid()).pw_name])[0],
        identity_files=tuple(_home_path(p) for p in options.get("identityfile", [])),
        identities_only=options.get("identitiesonly", ["no"])[0].lower() == "yes",
        known_hosts_files=tuple(_home_path(p) for key in ("userknownhostsfile", "globalknownhostsfile")
                                for p in options.get(key, [])),
        proxy_jump=jumps,
    )


def _split_destination(destination: str) -> tuple[str | None, str, int | None]:
    """[ssh://][user@]host[:port] -> (user, host, port); IPv6 literals may be [bracketed]."""
    text = destination.removeprefix("ssh://")
    user, _, host = text.rpartition("@")
    port = None
    if host.startswith("[") and "]" in host:
        host, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif host.count(":") == 1:
        host, port = host.split(":")
    if port is not None and not port.isdigit():
        raise ConnectError(f"invalid port in {destination!r}", "write it as user@host:PORT")
    return user or None, host, int(port) if port else None


def _ssh_g(alias: str, config: Path) -> dict[str, list[str]]:
    config_arg = str(config) if config.exists() else os.devnull
    try:
        done = subprocess.run(["ssh", "-G", "-F", config_arg, alias], capture_output=True,
                              text=True, timeout=10, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ConnectError(f"`ssh -G {alias}` did not answer in 10 s", f"check {config}") from exc
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no reason given"
        raise ConnectError(f"cannot resolve ssh host {alias!r} from {config}: {reason}",
                           f"fix the Host {alias} entry in {config}")
    options: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        key = key.lower()
        values = value.split() if key.endswith("knownhostsfile") else [value]
        options.setdefault(key, []).extend(values)
    return options


def _paramiko_lookup(alias: str, config: Path) -> dict[str, list[str]]:
    lend_invoke()
    found = paramiko.SSHConfig.from_path(str(config)).lookup(alias) if config.exists() else {}
    options = {key: value if isinstance(value, list) else str(value).split()
               if key.endswith("knownhostsfile") else [str(value)] for key, value in found.items()}
    options.setdefault("userknownhostsfile", ["~/.ssh/known_hosts"])
    return options


def _jump_hops(options: dict[str, list[str]]) -> list[str]:
    if "proxycommand" in options and options["proxycommand"][0].lower() != "none":
        raise ConnectError("ProxyCommand is not supported", "use ProxyJump in your ssh config instead")
    value = options.get("proxyjump", ["none"])[0]
    return [] if value.lower() == "none" else [hop.strip() for hop in value.split(",") if hop.strip()]


def _home_path(path: str) -> str:
    """Expand ~ and OpenSSH's passwd-home against $HOME, so a test's HOME isolates it fully."""
    home, pw_home = str(Path.home()), pwd.getpwuid(os.getuid()).pw_dir
    if path.startswith("~"):
        return home + path[1:]
    if pw_home != home and (path == pw_home or path.startswith(pw_home.rstrip("/") + "/")):
        return home + path[len(pw_home.rstrip("/")):]
    return path
