"""``rate_limit`` beyond per-client http: tcp connections, udp datagrams, ``by: tenant``.

Real Guard child processes, real sockets, demo backends; refusals are read back from
/metrics. The pure rules (buckets kept across reloads, tenants sharing) are unit-tested
at the end.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from l4_procs import Child, free_port, start_demo, start_guard
from test_metrics import wait_value

from guard.config import load_config
from guard.config.model import RateLimitConfig, RouteConfig
from guard.errors import ConfigErrors
from guard.proxy.ratelimit import RateLimits, route_tenant
from guard.runtime.support import unsupported


class CountingTcpBackend:
    """An echo server that counts the connections reaching it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stop_after() -> Iterator[list[Child]]:
    children: list[Child] = []
    yield children
    for child in children:
        child.stop()


def tcp_echo(port: int) -> bytes:
    """One connection: send, read the echo; b"" when Guard closed it without relaying."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(b"ping")
            return s.recv(16)
        except ConnectionResetError:
            return b""


def guard_with_limit(
    tmp: Path,
    children: list[Child],
    protocol: str,
    port: int,
    admin: int,
    backend: int,
    average: float,
    burst: int,
) -> None:
    """Guard with one listener ``l`` of ``protocol`` and its route ``r`` to ``backend``."""
    children.append(
        start_guard(
            tmp,
            f"""workers: 1
routes: routes
listeners:
  l: {{protocol: {protocol}, address: "127.0.0.1:{port}"}}
admin: {{address: "127.0.0.1:{admin}"}}
""",
            f"""routes:
  - {{name: r, listener: l, service: echo, rate_limit: {{average: {average}, burst: {burst}}}}}
services:
  echo: {{servers: ["127.0.0.1:{backend}"]}}
""",
        )
    )


def test_tcp_connections_over_the_limit_are_closed_at_accept(
    tmp_path: Path, stop_after: list[Child]
) -> None:
    backend = CountingTcpBackend()
    port, admin = free_port(), free_port()
    try:
        guard_with_limit(tmp_path, stop_after, "tcp", port, admin, backend.port, 0.5, 3)
        got = [tcp_echo(port) for _ in range(5)]
        assert got[:3] == [b"ping"] * 3 and got[3:] == [b"", b""]
        assert backend.accepted == 3  # the refused ones never reached the backend
        scrape = wait_value(
            admin, "guard_rate_limited_total", 2, listener="l", route="r", unit="connection"
        )
        assert scrape.value("guard_tcp_errors_total", listener="l", reason="rate_limited") == 2
        assert scrape.value("guard_tcp_connections_total", listener="l", route="r") == 3
        time.sleep(2.1)  # 0.5/s: one token back (slow enough for a busy box)
        assert tcp_echo(port) == b"ping"
        assert backend.accepted == 4
    finally:
        backend.close()


def test_udp_limit_counts_datagrams_per_client_ip(tmp_path: Path, stop_after: list[Child]) -> None:
    demo, backend = start_demo("udp")
    stop_after.append(demo)
    port, admin = free_port(socket.SOCK_DGRAM), free_port()
    guard_with_limit(tmp_path, stop_after, "udp", port, admin, backend, 0.5, 3)

    def send(sock: socket.socket, n: int) -> None:
        for i in range(n):
            sock.sendto(b"d%d" % i, ("127.0.0.1", port))

    def replies(sock: socket.socket) -> int:
        got = 0
        sock.settimeout(0.5)
        try:
            while True:
                sock.recvfrom(65536)
                got += 1
        except TimeoutError:
            return got

    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        # Burst of 3 for the client IP: the 4th and 5th datagrams of the open session drop,
        # and another source port of the same IP is the same client: no new session.
        send(a, 5)
        send(b, 1)
        assert replies(a) == 3
        assert replies(b) == 0
        scrape = wait_value(
            admin, "guard_rate_limited_total", 1, listener="l", route="r", unit="session"
        )
        assert scrape.value("guard_udp_sessions_total", listener="l") == 1
        assert (
            scrape.value("guard_rate_limited_total", listener="l", route="r", unit="datagram") == 2
        )
        assert scrape.value("guard_udp_errors_total", listener="l", reason="rate_limited") == 1
        assert scrape.value("guard_udp_dropped_datagrams_total", listener="l") == 3
        time.sleep(2.1)  # 0.5/s: one datagram's worth back
        send(a, 1)
        assert replies(a) == 1


def http_status(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_by_tenant_one_bucket_per_owning_tenant(tmp_path: Path, stop_after: list[Child]) -> None:
    demo, backend = start_demo("http")
    stop_after.append(demo)
    port, admin = free_port(), free_port()
    limit = "rate_limit: {average: 0.01, burst: 2, by: tenant}"
    routes = tmp_path / "routes"
    routes.mkdir()
    # Files named as the admin API writes them carry their tenant (guard.admin.tenancy).
    (routes / "_admin-acme.yaml").write_text(f"""routes:
  - {{name: a1, listener: web, service: acme, match: {{host: a1.test}}, {limit}}}
  - {{name: a2, listener: web, service: acme, match: {{host: a2.test}}, {limit}}}
services:
  acme: {{servers: ["127.0.0.1:{backend}"]}}
""")
    (routes / "_admin-beta.yaml").write_text(f"""routes:
  - {{name: b1, listener: web, service: beta, match: {{host: b1.test}}, {limit}}}
services:
  beta: {{servers: ["127.0.0.1:{backend}"]}}
""")
    stop_after.append(
        start_guard(
            tmp_path,
            f"""workers: 1
routes: routes
listeners:
  web: {{protocol: http, address: "127.0.0.1:{port}"}}
admin: {{address: "127.0.0.1:{admin}"}}
""",
            # The operator's routes have no tenant: they share one bucket.
            f"""routes:
  - {{name: o1, listener: web, service: ops, match: {{host: o1.test}}, {limit}}}
  - {{name: o2, listener: web, service: ops, match: {{host: o2.test}}, {limit}}}
services:
  ops: {{servers: ["127.0.0.1:{backend}"]}}
""",
        )
    )
    # acme's two routes draw from one bucket of 2, whichever route is used.
    assert [http_status(port, h) for h in ("a1.test", "a2.test", "a2.test", "a1.test")] == [
        200,
        200,
        429,
        429,
    ]
    # beta has its own bucket: acme's use does not touch it.
    assert [http_status(port, "b1.test") for _ in range(3)] == [200, 200, 429]
    assert [http_status(port, h) for h in ("o1.test", "o2.test", "o1.test")] == [200, 200, 429]
    wait_value(admin, "guard_errors_total", 4, listener="web", code="rate_limited")


# ---------------------------------------------------------------------- the pure rules


def _route(name: str, by: str = "tenant", source: str | None = None, avg: float = 1) -> RouteConfig:
    return RouteConfig(
        name=name,
        listener="web",
        service="s",
        rate_limit=RateLimitConfig(average=avg, burst=1, by=by),
        source=Path(source) if source else None,
    )


def test_route_tenant_is_the_owner_of_the_admin_file() -> None:
    assert route_tenant(_route("r", source="/r/_admin-acme.yaml")) == "acme"
    assert route_tenant(_route("r", source="/r/_admin.yaml")) == ""  # "*": no tenant
    assert route_tenant(_route("r", source="/r/ops.yaml")) == ""
    assert route_tenant(_route("r")) == ""


def test_reload_keeps_buckets_of_unchanged_limits() -> None:
    limits = RateLimits()
    a = _route("a", by="client_ip")
    first = limits.build([a])["web"]["a"]
    assert first.check("10.0.0.1") == 0.0 and first.check("10.0.0.1") > 0
    again = limits.build([a, _route("b", by="client_ip")])["web"]["a"]
    assert again is first and again.check("10.0.0.1") > 0  # a reload resets nothing
    changed = limits.build([_route("a", by="client_ip", avg=5)])["web"]["a"]
    assert changed is not first and changed.check("10.0.0.1") == 0.0


def test_tenant_buckets_are_shared_by_limit_and_survive_reloads() -> None:
    limits = RateLimits()
    one, two = _route("one", source="/r/_admin-t.yaml"), _route("two", source="/r/_admin-t.yaml")
    built = limits.build([one, two])["web"]
    assert built["one"].buckets is built["two"].buckets
    assert built["one"].check("1.1.1.1") == 0.0
    assert built["two"].check("2.2.2.2") > 0  # same tenant, any client: one bucket
    other = limits.build([one, two, _route("three", source="/r/_admin-u.yaml")])["web"]
    assert other["three"].check("1.1.1.1") == 0.0  # tenant u has a bucket of its own
    assert other["two"].check("1.1.1.1") > 0  # tenant t's bucket kept across the reload
    # A route moved to another tenant's file is that tenant's from now on.
    moved = limits.build([_route("one", source="/r/_admin-u.yaml")])["web"]["one"]
    assert moved.tenant == "u" and moved.check("1.1.1.1") > 0


def test_rate_limits_are_served_on_every_listener(tmp_path: Path) -> None:
    (tmp_path / "routes").mkdir()
    (tmp_path / "guard.yaml").write_text("""routes: routes
listeners:
  web: {protocol: http, address: "127.0.0.1:1"}
  t: {protocol: tcp, address: "127.0.0.1:2"}
  u: {protocol: udp, address: "127.0.0.1:3"}
""")
    (tmp_path / "routes" / "r.yaml").write_text("""routes:
  - {name: w, listener: web, service: s, rate_limit: {average: 5, by: tenant}}
  - {name: t, listener: t, service: s, rate_limit: {average: 5}}
  - {name: u, listener: u, service: s, rate_limit: {average: 5, by: tenant}}
services:
  s: {servers: ["127.0.0.1:9"]}
""")
    assert unsupported(load_config(tmp_path / "guard.yaml")) == []


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_header_keys_on_l4_routes_are_config_errors(tmp_path: Path, protocol: str) -> None:
    (tmp_path / "routes").mkdir()
    (tmp_path / "guard.yaml").write_text(f"""routes: routes
listeners:
  l4: {{protocol: {protocol}, address: "127.0.0.1:2"}}
""")
    (tmp_path / "routes" / "r.yaml").write_text("""routes:
  - {name: r, listener: l4, service: s, rate_limit: {average: 5, by: "header:x-key"}}
services:
  s: {servers: ["127.0.0.1:9"]}
""")
    with pytest.raises(ConfigErrors) as e:
        load_config(tmp_path / "guard.yaml")
    assert f"{tmp_path / 'routes' / 'r.yaml'}: routes[0].rate_limit.by:" in str(e.value)
