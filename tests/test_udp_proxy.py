"""``protocol: udp`` listeners over real sockets: Guard and the demo udp echo run as child
processes; a backend reporting the source port it sees runs in a thread of the test."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from l4_procs import free_port, start_demo, start_guard


class PortReporter:
    """Answers every datagram with ``PORT:payload``, PORT being the sender's source port:
    one port per Guard session, so a new port means a new session."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sock.sendto(b"%d:%s" % (addr[1], data), addr)

    def close(self) -> None:
        self.stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    tmp = tmp_path_factory.mktemp("udp")
    children = []
    reporter = PortReporter()
    try:
        echo, echo_port = start_demo("udp")
        children.append(echo)
        p = {n: free_port(socket.SOCK_DGRAM) for n in ("echo", "expiry", "bounded")}
        guard_yaml = f"""workers: 1
routes: routes
listeners:
  echo: {{protocol: udp, address: "127.0.0.1:{p["echo"]}"}}
  expiry: {{protocol: udp, address: "127.0.0.1:{p["expiry"]}", udp_idle: 300ms}}
  bounded: {{protocol: udp, address: "127.0.0.1:{p["bounded"]}", max_sessions: 3}}
"""
        routes_yaml = f"""
routes:
  - {{name: echo, listener: echo, service: echo}}
  - {{name: expiry, listener: expiry, service: reporter}}
  - {{name: bounded, listener: bounded, service: reporter}}
services:
  echo: {{servers: ["127.0.0.1:{echo_port}"]}}
  reporter: {{servers: ["127.0.0.1:{reporter.port}"]}}
"""
        children.append(start_guard(tmp, guard_yaml, routes_yaml))
        yield p
    finally:
        for child in children:
            child.stop()
        reporter.close()


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3)
    return sock


def ask(sock: socket.socket, port: int, payload: bytes) -> bytes:
    sock.sendto(payload, ("127.0.0.1", port))
    data, addr = sock.recvfrom(65536)
    assert addr == ("127.0.0.1", port)  # replies come from the listener's address
    return data


def session_port(sock: socket.socket, port: int, payload: bytes = b"x") -> int:
    reply = ask(sock, port, payload)
    seen, _, echoed = reply.partition(b":")
    assert echoed == payload
    return int(seen)


def test_1000_datagrams_from_50_clients_no_cross_talk(ports: dict[str, int]) -> None:
    clients = [udp_client() for _ in range(50)]
    try:
        expected = {i: {b"client %d datagram %d" % (i, j) for j in range(20)} for i in range(50)}
        got: dict[int, set[bytes]] = {i: set() for i in range(50)}
        by_fd = {c.fileno(): i for i, c in enumerate(clients)}
        for _attempt in range(3):  # UDP may drop; a resend of what is missing is fair
            for j in range(20):
                for i, c in enumerate(clients):
                    payload = b"client %d datagram %d" % (i, j)
                    if payload not in got[i]:
                        c.sendto(payload, ("127.0.0.1", ports["echo"]))
                time.sleep(0.002)  # pace rounds a little: 50 datagrams per round
            deadline = time.monotonic() + 2
            while any(got[i] != expected[i] for i in got) and time.monotonic() < deadline:
                ready, _, _ = select.select(clients, [], [], 0.2)
                for c in ready:
                    data, _ = c.recvfrom(65536)
                    i = by_fd[c.fileno()]
                    assert data in expected[i], f"client {i} got another's datagram {data!r}"
                    got[i].add(data)
            if all(got[i] == expected[i] for i in got):
                break
        missing = sum(len(expected[i] - got[i]) for i in got)
        assert missing == 0, f"{missing} datagrams never answered, even after resends"
    finally:
        for c in clients:
            c.close()


def test_datagram_boundaries_kept_up_to_60_kb(ports: dict[str, int]) -> None:
    with contextlib.closing(udp_client()) as sock:
        big = bytes(range(256)) * 234 + b"tail"  # 59,908 bytes
        sock.sendto(big, ("127.0.0.1", ports["echo"]))
        sock.sendto(b"small", ("127.0.0.1", ports["echo"]))
        first, _ = sock.recvfrom(65536)
        second, _ = sock.recvfrom(65536)
    assert first == big
    assert second == b"small"


def test_session_expires_after_udp_idle(ports: dict[str, int]) -> None:
    with contextlib.closing(udp_client()) as sock:
        first = session_port(sock, ports["expiry"])
        time.sleep(0.1)
        assert session_port(sock, ports["expiry"]) == first  # same session while active
        time.sleep(0.8)  # > udp_idle (300ms) + a sweeper tick
        assert session_port(sock, ports["expiry"]) != first  # a new session, new socket


def test_replies_keep_a_session_alive(ports: dict[str, int]) -> None:
    with contextlib.closing(udp_client()) as sock:
        first = session_port(sock, ports["expiry"])
        for _ in range(6):  # 600ms of traffic, twice udp_idle
            time.sleep(0.1)
            assert session_port(sock, ports["expiry"]) == first


def test_session_table_is_bounded_oldest_dropped(ports: dict[str, int]) -> None:
    clients = [udp_client() for _ in range(4)]
    try:
        port = ports["bounded"]
        seen = [session_port(c, port) for c in clients[:3]]
        assert len(set(seen)) == 3
        # A 4th client: the table holds 3, the oldest session (client 0) is dropped.
        session_port(clients[3], port)
        assert session_port(clients[1], port) == seen[1]
        assert session_port(clients[2], port) == seen[2]
        assert session_port(clients[0], port) != seen[0]  # back, through a new session
    finally:
        for c in clients:
            c.close()
