"""A run's events as the laptop receives them: one channel on the existing connection over which
remote/job.py (run_events.py) pushes each step's start, output and end, the run's end and a heartbeat (events.py
reads its lines). It is the starter's channel after the launch, or `job.py events` from the
laptop's Position, opened after a reconnect or to attach: nothing is lost or shown twice.

The laptop's writes beside the run (the manifest) and its one ask at the end (the results) go to
the server on the same channel: a write waits for no answer (its Wrote event comes in turn), a
collect for its Bundle alone.
"""
from __future__ import annotations

import time

from .errors import ConnectionLost, RemoteStepFailed
from .events import Bundle, Event, Lines, Position, StreamBroken, Wrote, collect_request, decode, write_request
from .executors.base import Executor, RemoteRun
from .session import Session
from .ssh import PendingCommand
from .ssh.server_disk import write_failure

# the server beats every 3 s (remote/run_events.py BEAT_EVERY): this long without a word, the link is taken for dead
SILENT_AFTER = 20.0
COLLECT = ""  # the collect's key among the unanswered requests (a write's is its path)
ENDED_AGAIN = 3  # streams ended in a row with no event between: the server cannot follow the run


class EventStream:
    def __init__(self, session: Session, executor: Executor, run: RemoteRun,
                 channel: PendingCommand | None = None) -> None:
        self.session, self.executor, self.run = session, executor, run
        self.position = Position()
        self.channel = channel
        self.lines = Lines()
        self.heard_at = time.monotonic()
        self.ended_in_a_row = 0
        # requests not yet answered (writes by their path, and the collect): sent again on a new channel
        self.unanswered: dict[str, bytes] = {}

    def next(self, timeout: float) -> list[Event]:
        """The events that came within TIMEOUT (often none), each new to the laptop; across a
        dropped link (the session reconnects, and the stream resumes from the position)."""
        return self.session.call(lambda connection: self._read(timeout))

    def write(self, path: str, data: bytes) -> None:
        """DATA to PATH on the server (written atomically there, its folders made): sent now,
        answered by a Wrote event that next() checks."""
        self._ask(path, write_request(path, data))

    def collect(self, paths: list[str], timeout: float) -> dict[str, tuple[int, bytes] | None]:
        """PATHS' (mtime, content) on the server, None for each it could not read: one ask."""
        self._ask(COLLECT, collect_request(paths))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.next(0.5):
                if isinstance(event, Bundle):
                    self.unanswered.pop(COLLECT, None)
                    return event.files
        raise ConnectionLost(f"the server did not send run {self.run.run_id}'s results within {timeout:.0f} s",
                             f"python -m evalkit attach {self.run.run_id} tries again")

    def close(self) -> None:
        """The server's end sees EOF and ends."""
        if self.channel is not None:
            self.channel.abandon()
            self.channel = None

    def _ask(self, key: str, request: bytes) -> None:
        """REQUEST sent, and kept under KEY until answered: a new channel gets it again."""
        def send(connection) -> None:
            channel = self._channel()
            try:
                channel.send(request)
            except ConnectionLost:
                self._drop(channel)  # the next try opens a new one (after the session's reconnect)
                raise
        self.session.call(send)
        self.unanswered[key] = request

    def _channel(self) -> PendingCommand:
        if self.channel is None:
            self.lines.drop()
            self.channel = self.executor.open_events(self.run, self.position.as_argument())
            self.heard_at = time.monotonic()
            for request in self.unanswered.values():
                self.channel.send(request)
        return self.channel

    def _read(self, timeout: float) -> list[Event]:
        channel = self._channel()
        try:
            chunk = channel.read_output(timeout)
            if chunk is None:
                return self._ended(channel)
            if not chunk:
                self._check_silence(channel)
                return []
            self.heard_at = time.monotonic()
            return self._events(channel, self.lines.feed(chunk))
        except ConnectionLost:
            self._drop(channel)
            raise

    def _events(self, channel: PendingCommand, lines: list[bytes]) -> list[Event]:
        found = []
        for line in lines:
            try:
                event = decode(line)
                event = self.position.accept(event) if event is not None else None
            except StreamBroken:
                self._drop(channel)  # the next read opens a new stream from the position
                return found
            if event is None:
                continue
            self.ended_in_a_row = 0
            if isinstance(event, Wrote):
                self._written(event)
            found.append(event)
        return found

    def _written(self, wrote: Wrote) -> None:
        self.unanswered.pop(wrote.path, None)
        if wrote.error is not None:
            capture = self.session.connection.capture
            raise write_failure(capture, wrote.path, wrote.error, self.session.connection.connect_timeout)

    def _ended(self, channel: PendingCommand) -> list[Event]:
        """The server's end ended before the run did (killed, or its python failed): a new one
        from the position, unless that keeps happening."""
        self._drop(channel)
        self.ended_in_a_row += 1
        if self.ended_in_a_row >= ENDED_AGAIN:
            said = bytes(channel.unread["stderr"]).decode("utf-8", "replace").strip().splitlines()[-3:]
            raise RemoteStepFailed(f"the server stopped sending run {self.run.run_id}'s events"
                                   + (f": {' '.join(said)}" if said else ""),
                                   f"check the `python` setting (python -m evalkit doctor); the run goes on: "
                                   f"python -m evalkit attach {self.run.run_id}")
        return []

    def _check_silence(self, channel: PendingCommand) -> None:
        silent = time.monotonic() - self.heard_at
        if silent > SILENT_AFTER:
            raise ConnectionLost(f"no word from {self.session.connection.target.alias} for {silent:.0f} s",
                                 "check the network; the run goes on on the server")

    def _drop(self, channel: PendingCommand) -> None:
        channel.abandon()
        if self.channel is channel:
            self.channel = None
