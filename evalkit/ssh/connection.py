"""One SSH connection to a resolved Target: opened through its ProxyJump hops, host keys checked
against the user's known_hosts and never added automatically; commands and SFTP over it."""
from __future__ import annotations

import os
import posixpath
import secrets
import socket
import threading
from typing import Callable

from ..errors import AuthenticationError, ConnectError, ConnectionLost, HostKeyError, TransferUnavailable
from ._paramiko import paramiko
from .command import OutputSink, PendingCommand
from .identities import OpenSshIdentities, open_agent
from .known_hosts import KnownHostsPolicy
from .resolve import Target
from .server_disk import write_failure

KEEPALIVE_SECONDS = 15
DEAD_PEER_SECONDS = 30  # an SFTP request unanswered this long means the peer is gone


# Errors that mean the link itself is gone (a dead socket, a closed transport, a silent peer).
_LINK_ERRORS = (paramiko.SSHException, EOFError, socket.timeout, ConnectionError)


class RequestCounter:
    """What a connection asked of the server: SFTP requests (each one a round trip that something
    waits for) and channels opened (each command, each SFTP client). Tests and benchmarks read it
    (snapshot) to hold evalkit to the round trips its work needs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"sftp_requests": 0, "channels": 0}

    def add(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Connection:
    """One SSH connection: opened lazily, closed by the context manager. Threads may share it
    (a sweep's GPU queue): each gets its own SFTP client over the one transport, and a reconnect
    is made once for all of them (reconnect's SINCE)."""

    def __init__(self, target: Target, connect_timeout: float = 15.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self._clients: list[paramiko.SSHClient] = []
        self._lock = threading.RLock()  # opening, closing, reconnecting and the SFTP clients' list
        self._generation = 0            # how many times it was opened: a reconnect makes the next
        self._sftp_clients: list[paramiko.SFTPClient] = []
        self._own = threading.local()   # this thread's (generation, SFTP client)
        self._closing: list[Callable[[], None]] = []  # when_closed's callbacks, each called once
        self.requests = RequestCounter()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def generation(self) -> int:
        """Which opening of the connection is current; pass it to reconnect (see there)."""
        return self._generation

    def open(self) -> "Connection":
        """Connect now (through each ProxyJump hop in turn), so failures surface before any work."""
        with self._lock:
            if not self._clients:
                chain = (*self.target.proxy_jump, self.target)
                sock = None
                try:
                    for index, hop in enumerate(chain):
                        self._clients.append(self._connect_hop(hop, sock))
                        if index + 1 < len(chain):
                            sock = self._tunnel(self._clients[-1], next_hop=chain[index + 1])
                except BaseException:
                    self.close()  # a jump host reached, the target not: not open, the next call tries again
                    raise
                self._generation += 1
        return self

    @property
    def client(self) -> paramiko.SSHClient:
        with self._lock:  # another thread's reconnect empties the list before it fills it again
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
        policy = KnownHostsPolicy(hop)  # known_hosts is read here, not by paramiko
        client.set_missing_host_key_policy(policy)
        agent = open_agent(hop)
        try:
            client.connect(hop.hostname, hop.port, hop.user, auth_strategy=OpenSshIdentities(hop, agent),
                           transport_factory=_transport_preferring(policy.preferred_algorithms()),
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout,
                           sock=sock)
        except BaseException as exc:
            client.close()
            raise _translate_connect_error(exc, hop, agent) from exc
        finally:
            if agent is not None:
                agent.close()  # needed only to sign during authentication
        client.get_transport().set_keepalive(KEEPALIVE_SECONDS)
        return client

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call CALLBACK once, at the next close (or reconnect), before the connection goes: what
        was begun on it for later (starter.py's early starter) ends rather than lingers."""
        with self._lock:
            self._closing.append(callback)

    def close(self) -> None:
        with self._lock:
            callbacks, self._closing = self._closing, []
            for callback in callbacks:
                callback()
            for sftp in self._sftp_clients:
                try:
                    sftp.close()
                except (paramiko.SSHException, OSError, EOFError):
                    pass  # closing a dead connection: nothing left to tidy
            self._sftp_clients.clear()
            for client in reversed(self._clients):
                client.close()
            self._clients.clear()

    def reconnect(self, since: int | None = None) -> None:
        """Drop whatever is left of the connection and open a new one (same checks as open).
        SINCE: the generation a caller saw fail; when another thread has reconnected since, the
        new connection is kept and nothing is done."""
        with self._lock:
            if since is not None and since != self._generation and self._clients:
                return
            self.close()
            self.open()

    def run(self, command: str, sink: OutputSink, timeout: float) -> int:
        """Run COMMAND; feed stdout and stderr to SINK as they arrive; return the exit status.

        Both streams are drained in one loop, so a chatty stream can never block the other.
        """
        return self.start_command(command).stream(b"", sink, timeout)

    def capture(self, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        """Run a short COMMAND to its end: (exit status, stdout, stderr)."""
        return self.start_command(command).finish(b"", timeout)

    def start_command(self, command: str) -> PendingCommand:
        """Start COMMAND now; it waits on its stdin, which PendingCommand.finish gives it later."""
        return PendingCommand(self._exec(command), self.target.alias)

    def _exec(self, command: str) -> paramiko.Channel:
        channel = None
        try:
            self.requests.add("channels")
            channel = self.client.get_transport().open_session(timeout=self.connect_timeout)
            channel.exec_command(command)
            return channel
        except (paramiko.SSHException, OSError) as exc:
            if channel is not None:  # the command refused: its session is one of the server's few (MaxSessions)
                channel.close()
            raise ConnectionLost(f"could not start a command on {self.target.alias}: {exc}",
                                 "check the connection and run again") from exc

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """This thread's SFTP client (paramiko's is not safe to share between threads)."""
        mine = getattr(self._own, "sftp", None)
        if mine is not None and mine[0] == self._generation:
            return mine[1]
        with self._lock:  # the client and the opening it belongs to, read together
            client, generation = self.client, self._generation
        sftp = self._open_sftp(client)  # not under the lock: a silent peer must hold up this thread alone
        with self._lock:
            self._sftp_clients.append(sftp)  # close() closes every thread's
        self._own.sftp = (generation, sftp)
        return sftp

    def _open_sftp(self, client: paramiko.SSHClient) -> paramiko.SFTPClient:
        try:
            self.requests.add("channels")
            sftp = client.open_sftp()
        except _LINK_ERRORS as exc:
            transport = client.get_transport()
            if transport is not None and transport.is_active():  # the link is fine: SFTP was refused
                raise TransferUnavailable(
                    f"{self.target.alias} ({self.target.address}) has no SFTP subsystem: this needs it "
                    "(Slurm runs read or write files over SFTP)",
                    "enable it on the server (OpenSSH: `Subsystem sftp /usr/lib/openssh/sftp-server` in "
                    "sshd_config; dropbear: install its sftp-server), then run again") from exc
            raise self._lost(exc) from exc
        # a silent peer fails each request after this long (keepalives alone never would)
        sftp.get_channel().settimeout(DEAD_PEER_SECONDS)
        _count_requests(sftp, self.requests)
        return sftp

    def size_of(self, path: str) -> int | None:
        """The file's size, or None when it does not exist; ConnectionLost when the link is dead."""
        found = self._stat(path)
        return found.st_size if found is not None else None

    def _stat(self, path: str) -> paramiko.SFTPAttributes | None:
        try:
            return self.sftp.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if self._is_link_down(exc):
                raise self._lost(exc) from exc
            return None
        except _LINK_ERRORS as exc:
            raise self._lost(exc) from exc

    def read_bytes(self, path: str) -> bytes:
        """All of PATH; FileNotFoundError when it cannot be read, ConnectionLost when the link is dead."""
        try:
            with self.sftp.open(path, "rb") as remote:
                return self._read_to_end_or_lost(remote)
        except (*_LINK_ERRORS, OSError) as exc:
            if self._is_link_down(exc):
                raise self._lost(exc) from exc
            raise FileNotFoundError(path) from exc

    def _read_to_end_or_lost(self, remote: paramiko.SFTPFile) -> bytes:
        """All of REMOTE's bytes. paramiko reads a channel that closed under a
        read request as the file's end, so a dropped link would pass for a short file: a read
        whose channel is gone when it returns is the link lost (the caller reads again)."""
        data = remote.read()
        channel = remote.sftp.get_channel()
        if channel.closed or channel.eof_sent or channel.eof_received:
            raise EOFError("the SFTP channel closed during the read")
        return data

    def write_bytes(self, path: str, data: bytes, folder_mode: int = 0o755) -> None:
        """Write atomically: a new temporary file beside PATH (exclusive create, so a symlink
        planted at its name fails it rather than redirect it), then rename over PATH (which
        replaces a symlink there, never follows it). Missing folders are made FOLDER_MODE.
        ConnectionLost when the link is down; ServerFileError (the path, the cause, the disk)
        when the server refused, with no temporary file left behind."""
        # unique per writer: concurrent runs upload the same helper scripts
        temporary = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.mkdirs(posixpath.dirname(path), folder_mode)
            with self.sftp.open(temporary, "wbx") as remote:
                remote.write(data)
            self.sftp.posix_rename(temporary, path)
        except (*_LINK_ERRORS, OSError) as exc:
            if self._is_link_down(exc):
                raise self._lost(exc) from exc
            self._remove_if_there(temporary)
            raise write_failure(self.capture, path, exc, self.connect_timeout) from exc

    def _remove_if_there(self, path: str) -> None:
        try:
            self.sftp.remove(path)
        except OSError:
            pass  # never created, or the server refuses this too: nothing more to do

    def mkdirs(self, path: str, mode: int = 0o755) -> None:
        """`mkdir -p PATH` over SFTP, each folder it makes MODE (less the server's umask); a
        directory another run makes meanwhile is fine. From PATH up, as far as folders are
        missing: a folder that exists costs one request, a new one in an existing folder two (each
        a round trip to a far server), whatever the depth of PATH."""
        if self._is_there(path):
            return
        try:
            self.sftp.mkdir(path, mode)
            return
        except OSError:
            parent = posixpath.dirname(path.rstrip("/"))
            if self._is_there(path) or parent in ("", "/", path) or self._is_there(parent):
                self.sftp.stat(path)  # made meanwhile by a concurrent run: fine; else the refusal
                return
        self.mkdirs(parent, mode)
        try:
            self.sftp.mkdir(path, mode)
        except OSError:
            self.sftp.stat(path)  # made meanwhile by a concurrent run: fine

    def _is_there(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
            return True
        except OSError:
            return False

    def _is_link_down(self, exc: BaseException) -> bool:
        """Is EXC the link going (a dead socket, a closed transport, a silent peer), rather than
        the server refusing a request? A refusal carries an errno (ENOENT, EACCES) except SFTP's
        generic "Failure" (a full disk, a quota, EIO, EISDIR), which reads like a closed socket's
        error: the transport tells them apart."""
        if isinstance(exc, _LINK_ERRORS):
            return True
        if not isinstance(exc, OSError) or exc.errno is not None:
            return False
        with self._lock:
            transport = self._clients[-1].get_transport() if self._clients else None
        return transport is None or not transport.is_active()

    def _lost(self, exc: BaseException) -> ConnectionLost:
        return ConnectionLost(f"the connection to {self.target.alias} dropped: {exc or type(exc).__name__}",
                              "check the network; the run goes on on the server")


def _count_requests(sftp: paramiko.SFTPClient, counter: RequestCounter) -> None:
    """Every request SFTP sends (a stat, an open, each read or write, a close) passes through
    _async_request, its files' too: counted there."""
    send = sftp._async_request

    def counted(*args, **kwargs):
        counter.add("sftp_requests")
        return send(*args, **kwargs)
    sftp._async_request = counted


def _translate_connect_error(exc: BaseException, hop: Target,
                             agent: paramiko.agent.AgentSSH | None) -> BaseException:
    """The EvalkitError a failed connect to HOP means; other exceptions (Ctrl-C) pass unchanged."""
    where = f"{hop.alias} ({hop.address})"
    if isinstance(exc, (HostKeyError, KeyboardInterrupt)):
        return exc
    if isinstance(exc, paramiko.AuthenticationException):
        return AuthenticationError(f"{where} refused authentication as {hop.user!r}",
                                   f"check that `ssh {hop.alias}` logs in without a password; "
                                   f"{_offered(hop, agent)}")
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


def _offered(hop: Target, agent: paramiko.agent.AgentSSH | None) -> str:
    """Which keys were offered, and why the agent's were not, for the authentication hint."""
    files = [path for path in hop.identity_files if os.path.exists(path)]
    said = f"key files offered: {', '.join(files) or 'none found'}"
    if hop.identity_agent == "none":
        return said + " (IdentityAgent none: no agent keys)"
    if agent is None or not agent.get_keys():
        return said + " (no agent keys)"
    if hop.identities_only:
        return said + " (IdentitiesOnly yes: the agent's other keys were not offered)"
    return said + f" and the agent's {len(agent.get_keys())} keys"


def _transport_preferring(algorithms: list[str]):
    """A Transport maker that asks first for the host key algorithms known_hosts can check,
    as ssh does; the server may still offer another, which then reads as CHANGED or unknown."""
    def make(sock, disabled_algorithms=None) -> paramiko.Transport:
        transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms)
        options = transport.get_security_options()
        offered = list(options.key_types)
        options.key_types = [a for a in algorithms if a in offered] + [a for a in offered if a not in algorithms]
        return transport
    return make
