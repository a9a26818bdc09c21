"""A Connection that survives the link dropping while a run is followed: the one place where
evalkit reconnects, with bounded backoff. The run goes on on the server meanwhile, and every
read is by offset, so nothing is lost or shown twice after a reconnect."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

from .errors import ConnectError, ConnectionLost
from .ssh import Connection, PendingCommand

T = TypeVar("T")
FIRST_PAUSE, LONGEST_PAUSE = 1.0, 30.0


class Session:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.reconnect_for = 0.0  # until resilient(): a dropped link fails at once
        self._note: Callable[[str], None] = lambda text: None
        self._give_up_hint: str | None = None

    def resilient(self, reconnect_for: float, note: Callable[[str], None], give_up_hint: str) -> None:
        """From now on reconnect for up to RECONNECT_FOR seconds, telling NOTE; when that is
        not enough, fail with GIVE_UP_HINT as the fix."""
        self.reconnect_for, self._note, self._give_up_hint = reconnect_for, note, give_up_hint

    def call(self, operation: Callable[[Connection], T]) -> T:
        """OPERATION on the connection, reconnecting while the link is down (also while the
        server refuses connections, as when it restarts). A failure that comes back the same way
        right after a reconnect succeeded is not the link: it is final."""
        deadline, pause, before_reconnect, seen = None, FIRST_PAUSE, None, 0
        while True:
            try:
                # the opening it runs on: threads sharing the connection reconnect it once (reconnect's SINCE)
                seen = self.connection.open().generation
                return operation(self.connection)
            except (ConnectionLost, ConnectError) as lost:
                # refused before any drop: not a link that went away; after one: the server restarting
                if not self.reconnect_for or (deadline is None and isinstance(lost, ConnectError)):
                    raise
                if before_reconnect == lost.message:
                    raise ConnectionLost(f"{lost.message}, again right after reconnecting: the connection is "
                                         "up but this keeps failing", self._give_up_hint) from lost
                before_reconnect = None
                if deadline is None:
                    deadline = time.monotonic() + self.reconnect_for
                    self._note(f"connection lost ({lost.message}); reconnecting, the run goes on on the server")
                if time.monotonic() > deadline:
                    raise ConnectionLost(f"could not reconnect for {self.reconnect_for:.0f} s; the run goes on "
                                         "on the server", self._give_up_hint) from lost
                time.sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE)
                try:
                    self.connection.reconnect(since=seen)
                    self._note("reconnected; resuming where the output left off")
                    before_reconnect = lost.message
                except (ConnectionLost, ConnectError):
                    continue  # refused or unreachable while the server or its sshd restarts

    def check_transfer(self) -> None:
        """A run whose executor asks about it over SFTP (Slurm's state): a server without it is
        refused before the run starts (TransferUnavailable), not after."""
        self.connection.sftp

    # the connection's operations, each surviving a dropped link
    def size_of(self, path: str) -> int | None:
        return self.call(lambda connection: connection.size_of(path))

    def read_bytes(self, path: str) -> bytes:
        return self.call(lambda connection: connection.read_bytes(path))

    def write_bytes(self, path: str, data: bytes, folder_mode: int = 0o755) -> None:
        self.call(lambda connection: connection.write_bytes(path, data, folder_mode))

    def capture(self, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        return self.call(lambda connection: connection.capture(command, timeout))

    def start_command(self, command: str) -> PendingCommand:
        return self.call(lambda connection: connection.start_command(command))
