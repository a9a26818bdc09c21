"""The test bed's delay proxy (evalkit/testbed/delay_proxy.py), in front of a loopback echo server:
it adds its delay to every round trip, keeps the bytes in order, does not turn a stream into one
delay per chunk, and counts connections, bytes and turns as its docstring says."""
from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from evalkit.testbed.delay_proxy import Counts, DelayProxy

DELAY = 0.05  # each way: a round trip of 0.1 s
TOLERANCE = 0.04


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_server):
    with DelayProxy(echo_server, DELAY) as proxy:
        yield proxy


def _connect(proxy: DelayProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _receive(sock: socket.socket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        assert chunk, "the proxy closed the connection early"
        got += chunk
    return bytes(got)


def test_a_request_and_its_answer_take_twice_the_delay(proxy):
    with _connect(proxy) as sock:
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            sock.sendall(b"ping")
            assert _receive(sock, 4) == b"ping"
            seconds.append(time.perf_counter() - started)
    assert all(2 * DELAY - 0.005 <= s <= 2 * DELAY + TOLERANCE for s in seconds), seconds


def test_five_request_answer_turns_count_five_round_trips_and_their_bytes(proxy):
    with _connect(proxy) as sock:
        for _ in range(5):
            sock.sendall(b"0123456789")
            _receive(sock, 10)
    time.sleep(0.05)
    assert proxy.counts() == Counts(connections=1, round_trips=5, bytes_up=50, bytes_down=50)


def test_requests_sent_before_the_first_answer_are_one_turn(proxy):
    with _connect(proxy) as sock:
        for _ in range(3):  # pipelined: the client waits once
            sock.sendall(b"abc")
            time.sleep(0.01)
        _receive(sock, 9)
        time.sleep(0.05)
    assert proxy.counts().round_trips == 1


def test_a_stream_keeps_its_order_and_pays_the_delay_once(proxy):
    """Many chunks in flight at once: a delay line, not a sleep per chunk (which would cost
    chunks x DELAY)."""
    payload = bytes(range(256)) * 4 * 1024 * 4  # 4 MiB, many chunks
    with _connect(proxy) as sock:
        received = bytearray()
        started = time.perf_counter()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received += _receive(sock, len(payload))
        seconds = time.perf_counter() - started
        sender.join()
    assert bytes(received) == payload
    assert seconds < 2 * DELAY + 1.0
    assert proxy.counts() - Counts(connections=1, round_trips=proxy.counts().round_trips) == \
        Counts(bytes_up=len(payload), bytes_down=len(payload))


def test_counts_are_per_connection_and_a_difference_says_what_crossed_between(proxy):
    with _connect(proxy) as first:
        first.sendall(b"x")
        _receive(first, 1)
    time.sleep(0.05)
    before = proxy.counts()
    with _connect(proxy) as second, _connect(proxy) as third:
        for sock in (second, third):
            sock.sendall(b"yy")
            _receive(sock, 2)
    time.sleep(0.05)
    assert proxy.counts() - before == Counts(connections=2, round_trips=2, bytes_up=4, bytes_down=4)


def test_the_servers_close_reaches_the_client(echo_server):
    with DelayProxy(echo_server, 0.0) as proxy, _connect(proxy) as sock:
        sock.sendall(b"bye")
        _receive(sock, 3)
        sock.shutdown(socket.SHUT_WR)  # the echo server ends its side when ours ends
        assert sock.recv(10) == b""
