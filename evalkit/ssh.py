"""The only module that imports paramiko: resolve an ssh alias, connect, run, transfer.

Resolution follows the user's own OpenSSH (`ssh -G`) so HostName, Port, User, IdentityFile,
ProxyJump, Include and Match behave as in their terminal; host keys are checked against their
known_hosts and never added automatically.
"""
from __future__ import annotations

import base64
import hashlib
import importlib
import os
import posixpath
import secrets
import pwd
import select
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# paramiko imports invoke at once (and with it asyncio and unittest.mock: ~40 ms of every run's
# start) only to run a `Match exec` line of an ssh config that paramiko parses itself, and works
# without it. OpenSSH parses the config here (ssh -G); the fallback lends paramiko invoke first.
_INVOKE_BLOCKED = "invoke" not in sys.modules
if _INVOKE_BLOCKED:
    sys.modules["invoke"] = None  # type: ignore[assignment]  # import raises ImportError
try:
    import paramiko
finally:
    if _INVOKE_BLOCKED:
        del sys.modules["invoke"]

from .errors import AuthenticationError, ConnectError, ConnectionLost, HostKeyError
from .progress import last_marked_json

KEEPALIVE_SECONDS = 15
DEAD_PEER_SECONDS = 30  # an SFTP request unanswered this long means the peer is gone
_IDLE_POLL_SECONDS = 0.05
_EOF_GRACE_SECONDS = 5.0
_CHUNK = 65536
OutputSink = Callable[[str, bytes], None]  # (stream name, raw bytes)


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
    _lend_paramiko_invoke()
    found = paramiko.SSHConfig.from_path(str(config)).lookup(alias) if config.exists() else {}
    options = {key: value if isinstance(value, list) else str(value).split()
               if key.endswith("knownhostsfile") else [str(value)] for key, value in found.items()}
    options.setdefault("userknownhostsfile", ["~/.ssh/known_hosts"])
    return options


def _lend_paramiko_invoke() -> None:
    """For `Match exec` (see the import of paramiko above)."""
    if getattr(paramiko.config, "invoke", None) is None:
        try:
            paramiko.config.invoke = importlib.import_module("invoke")
        except ImportError:
            pass  # paramiko names the missing module itself when a Match exec line needs it


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


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    def __init__(self, target: Target) -> None:
        self.target = target

    def missing_host_key(self, client, hostname, key) -> None:
        name = self.target.known_hosts_name
        raise HostKeyError(
            f"{self.target.alias} ({name}) is not in known_hosts: its {key.get_name()} key is "
            f"{fingerprint(key)}",
            f"check that fingerprint with the server's provider, then trust it once with "
            f"`ssh {self.target.alias}` (answer yes) or `ssh-keyscan -p {self.target.port} "
            f"{self.target.hostname} >> ~/.ssh/known_hosts`")


# Errors that mean the link itself is gone (a dead socket, a closed transport, a silent peer).
_LINK_ERRORS = (paramiko.SSHException, EOFError, socket.timeout, ConnectionError)


def _is_link_error(exc: BaseException) -> bool:
    # SFTP status errors carry an errno (ENOENT, EACCES); "Socket is closed" and friends do not.
    return isinstance(exc, _LINK_ERRORS) or (isinstance(exc, OSError) and exc.errno is None)


class Connection:
    """One SSH connection per run: opened lazily, closed by the context manager."""

    def __init__(self, target: Target, connect_timeout: float = 15.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self._clients: list[paramiko.SSHClient] = []
        self._sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> "Connection":
        """Connect now (through each ProxyJump hop in turn), so failures surface before any work."""
        if not self._clients:
            chain = (*self.target.proxy_jump, self.target)
            sock = None
            for index, hop in enumerate(chain):
                self._clients.append(self._connect_hop(hop, sock))
                if index + 1 < len(chain):
                    sock = self._tunnel(self._clients[-1], next_hop=chain[index + 1])
        return self

    @property
    def client(self) -> paramiko.SSHClient:
        return self.open()._clients[-1]

    def _tunnel(self, client: paramiko.SSHClient, next_hop: Target) -> paramiko.Channel:
        try:
            return client.get_transport().open_channel(
                "direct-tcpip", (next_hop.hostname, next_hop.port), ("127.0.0.1", 0),
                timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectError(f"jump host could not reach {next_hop.address}: {exc}",
                               "check the ProxyJump host can connect to it") from exc

    def _connect_hop(self, hop: Target, sock) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        for path in hop.known_hosts_files:
            if os.path.exists(path):
                client.load_system_host_keys(path)
        client.set_missing_host_key_policy(_RejectUnknownHost(hop))
        keys = [p for p in hop.identity_files if os.path.exists(p)]
        try:
            client.connect(hop.hostname, hop.port, hop.user, key_filename=keys or None,
                           look_for_keys=not keys and not hop.identities_only, allow_agent=True,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout,
                           sock=sock)
        except BaseException as exc:
            client.close()
            raise _translate_connect_error(exc, hop) from exc
        client.get_transport().set_keepalive(KEEPALIVE_SECONDS)
        return client

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (paramiko.SSHException, OSError, EOFError):
                pass  # closing a dead connection: nothing left to tidy
            self._sftp = None
        for client in reversed(self._clients):
            client.close()
        self._clients.clear()

    def reconnect(self) -> None:
        """Drop whatever is left of the connection and open a new one (same checks as open)."""
        self.close()
        self.open()

    def size_of(self, path: str) -> int | None:
        """The file's size, or None when it does not exist; ConnectionLost when the link is dead."""
        try:
            return self.sftp.stat(path).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _is_link_error(exc):
                raise self._lost(exc) from exc
            return None
        except _LINK_ERRORS as exc:
            raise self._lost(exc) from exc

    def read_range(self, path: str, offset: int, limit: int) -> bytes:
        """Up to LIMIT bytes of PATH from OFFSET (following a growing log by byte offset)."""
        try:
            with self.sftp.open(path, "rb") as remote:
                remote.seek(offset)
                return remote.read(limit)
        except (*_LINK_ERRORS, OSError) as exc:
            if _is_link_error(exc):
                raise self._lost(exc) from exc
            raise

    def _lost(self, exc: BaseException) -> ConnectionLost:
        return ConnectionLost(f"the connection to {self.target.alias} dropped: {exc or type(exc).__name__}",
                              "check the network; the run goes on on the server")

    def run(self, command: str, sink: OutputSink, timeout: float) -> int:
        """Run COMMAND; feed stdout and stderr to SINK as they arrive; return the exit status.

        Both streams are drained in one loop, so a chatty stream can never block the other.
        """
        return self.start_command(command).stream(b"", sink, timeout)

    def capture(self, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        """Run a short COMMAND to its end: (exit status, stdout, stderr)."""
        return self.start_command(command).finish(b"", timeout)

    def start_command(self, command: str) -> "PendingCommand":
        """Start COMMAND now; it waits on its stdin, which PendingCommand.finish gives it later."""
        return PendingCommand(self, self._exec(command))

    def _exec(self, command: str) -> paramiko.Channel:
        try:
            channel = self.client.get_transport().open_session(timeout=self.connect_timeout)
            channel.exec_command(command)
            return channel
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectionLost(f"could not start a command on {self.target.alias}: {exc}",
                                 "check the connection and run again") from exc

    def _send(self, channel: paramiko.Channel, stdin: bytes, eof: bool = True) -> None:
        """STDIN, then (with EOF) the end of the command's input."""
        try:
            channel.sendall(stdin)
            if eof:
                channel.shutdown_write()
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectionLost(f"the connection to {self.target.alias} dropped: {exc}",
                                 "check the connection and run again") from exc

    def _pump(self, channel: paramiko.Channel, sink: OutputSink, deadline: float, timeout: float) -> int:
        exited_at = None
        while True:
            moved = False
            if channel.recv_ready():
                sink("stdout", channel.recv(_CHUNK))
                moved = True
            if channel.recv_stderr_ready():
                sink("stderr", channel.recv_stderr(_CHUNK))
                moved = True
            if moved:
                continue
            # sshd may send the exit status before it has drained the command's pipes: the
            # output is complete once the peer's EOF has arrived too (or, if a process left
            # behind keeps a pipe open, after a short grace).
            if channel.exit_status_ready():
                exited_at = exited_at or time.monotonic()
                if channel.eof_received or channel.closed or time.monotonic() - exited_at > _EOF_GRACE_SECONDS:
                    return channel.recv_exit_status()  # ready: returns at once
            if channel.closed or not channel.get_transport().is_active():
                raise ConnectionLost(f"the connection to {self.target.alias} dropped mid-step",
                                     "run again; finished steps' files are kept on the server")
            if time.monotonic() > deadline:
                raise ConnectionLost(f"the step ran longer than step_timeout ({timeout:.0f} s)",
                                     "raise step_timeout in the config file")
            self._await_news(channel)

    @staticmethod
    def _await_news(channel: paramiko.Channel) -> None:
        """Sleep until output, EOF or the exit status arrives (at most _IDLE_POLL_SECONDS): a
        short command's answer is read the moment it comes, not at the next poll."""
        if channel.eof_received:  # the channel stays readable from now on: wait for the status
            channel.status_event.wait(_IDLE_POLL_SECONDS)
        else:
            select.select([channel], [], [], _IDLE_POLL_SECONDS)

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except _LINK_ERRORS as exc:
                raise self._lost(exc) from exc
            # a silent peer fails each request after this long (keepalives alone never would)
            self._sftp.get_channel().settimeout(DEAD_PEER_SECONDS)
        return self._sftp

    def read_bytes(self, path: str) -> bytes:
        try:
            with self.sftp.open(path, "rb") as remote:
                return remote.read()
        except (*_LINK_ERRORS, OSError) as exc:
            if _is_link_error(exc):
                raise self._lost(exc) from exc
            raise FileNotFoundError(path) from exc

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write atomically: a temporary file beside PATH, then rename over it."""
        self.mkdirs(posixpath.dirname(path))
        # unique per writer: concurrent runs upload the same helper scripts
        temporary = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        with self.sftp.open(temporary, "wb") as remote:
            remote.write(data)
        self.sftp.posix_rename(temporary, path)

    def mkdirs(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        current = "/" if path.startswith("/") else ""
        for part in parts:
            current = posixpath.join(current, part)
            try:
                self.sftp.stat(current)
            except OSError:
                try:
                    self.sftp.mkdir(current)
                except OSError:
                    self.sftp.stat(current)  # made meanwhile by a concurrent run: fine


class PendingCommand:
    """A command already running on the server, its login shell and env set up, that reads
    its input once the client knows it (see Connection.start_command)."""

    def __init__(self, connection: Connection, channel: paramiko.Channel) -> None:
        self.connection, self.channel = connection, channel
        # what the command printed after the answer ask() took
        self.unread = {"stdout": bytearray(), "stderr": bytearray()}

    def ask(self, line: bytes, marker: bytes, timeout: float) -> dict | None:
        """Send LINE; return the JSON of the first stdout line after it that starts with MARKER,
        or None when the command ended first (finish() then says how)."""
        self.connection._send(self.channel, line, eof=False)
        deadline = time.monotonic() + timeout
        while True:
            *lines, partial = bytes(self.unread["stdout"]).split(b"\n")
            for index, found in enumerate(lines):
                if found.startswith(marker):
                    self.unread["stdout"] = bytearray(b"\n".join([*lines[index + 1:], partial]))
                    return last_marked_json(found, marker)  # None, like an end, if it is no object
            self.unread["stdout"] = bytearray(partial)  # complete lines before the answer: env chatter
            if self.channel.recv_ready():
                self.unread["stdout"] += self.channel.recv(_CHUNK)
            elif self.channel.recv_stderr_ready():
                self.unread["stderr"] += self.channel.recv_stderr(_CHUNK)
            elif self.channel.eof_received or self.channel.closed or self.channel.exit_status_ready():
                return None
            elif time.monotonic() > deadline:
                raise ConnectionLost(f"the server did not answer within {timeout:.0f} s",
                                     "check the server's load (python -m evalkit doctor) and run again")
            else:
                self.connection._await_news(self.channel)

    def finish(self, stdin: bytes, timeout: float) -> tuple[int, bytes, bytes]:
        """Give the command STDIN and run it to its end: (exit status, stdout, stderr)."""
        output = {"stdout": bytearray(), "stderr": bytearray()}
        exit_code = self.stream(stdin, lambda stream, chunk: output[stream].extend(chunk), timeout)
        return exit_code, bytes(output["stdout"]), bytes(output["stderr"])

    def stream(self, stdin: bytes, sink: OutputSink, timeout: float) -> int:
        """Give the command STDIN, feed SINK what it printed and prints until its end; its status."""
        for name, unread in self.unread.items():
            if unread:
                sink(name, bytes(unread))
        try:
            self.connection._send(self.channel, stdin)
            return self.connection._pump(self.channel, sink, time.monotonic() + timeout, timeout)
        finally:
            self.channel.close()

    def wait_for_output(self, timeout: float) -> bool:
        """Wait up to TIMEOUT for the command to print something (read and dropped: a ring).
        False, at once, when it has ended or the link is gone: the caller must wait otherwise."""
        channel = self.channel
        if channel.closed or channel.eof_received or not channel.get_transport().is_active():
            return False
        select.select([channel], [], [], timeout)
        while channel.recv_ready():
            channel.recv(_CHUNK)
        while channel.recv_stderr_ready():
            channel.recv_stderr(_CHUNK)
        return True

    def abandon(self) -> None:
        """Not needed after all: the command sees an empty stdin (EOF) and ends."""
        self.channel.close()


def _translate_connect_error(exc: BaseException, hop: Target) -> BaseException:
    where = f"{hop.alias} ({hop.address})"
    if isinstance(exc, (HostKeyError, KeyboardInterrupt)):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"the host key of {where} CHANGED: known_hosts has {fingerprint(exc.expected_key)}, "
            f"the server offered {fingerprint(exc.key)}. This can mean someone is intercepting the "
            f"connection, or the server was reinstalled",
            f"if the provider confirms the new key, remove the old one with "
            f"`ssh-keygen -R '{hop.known_hosts_name}'` and connect once with `ssh {hop.alias}`")
    if isinstance(exc, paramiko.AuthenticationException):
        return AuthenticationError(f"{where} refused authentication as {hop.user!r}",
                                   f"check that `ssh {hop.alias}` logs in without a password; "
                                   f"keys tried: {', '.join(hop.identity_files) or 'defaults'}")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve host name {hop.hostname!r} for {hop.alias}",
                            f"is {hop.alias!r} a Host entry in ~/.ssh/config (or the config you gave)?")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ConnectError(f"timed out connecting to {where}", "check the host and port, VPN, firewall")
    if isinstance(exc, OSError):
        return ConnectError(f"cannot connect to {where}: {exc.strerror or exc}",
                            "check the host and port, and that the server is running")
    if isinstance(exc, paramiko.SSHException):
        return ConnectError(f"SSH handshake with {where} failed: {exc}", "check the host and port")
    return exc
