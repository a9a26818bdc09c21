"""A TCP proxy that makes a loopback server far away: every chunk is held DELAY seconds in each
direction (a round trip costs 2 x DELAY), in order and without slowing a transfer down (a delay
line: each chunk is due DELAY after it arrived, and chunks behind it wait only for their own due
time, not for the ones before them to be delayed one by one).

It counts what crossed it, per proxy and from its start (Counts):
- connections: TCP connections accepted;
- bytes_up / bytes_down: bytes from the client to the server / back;
- round_trips: turns. A turn is counted when bytes reach the proxy from the server and the last
  bytes the proxy received on that connection came from the client: the client spoke, then the
  server answered. A request the server answers in several chunks is one turn; several requests
  sent before the first answer are one turn too (they were pipelined: one wait, not several).
  The server speaking first (SSH's banner) is not a turn. Every turn costs the client at least
  one round trip of the link, so at a delay D, turns x 2D bounds from below what the waiting
  cost, and a chatty protocol shows up as many turns.

Standard library only (asyncio, in a thread of its own), for the tests and benchmarks/latency.py:

    with DelayProxy(("127.0.0.1", sshd.port), delay=0.075) as proxy:
        ... connect to proxy.port ...
        print(proxy.counts())

    python -m evalkit.testbed.delay_proxy --to 127.0.0.1:2222 --delay-ms 75   (prints its port)
"""
from __future__ import annotations

import argparse
import asyncio
import threading
from dataclasses import dataclass, fields

CHUNK = 64 * 1024
QUEUED_CHUNKS = 256  # per direction: a reader this far ahead of its delayed writer waits (back-pressure)
FROM_CLIENT, FROM_SERVER = "client", "server"


@dataclass(frozen=True)
class Counts:
    connections: int = 0
    round_trips: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def __sub__(self, before: "Counts") -> "Counts":
        """What crossed between BEFORE and this."""
        return Counts(*(getattr(self, f.name) - getattr(before, f.name) for f in fields(self)))


class _Tally:
    """The proxy's counts, updated by its event loop's thread and read by any other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {f.name: 0 for f in fields(Counts)}

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counts[name] += amount

    def snapshot(self) -> Counts:
        with self._lock:
            return Counts(**self._counts)


class _Turns:
    """One connection's turns (see the module's docstring): who sent the last bytes seen."""

    def __init__(self, tally: _Tally) -> None:
        self.tally, self.last_from = tally, None

    def saw(self, side: str, size: int) -> None:
        is_answer = side == FROM_SERVER and self.last_from == FROM_CLIENT
        self.last_from = side
        moved = {"bytes_up": size} if side == FROM_CLIENT else {"bytes_down": size}
        self.tally.add(round_trips=int(is_answer), **moved)


class DelayProxy:
    """Listens on 127.0.0.1 (PORT: a free one unless given); forwards each connection to TARGET
    (host, port) with DELAY seconds added in each direction."""

    def __init__(self, target: tuple[str, int], delay: float, port: int = 0) -> None:
        self.target, self.delay, self.port = target, delay, port
        self._tally = _Tally()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._failure: BaseException | None = None

    def __enter__(self) -> "DelayProxy":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def counts(self) -> Counts:
        return self._tally.snapshot()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve_forever, name="delay-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _serve_forever(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(), in the caller's thread
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopped.wait()
        server.close()  # not wait_closed(): it would wait for the connections still open, which asyncio.run ends

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._tally.add(connections=1)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        turns = _Turns(self._tally)
        directions = [self._direction(client_reader, server_writer, turns, FROM_CLIENT),
                      self._direction(server_reader, client_writer, turns, FROM_SERVER)]
        try:
            await asyncio.gather(*directions)
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, turns: _Turns,
                         side: str) -> None:
        """READER's chunks to WRITER, each DELAY after it arrived; EOF passed on after the last."""
        line: asyncio.Queue = asyncio.Queue(QUEUED_CHUNKS)
        delivering = asyncio.ensure_future(self._deliver(line, writer))
        try:
            while not delivering.done():  # done early: its side went away
                try:
                    chunk = await reader.read(CHUNK)
                except OSError:
                    chunk = b""
                if chunk:
                    turns.saw(side, len(chunk))
                await line.put((asyncio.get_running_loop().time() + self.delay, chunk))
                if not chunk:
                    break
            await delivering
        finally:
            delivering.cancel()

    @staticmethod
    async def _deliver(line: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await line.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if not chunk:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
            except OSError:  # the other side went away: the rest of this direction has nowhere to go
                return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a TCP proxy that adds a delay each way (a far server)")
    parser.add_argument("--to", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="added each way (RTT: twice this)")
    parser.add_argument("--port", type=int, default=0, help="to listen on (127.0.0.1); default: a free one")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    with DelayProxy((host, int(port)), args.delay_ms / 1000, args.port) as proxy:
        print(f"listening on 127.0.0.1:{proxy.port}, {args.delay_ms:g} ms each way to {args.to}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(proxy.counts())


if __name__ == "__main__":
    main()
