"""A command running on the server over its own exec channel: its input, its output, its end.

Connection.start_command opens the channel; from then on PendingCommand alone reads and writes it.
"""
from __future__ import annotations

import select
import time
from typing import Callable

from ..errors import ConnectionLost
from ..progress import last_marked_json
from ._paramiko import paramiko

_IDLE_POLL_SECONDS = 0.05
_EOF_GRACE_SECONDS = 5.0
_CHUNK = 65536
OutputSink = Callable[[str, bytes], None]  # (stream name, raw bytes)


class PendingCommand:
    """A command already running on the server, its login shell and env set up, that reads
    its input once the client knows it (see Connection.start_command).

    ALIAS names the server in the messages of the ConnectionLost it raises.
    """

    def __init__(self, channel: paramiko.Channel, alias: str) -> None:
        self.channel, self.alias = channel, alias
        # what the command printed after the answer ask() took
        self.unread = {"stdout": bytearray(), "stderr": bytearray()}

    def ask(self, line: bytes, marker: bytes, timeout: float) -> dict | None:
        """Send LINE; return the JSON of the first stdout line after it that starts with MARKER,
        or None when the command ended first (finish() then says how, with all it printed)."""
        self._send(line, eof=False)
        deadline = time.monotonic() + timeout
        skipped = bytearray()  # complete lines before the answer: env chatter, dropped once it comes
        while True:
            *lines, partial = bytes(self.unread["stdout"]).split(b"\n")
            for index, found in enumerate(lines):
                if found.startswith(marker):
                    self.unread["stdout"] = bytearray(b"\n".join([*lines[index + 1:], partial]))
                    return last_marked_json(found, marker)  # None, like an end, if it is no object
            skipped += b"".join(found + b"\n" for found in lines)
            self.unread["stdout"] = bytearray(partial)
            if self.channel.recv_ready():
                self.unread["stdout"] += self.channel.recv(_CHUNK)
            elif self.channel.recv_stderr_ready():
                self.unread["stderr"] += self.channel.recv_stderr(_CHUNK)
            elif self.channel.eof_received or self.channel.closed or self.channel.exit_status_ready():
                self.unread["stdout"] = skipped + self.unread["stdout"]  # the doctor reads its env's marker there
                return None
            elif time.monotonic() > deadline:
                raise ConnectionLost(f"the server did not answer within {timeout:.0f} s",
                                     "check the server's load (python -m evalkit doctor) and run again")
            else:
                self._await_news()

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
            self._send(stdin)
            return self._pump(sink, time.monotonic() + timeout, timeout)
        finally:
            self.channel.close()

    def send(self, line: bytes) -> None:
        """LINE on the command's stdin, which stays open (a request on a stream of events)."""
        self._send(line, eof=False)

    def read_output(self, timeout: float) -> bytes | None:
        """What the command printed on stdout since the last read, waiting up to TIMEOUT for
        some (b"" when none came); None once it has ended and all of it was read. Its stderr is
        kept (the last _CHUNK bytes) in unread["stderr"], for the message of a stream that ended."""
        unread = bytes(self.unread["stdout"])
        if unread:
            self.unread["stdout"] = bytearray()
            return unread
        channel = self.channel
        if not channel.recv_ready() and not channel.eof_received and not channel.closed:
            if not channel.get_transport().is_active():
                raise ConnectionLost(f"the connection to {self.alias} dropped",
                                     "check the network; the run goes on on the server")
            select.select([channel], [], [], timeout)
        while channel.recv_stderr_ready():
            self.unread["stderr"] = (self.unread["stderr"] + channel.recv_stderr(_CHUNK))[-_CHUNK:]
        if channel.recv_ready():
            return channel.recv(_CHUNK)
        if channel.eof_received or channel.closed:
            return None
        if not channel.get_transport().is_active():
            raise ConnectionLost(f"the connection to {self.alias} dropped",
                                 "check the network; the run goes on on the server")
        return b""

    def abandon(self) -> None:
        """Not needed after all: the command sees an empty stdin (EOF) and ends."""
        self.channel.close()

    def _send(self, stdin: bytes, eof: bool = True) -> None:
        """STDIN, then (with EOF) the end of the command's input."""
        try:
            self.channel.sendall(stdin)
            if eof:
                self.channel.shutdown_write()
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectionLost(f"the connection to {self.alias} dropped: {exc}",
                                 "check the connection and run again") from exc

    def _pump(self, sink: OutputSink, deadline: float, timeout: float) -> int:
        """Feed SINK both streams until the command has exited and its output is complete."""
        channel, exited_at = self.channel, None
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
            if channel.exit_status_ready() and not self._link_died(channel):
                exited_at = exited_at or time.monotonic()
                if channel.eof_received or channel.closed or time.monotonic() - exited_at > _EOF_GRACE_SECONDS:
                    return channel.recv_exit_status()  # ready: returns at once
            if channel.closed or not channel.get_transport().is_active():
                raise ConnectionLost(f"the connection to {self.alias} dropped mid-step",
                                     "run again; finished steps' files are kept on the server")
            if time.monotonic() > deadline:
                raise ConnectionLost(f"the step ran longer than step_timeout ({timeout:.0f} s)",
                                     "raise step_timeout in the config file")
            self._await_news()

    @staticmethod
    def _link_died(channel: paramiko.Channel) -> bool:
        """A channel closed with the transport under it reads as ready with status -1: that is
        the link dropping (a thread sharing the connection may have reconnected it), not an exit.
        A command killed by a signal reads -1 too, but only after the server's EOF on a live link."""
        return channel.exit_status == -1 and (not channel.eof_received or not channel.get_transport().is_active())

    def _await_news(self) -> None:
        """Sleep until output, EOF or the exit status arrives (at most _IDLE_POLL_SECONDS): a
        short command's answer is read the moment it comes, not at the next poll."""
        if self.channel.eof_received:  # the channel stays readable from now on: wait for the status
            self.channel.status_event.wait(_IDLE_POLL_SECONDS)
        else:
            select.select([self.channel], [], [], _IDLE_POLL_SECONDS)
