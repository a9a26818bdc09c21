"""Resolve an ssh alias the way the user's own `ssh` would, into a Target per hop.

The OpenSSH client parses the config (`ssh -G`), so HostName, Port, User, IdentityFile,
ProxyJump, Include and Match behave as in the user's terminal; without it, paramiko's parser.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
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
    identity_agent: str | None = None  # None: $SSH_AUTH_SOCK; "none": no agent; else its socket
    known_hosts_files: tuple[str, ...] = ()
    proxy_jump: tuple["Target", ...] = field(default=())

    @property
    def address(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this host in known_hosts."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


# OpenSSH reads this after the user's config unless -F names another; a test points it elsewhere.
SYSTEM_SSH_CONFIG = Path("/etc/ssh/ssh_config")
MAX_JUMPS = 8  # ProxyJump hops behind one another, as far as evalkit follows them
# What ssh offers when the config names no IdentityFile (`ssh -G` lists them itself).
_DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
                       "~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa")


def default_ssh_config() -> Path:
    return Path.home() / ".ssh" / "config"


def resolve_target(destination: str, ssh_config: Path | None = None) -> Target:
    """Resolve [user@]HOST[:port] the way `ssh` would.

    With SSH_CONFIG, only that file is read (`ssh -F`); without it, ~/.ssh/config and then the
    system's /etc/ssh/ssh_config. An explicit user or port wins, as on ssh's command line.
    """
    return _resolve(destination, ssh_config, ())


def _resolve(destination: str, ssh_config: Path | None, via: tuple[str, ...]) -> Target:
    user, alias, port = _split_destination(destination)
    chain = (*via, destination)
    if destination in via or len(via) > MAX_JUMPS:
        what = "loops" if destination in via else f"is longer than {MAX_JUMPS} hops"
        raise ConnectError(f"the ProxyJump chain {' -> '.join(chain)} {what}",
                           f"fix the ProxyJump lines of {ssh_config or default_ssh_config()} so that "
                           f"each jump host is reached without a jump back")
    options = _ssh_g(alias, ssh_config) if shutil.which("ssh") else _paramiko_lookup(alias, ssh_config)
    jumps = tuple(_resolve(hop, ssh_config, chain) for hop in _jump_hops(options))
    return Target(
        alias=destination,
        hostname=options.get("hostname", [alias])[0],
        port=port or int(options.get("port", ["22"])[0]),
        user=user or options.get("user", [pwd.getpwuid(os.getuid()).pw_name])[0],
        identity_files=tuple(_home_path(p) for p in options.get("identityfile", _DEFAULT_IDENTITIES)),
        identities_only=options.get("identitiesonly", ["no"])[0].lower() == "yes",
        identity_agent=_identity_agent(options.get("identityagent", [None])[0]),
        known_hosts_files=tuple(_home_path(p) for key in ("userknownhostsfile", "globalknownhostsfile")
                                for p in options.get(key, [])),
        proxy_jump=jumps,
    )


def _identity_agent(value: str | None) -> str | None:
    if value is None or value.startswith("$") or value == "SSH_AUTH_SOCK":
        return value
    return "none" if value.lower() == "none" else _home_path(value)


def _split_destination(destination: str) -> tuple[str | None, str, int | None]:
    """[ssh://][user@]host[:port] -> (user, host, port); IPv6 literals may be [bracketed].

    A host that begins with '-' would reach `ssh -G` as an option (`user@-oProxyCommand=...`).
    """
    text = destination.removeprefix("ssh://")
    user, _, host = text.rpartition("@")
    if (not host or destination.startswith("-") or host.lstrip("[").startswith("-")
            or any(c.isspace() for c in destination)):
        raise ConnectError(f"invalid host {destination!r}",
                           "give an alias from ~/.ssh/config or user@host (a host name cannot be "
                           "empty, begin with '-' or hold spaces)")
    port = None
    if host.startswith("[") and "]" in host:
        host, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif host.count(":") == 1:
        host, port = host.split(":")
    if port is not None and not port.isdigit():
        raise ConnectError(f"invalid port in {destination!r}", "write it as user@host:PORT")
    return user or None, host, int(port) if port else None


def _ssh_g(alias: str, config: Path | None) -> dict[str, list[str]]:
    with tempfile.TemporaryDirectory(prefix="evalkit-ssh-") as scratch:
        config_arg = _config_argument(config, Path(scratch))
        try:
            done = subprocess.run(["ssh", "-G", "-F", config_arg, alias], capture_output=True,
                                  text=True, timeout=10, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ConnectError(f"`ssh -G {alias}` did not answer in 10 s",
                               f"check {config or default_ssh_config()}") from exc
    if done.returncode != 0:
        shown = config or f"{default_ssh_config()} or {SYSTEM_SSH_CONFIG}"
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no reason given"
        raise ConnectError(f"cannot resolve ssh host {alias!r} from {shown}: {reason}",
                           f"fix the Host {alias} entry in {config or default_ssh_config()}")
    options: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        key = key.lower()
        values = value.split() if key.endswith("knownhostsfile") else [value]
        options.setdefault(key, []).extend(values)
    return options


def _config_argument(config: Path | None, scratch: Path) -> str:
    """What `ssh -G -F` reads: the config the user named, or ~/.ssh/config then the system's.

    Without -F ssh would read the config under the passwd entry's home rather than $HOME, which
    is the home evalkit (and every test) means; so a file in SCRATCH includes both, in ssh's order.
    """
    if config is not None:
        return str(config) if config.exists() else os.devnull
    wrapper = scratch / "ssh_config"
    wrapper.write_text("".join(f'Include "{path}"\n' for path in _default_configs()))
    return str(wrapper)


def _default_configs() -> list[Path]:
    return [path for path in (default_ssh_config(), SYSTEM_SSH_CONFIG) if path.exists()]


def _paramiko_lookup(alias: str, config: Path | None) -> dict[str, list[str]]:
    lend_invoke()
    parsed = paramiko.SSHConfig()
    for path in [config] if config is not None else _default_configs():
        if path.exists():
            with path.open() as lines:
                parsed.parse(lines)  # first value wins across files, as in ssh
    options = {key: value if isinstance(value, list) else str(value).split()
               if key.endswith("knownhostsfile") else [str(value)]
               for key, value in parsed.lookup(alias).items()}
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
