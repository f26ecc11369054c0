"""WebSocket through Guard: real clients over real sockets, under both HTTP codecs.

The client is wsproto over a raw socket (wsproto is already a dependency of Guard, so the
tests need no client library of their own, and every byte of the handshake is visible).
Backends are the demo's ``/ws`` echo, or scripted ones (``ws_backend``) where a test must
see what the backend received: Guard's masked close frames, the forwarded handshake.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import pytest
from helpers import BackendConn, Conn, assert_guard_error, expected_bytes, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol

from guard.errors import GuardError
from guard.http.codec import make_request_parser, make_response_parser
from guard.proxy.websocket import _FrameCursor, accept_value

MiB = 1024 * 1024
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ------------------------------------------------------------------------ a client


class WsClient:
    """A WebSocket client: the handshake by hand, then wsproto frames on a blocking socket."""

    def __init__(
        self,
        port: int,
        path: str = "/ws",
        host: str = "test",
        headers: list[tuple[str, str]] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.conn = Conn(port, timeout=timeout)
        self.sock = self.conn.sock
        key = base64.b64encode(os.urandom(16)).decode()
        hdrs = [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
            *(headers or []),
        ]
        self.conn.request("GET", path, host, hdrs)
        self.head = self.conn.read_head()
        assert self.head.status == 101, (self.head.raw_head, self.conn.buf)
        expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        assert self.head.header("sec-websocket-accept") == expected
        self.ws = Connection(ConnectionType.CLIENT)
        self.pending: deque[Event] = deque()
        self.eof = False
        tail = bytes(self.conn.buf)
        self.conn.buf.clear()
        if tail:
            self.ws.receive_data(tail)

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    def text(self, data: str) -> None:
        self.send(TextMessage(data=data))

    def binary(self, data: bytes) -> None:
        self.send(BytesMessage(data=data))

    def event(self, timeout: float = 10.0) -> Event:
        """The next event; a lost connection is CloseConnection(1006)."""
        deadline = time.monotonic() + timeout
        while True:
            self.pending.extend(self.ws.events())
            if self.pending:
                return self.pending.popleft()
            if self.eof:
                raise AssertionError("connection closed, no more events")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no websocket event in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                self.ws.receive_data(None)
            else:
                self.ws.receive_data(data)

    def message(self, timeout: float = 10.0) -> str | bytes:
        """One whole message, its fragments joined."""
        parts: list[str | bytes] = []
        while True:
            ev = self.event(timeout)
            assert isinstance(ev, Message), ev
            parts.append(ev.data)
            if ev.message_finished:
                if isinstance(ev, TextMessage):
                    return "".join(parts)  # type: ignore[arg-type]
                return b"".join(parts)  # type: ignore[arg-type]

    def close_received(self, timeout: float = 10.0) -> CloseConnection:
        """Wait for the peer's close (data before it is skipped), answer it if needed."""
        while True:
            ev = self.event(timeout)
            if isinstance(ev, CloseConnection):
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    with contextlib.suppress(OSError):
                        self.send(ev.response())
                return ev

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the TCP connection ends (EOF or reset) within timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False
            if not data:
                self.eof = True
        return True


# ------------------------------------------------------------------------ scripted backends


class WsBackendConn:
    """The server side of a WebSocket a test backend accepted (wsproto over BackendConn)."""

    def __init__(self, conn: BackendConn, request_head: bytes) -> None:
        self.conn = conn
        self.request_head = request_head
        self.ws = Connection(ConnectionType.SERVER)
        self.events: list[Event] = []
        if conn.buf:
            self.ws.receive_data(bytes(conn.buf))
            conn.buf.clear()

    def next_event(self) -> Event | None:
        """The next event, None on EOF (a wsproto parse error shows as a close event)."""
        while True:
            for ev in self.ws.events():
                self.events.append(ev)
                return ev
            if not self.conn._fill():
                return None
            data = bytes(self.conn.buf)
            self.conn.buf.clear()
            self.ws.receive_data(data)

    def send(self, event: Event) -> None:
        self.conn.send(self.ws.send(event))


def ws_backend(
    script: Callable[[WsBackendConn], None], *, accept: bytes | None = None, extra: bytes = b""
) -> Callable[[BackendConn], None]:
    """A RawBackend handler: answer the handshake with a 101 (``accept`` overrides the
    correct Sec-WebSocket-Accept), then run ``script`` on the WebSocket."""

    def handler(conn: BackendConn) -> None:
        req = conn.read_request()
        if req is None:
            return
        conn.backend.requests.append(req)
        key = (req.header("sec-websocket-key") or "").encode()
        value = accept if accept is not None else accept_value(key)
        conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n" % (value, extra)
        )
        if accept is not None:
            # A wrong handshake: Guard must cut this connection, not relay anything.
            while conn._fill():
                pass
            return
        script(WsBackendConn(conn, req.raw))

    return handler


def echo_until_close(ws: WsBackendConn) -> None:
    while (ev := ws.next_event()) is not None:
        if isinstance(ev, Message):
            ws.send(ev)
        elif isinstance(ev, Ping):
            ws.send(ev.response())
        elif isinstance(ev, CloseConnection):
            if ws.ws.state is ConnectionState.REMOTE_CLOSING:
                ws.send(ev.response())
            return


def upgrade_request(path: str = "/ws", host: str = "test", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


# ------------------------------------------------------------------------ echo through Guard


@pytest.fixture
def echo_guard(guard, demos):
    return guard(servers=[demos[0].address])


def test_text_binary_and_empty_messages(echo_guard) -> None:
    with WsClient(echo_guard.port) as c:
        assert c.head.header("x-demo-port")  # the backend's 101, relayed
        assert c.head.header("connection").lower() == "upgrade"
        assert c.head.header("upgrade").lower() == "websocket"
        for msg in ["hello", "héllo wörld ✓", "", b"\x00\xff" * 100, b""]:
            if isinstance(msg, str):
                c.text(msg)
            else:
                c.binary(msg)
            assert c.message() == msg
        # several messages in one write arrive as several messages
        c.sock.sendall(b"".join(c.ws.send(TextMessage(data=f"m{i}")) for i in range(50)))
        assert [c.message() for _ in range(50)] == [f"m{i}" for i in range(50)]


def test_fragmented_message(echo_guard) -> None:
    with WsClient(echo_guard.port) as c:
        c.send(TextMessage(data="frag", message_finished=False))
        c.send(Ping(payload=b"between fragments"))  # control frames may interleave
        c.send(TextMessage(data="men", message_finished=False))
        c.send(TextMessage(data="ted", message_finished=True))
        got: list[object] = []
        while len([e for e in got if isinstance(e, Message) and e.message_finished]) < 1:
            got.append(c.event())
        text = "".join(e.data for e in got if isinstance(e, TextMessage))
        assert text == "fragmented"
        pongs = [e for e in got if isinstance(e, Pong)]
        assert [p.payload for p in pongs] == [b"between fragments"]


def test_ten_mib_message(echo_guard) -> None:
    payload = random.Random(7).randbytes(10 * MiB)
    with WsClient(echo_guard.port, timeout=30) as c:
        frame = c.ws.send(BytesMessage(data=payload))
        # Sent from a thread: the echo comes back while it is still being sent.
        sender = threading.Thread(target=c.sock.sendall, args=(frame,))
        sender.start()
        got = c.message(timeout=30)
        sender.join(10)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()  # type: ignore[arg-type]


def test_ping_pong(echo_guard) -> None:
    with WsClient(echo_guard.port) as c:
        c.send(Ping(payload=b"are you there"))
        ev = c.event()
        assert isinstance(ev, Pong) and ev.payload == b"are you there"


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (4000, "bye now")])
def test_close_from_client(echo_guard, code: int, reason: str) -> None:
    with WsClient(echo_guard.port) as c:
        c.text("before")
        assert c.message() == "before"
        c.send(CloseConnection(code=code, reason=reason))
        ev = c.close_received()
        assert (ev.code, ev.reason) == (code, reason)
        assert c.closed_by_peer()


def test_close_from_backend(echo_guard) -> None:
    with WsClient(echo_guard.port) as c:
        c.text("!close 4001 backend says bye")
        ev = c.close_received()
        assert (ev.code, ev.reason) == (4001, "backend says bye")
        assert c.closed_by_peer()
    # the connection slot is given back
    wait_for(lambda: http_ok(echo_guard.port), 5, "guard still serving")


def test_backend_dying_closes_1011(echo_guard) -> None:
    with WsClient(echo_guard.port) as c:
        c.text("!drop")
        ev = c.close_received()
        assert ev.code == 1011
        assert c.closed_by_peer()


def http_ok(port: int) -> bool:
    with Conn(port) as c:
        c.request("GET", "/healthz")
        return c.read_response().status == 200


# ------------------------------------------------------------------------ staying HTTP


def test_refused_upgrade_stays_http(echo_guard) -> None:
    with Conn(echo_guard.port) as c:
        c.send(upgrade_request("/status/403"))
        resp = c.read_response()
        assert resp.status == 403
        assert resp.header("upgrade") is None
        # the same connection carries the next request, as HTTP
        c.request("GET", "/after")
        resp = c.read_response()
        assert resp.status == 200 and resp.json()["path"] == "/after"


def test_upgrade_to_no_route_stays_http(guard, demos) -> None:
    g = guard(
        routes=[{"name": "app", "match": {"host": "app.test"}, "service": "app"}],
        servers=[demos[0].address],
    )
    with Conn(g.port) as c:
        # two refused upgrades and a plain request in one write: all answered, in order
        c.send(
            upgrade_request("/ws", host="nowhere.test")
            + upgrade_request("/ws", host="nowhere.test")
            + b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n"
        )
        assert_guard_error(c.read_response(), 404, "route_not_found")
        assert_guard_error(c.read_response(), 404, "route_not_found")
        assert c.read_response().json()["path"] == "/x"
        # and a real upgrade after them
        c.send(upgrade_request("/ws", host="app.test"))
        assert c.read_head().status == 101


@pytest.mark.parametrize(
    "extra", ["Content-Length: 5\r\n", "Content-Length: 0\r\n", "Transfer-Encoding: chunked\r\n"]
)
def test_upgrade_with_a_body_is_400_and_closes(echo_guard, extra: str) -> None:
    with Conn(echo_guard.port) as c:
        c.send(upgrade_request(extra=extra) + b"hello")
        assert_guard_error(c.read_response(), 400, "bad_request")
        assert c.closed_within(5)


@pytest.mark.parametrize(
    "request_bytes",
    [
        # no key
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        # a key that is not 16 bytes of base64
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: c2hvcnQ=\r\n\r\n",
        # not GET
        b"POST /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ],
)
def test_malformed_websocket_upgrade_is_400(echo_guard, request_bytes: bytes) -> None:
    with Conn(echo_guard.port) as c:
        c.send(request_bytes)
        assert_guard_error(c.read_response(), 400, "bad_request")
        c.request("GET", "/still-http")
        assert c.read_response().json()["path"] == "/still-http"


def test_other_upgrades_are_served_as_plain_requests(echo_guard) -> None:
    with Conn(echo_guard.port) as c:
        c.request(
            "GET",
            "/h2c",
            headers=[
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
            ],
        )
        resp = c.read_response()
        names = [n.lower() for n, _ in resp.json()["headers"]]
        assert "upgrade" not in names and "http2-settings" not in names
        c.request("GET", "/next")
        assert c.read_response().json()["path"] == "/next"


def test_wrong_accept_is_502_and_the_client_stays_http(guard, raw_backend) -> None:
    bad = raw_backend(ws_backend(echo_until_close, accept=b"d3Jvbmc="))
    good = raw_backend(lambda conn: (conn.read_request(), conn.respond(200, b"plain")))
    g = guard(
        routes=[
            {"name": "ws", "match": {"path_prefix": "/ws"}, "service": "bad"},
            {"name": "rest", "match": {"path_prefix": "/"}, "service": "good"},
        ],
        services={"bad": {"servers": [bad.address]}, "good": {"servers": [good.address]}},
    )
    with Conn(g.port) as c:
        c.send(upgrade_request("/ws"))
        resp = c.read_response()
        assert_guard_error(resp, 502, "upstream_protocol_error")
        assert "sec-websocket-accept" in resp.json()["message"]
        c.request("GET", "/other")
        assert c.read_response().body == b"plain"


def test_handshake_forwarded_with_upgrade_headers(guard, raw_backend) -> None:
    b = raw_backend(ws_backend(echo_until_close))
    g = guard(servers=[b.address])
    with WsClient(g.port, headers=[("Sec-WebSocket-Protocol", "chat"), ("X-Kept", "1")]) as c:
        c.text("hi")
        assert c.message() == "hi"
    req = b.requests[0]
    assert req.method == "GET" and req.target == "/ws"
    assert req.header("connection") == "upgrade"
    assert req.header("upgrade") == "websocket"
    assert req.header("sec-websocket-version") == "13"
    assert req.header("sec-websocket-key")
    assert req.header("sec-websocket-protocol") == "chat"
    assert req.header("x-kept") == "1"
    assert req.header("x-forwarded-for") == "127.0.0.1"


# ------------------------------------------------------------------------ Guard ends it


def test_drain_sends_1001_both_ways(guard, raw_backend) -> None:
    seen: list[CloseConnection] = []

    def script(ws: WsBackendConn) -> None:
        while (ev := ws.next_event()) is not None:
            if isinstance(ev, Message):
                ws.send(ev)
            elif isinstance(ev, CloseConnection):
                # wsproto as a server rejects unmasked frames: this close was masked
                seen.append(ev)
                if ws.ws.state is ConnectionState.REMOTE_CLOSING:
                    ws.send(ev.response())
                return

    b = raw_backend(ws_backend(script))
    g = guard(servers=[b.address], http={"timeouts": {"drain": "5s"}})
    with WsClient(g.port) as c:
        c.text("x" * 1000)
        assert c.message() == "x" * 1000
        g.proc.send_signal(signal.SIGTERM)
        ev = c.close_received()
        assert ev.code == 1001
        assert c.closed_by_peer()
    assert g.proc.wait(10) == 0
    wait_for(lambda: bool(seen), 5, "the backend's close")
    assert seen[0].code == 1001


def test_drain_waits_for_a_frame_in_progress(guard, raw_backend) -> None:
    """A close frame never lands inside a frame: Guard finishes the one in flight first."""
    started = threading.Event()
    finish = threading.Event()

    def script(ws: WsBackendConn) -> None:
        ws.next_event()  # the client's "go"
        frame = bytes(FrameProtocol(False, []).send_data(b"y" * 100_000, True))
        ws.conn.send(frame[:50_000])  # half a frame...
        started.set()
        finish.wait(10)
        ws.conn.send(frame[50_000:])  # ...and the rest once the drain began
        echo_until_close(ws)

    b = raw_backend(ws_backend(script))
    g = guard(servers=[b.address], http={"timeouts": {"drain": "5s"}})
    with WsClient(g.port) as c:
        c.text("go")
        started.wait(5)
        time.sleep(0.2)
        g.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        finish.set()
        assert c.message() == b"y" * 100_000  # whole, and only then the close
        assert c.close_received().code == 1001
    assert g.proc.wait(10) == 0


def test_idle_timeout_closes_1000(guard, demos) -> None:
    g = guard(servers=[demos[0].address], http={"timeouts": {"websocket_idle": "1s"}})
    with WsClient(g.port) as c:
        for _ in range(3):  # traffic keeps it open past the timeout
            time.sleep(0.5)
            c.text("still here")
            assert c.message() == "still here"
        start = time.monotonic()
        ev = c.close_received(timeout=5)
        assert ev.code == 1000
        assert 0.8 < time.monotonic() - start < 3.5
        assert c.closed_by_peer()


def test_client_vanishing_closes_the_backend_1001(guard, raw_backend) -> None:
    seen: list[CloseConnection] = []

    def script(ws: WsBackendConn) -> None:
        while (ev := ws.next_event()) is not None:
            if isinstance(ev, Message):
                ws.send(ev)
            elif isinstance(ev, CloseConnection):
                seen.append(ev)
                return

    b = raw_backend(ws_backend(script))
    g = guard(servers=[b.address])
    c = WsClient(g.port)
    c.text("hi")
    assert c.message() == "hi"
    c.conn.close()  # no close frame: the TCP connection just goes
    wait_for(lambda: bool(seen), 5, "the backend's close")
    assert seen[0].code == 1001


# ------------------------------------------------------------------------ frame mode


def frame_guard(guard, backend: str, limit: str = "1KiB", **kw):
    return guard(
        routes=[
            {
                "name": "chat",
                "match": {"path_prefix": "/"},
                "service": "app",
                "websocket": {"max_message": limit},
            }
        ],
        servers=[backend],
        **kw,
    )


def test_frame_mode_relays_and_limits_client_messages(guard, demos) -> None:
    g = frame_guard(guard, demos[0].address)
    with WsClient(g.port) as c:
        c.text("small")
        assert c.message() == "small"
        c.binary(b"z" * 1024)  # exactly the limit
        assert c.message() == b"z" * 1024
        # a fragmented message is limited as a whole, not per fragment
        c.send(BytesMessage(data=b"a" * 600, message_finished=False))
        c.send(BytesMessage(data=b"a" * 600, message_finished=True))
        ev = c.close_received()
        assert ev.code == 1009
        assert c.closed_by_peer()


def test_frame_mode_limits_backend_messages(guard, demos) -> None:
    g = frame_guard(guard, demos[0].address)
    with WsClient(g.port) as c:
        c.text("!send 1000")
        assert c.message() == expected_bytes(1000)
        c.text("!send 5000")
        assert c.close_received().code == 1001  # the backend got the 1009


def test_frame_mode_text_limit_counts_utf8_bytes(guard, demos) -> None:
    g = frame_guard(guard, demos[0].address, limit="1000B")
    with WsClient(g.port) as c:
        c.text("é" * 500)  # 500 characters, 1000 bytes
        assert c.message() == "é" * 500
        c.text("é" * 501)
        assert c.close_received().code == 1009


def test_frame_mode_strips_extensions_and_keeps_pings_and_closes(guard, raw_backend) -> None:
    b = raw_backend(ws_backend(echo_until_close))
    g = frame_guard(guard, b.address)
    ext = [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]
    with WsClient(g.port, headers=ext) as c:
        c.send(Ping(payload=b"p"))
        ev = c.event()
        assert isinstance(ev, Pong) and ev.payload == b"p"  # the backend's (wsproto's) pong
        for i in range(5):
            c.send(TextMessage(data=f"part{i}", message_finished=i == 4))
        assert c.message() == "part0part1part2part3part4"
        c.send(CloseConnection(code=4002, reason="done"))
        ev = c.close_received()
        assert (ev.code, ev.reason) == (4002, "done")
        assert c.closed_by_peer()
    assert b.requests[0].header("sec-websocket-extensions") is None


def test_frame_mode_drain_and_backend_death(guard, demos) -> None:
    g = frame_guard(guard, demos[0].address, limit="16MiB", http={"timeouts": {"drain": "5s"}})
    with WsClient(g.port) as c:
        c.text("!drop")
        assert c.close_received().code == 1011
    with WsClient(g.port) as c:
        big = b"q" * (3 * MiB)
        sender = threading.Thread(target=c.binary, args=(big,))
        sender.start()
        assert c.message(timeout=20) == big
        sender.join(10)
        g.proc.send_signal(signal.SIGTERM)
        assert c.close_received().code == 1001
        assert c.closed_by_peer()
    assert g.proc.wait(10) == 0


def test_frame_mode_protocol_error_from_client(guard, demos) -> None:
    g = frame_guard(guard, demos[0].address)
    with WsClient(g.port) as c:
        c.sock.sendall(b"\x81\x05hello")  # unmasked: a client must mask
        assert c.close_received().code == 1002


# ------------------------------------------------------------------------ accounting


class Scrape:
    def __init__(self, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        conn.close()
        self.samples = [s for f in text_string_to_metric_families(body) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def wait_metric(port: int, name: str, expected: float, **labels: str) -> Scrape:
    deadline = time.monotonic() + 6
    while True:
        scrape = Scrape(port)
        if scrape.value(name, **labels) == expected:
            return scrape
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} = {scrape.value(name, **labels)} != {expected}")
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["tunnel", "frames"])
def test_metrics_bytes_and_in_flight(guard, demos, mode: str) -> None:
    admin = free_port()
    route: dict[str, object] = {"name": "chat", "match": {"path_prefix": "/"}, "service": "app"}
    if mode == "frames":
        route["websocket"] = {"max_message": "1MiB"}
    g = guard(
        routes=[route],
        servers=[demos[0].address],
        extra={"admin": {"address": f"127.0.0.1:{admin}"}},
    )
    backend = {"service": "app", "backend": demos[0].address}
    wait_for(lambda: _listening(admin), 10, "the admin address")
    with WsClient(g.port) as c1, WsClient(g.port) as c2:
        s = wait_metric(admin, "guard_websocket_tunnels_open", 2, listener="web")
        # open WebSockets count as in-flight work (container services never sleep them)
        assert s.value("guard_backend_in_flight", **backend) == 2
        for i in range(10):
            c1.binary(b"b" * 1000)
            assert c1.message() == b"b" * 1000
            c2.text(f"t{i}")
            assert c2.message() == f"t{i}"
        # billing sees tunnel bytes while the connection is still open
        s = Scrape(admin)
        assert s.value("guard_request_bytes_total", route="chat") >= 10 * 1000
        assert s.value("guard_response_bytes_total", route="chat") >= 10 * 1000
        assert s.value("guard_requests_total", route="chat", code="1xx", method="GET") == 2
        c1.send(CloseConnection(code=1000))
        c1.close_received()
    s = wait_metric(admin, "guard_websocket_tunnels_open", 0, listener="web")
    assert s.value("guard_backend_in_flight", **backend) == 0
    # payloads plus frame headers (2-8 bytes each, and 4 of mask toward the backend)
    assert 10_020 <= s.value("guard_request_bytes_total", route="chat") <= 10_400
    assert 10_020 <= s.value("guard_response_bytes_total", route="chat") <= 10_400
    messages = {
        d: s.value("guard_websocket_messages_total", listener="web", route="chat", direction=d)
        for d in ("in", "out")
    }
    assert messages == ({"in": 20, "out": 20} if mode == "frames" else {"in": 0, "out": 0})


def test_access_log_one_line_when_the_websocket_ends(guard, demos, tmp_path) -> None:
    log = tmp_path / "access.log"
    g = guard(servers=[demos[0].address], http={"access_log": str(log)})
    with WsClient(g.port) as c:
        c.binary(b"a" * 300)
        assert c.message() == b"a" * 300
        c.text("!close 4003 x")
        c.close_received()
    wait_for(lambda: log.exists() and log.read_text().strip(), 5, "the access log line")
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["status"] == 101 and line["websocket"] == "tunnel"
    assert line["path"] == "/ws" and line["backend"] == demos[0].address
    assert 300 < line["bytes_in"] < 400 and 300 < line["bytes_out"] < 400
    assert line["error"] is None


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_backpressure_bounds_guard_memory(guard, raw_backend) -> None:
    """A backend that stops reading: Guard stops reading the client, never buffers it all."""
    stop = threading.Event()

    def script(ws: WsBackendConn) -> None:
        stop.wait(30)  # reads nothing

    b = raw_backend(ws_backend(script))
    g = guard(servers=[b.address])
    with WsClient(g.port) as c:
        before = g.rss_kib()
        # one masked binary frame of 1 GiB, then its payload for as long as it is taken
        c.sock.sendall(b"\x82\xff" + (1 << 30).to_bytes(8, "big") + b"mask")
        chunk = b"w" * MiB
        c.sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sent < 200 * MiB:
            try:
                sent += c.sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        grown = g.rss_kib() - before
        stop.set()
    assert sent < 100 * MiB, f"{sent} bytes accepted: nothing held the client back"
    assert grown < 32 * 1024, f"guard grew by {grown} KiB"


# ------------------------------------------------------------------------ codec and cursor


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_request_head(self, head) -> None:
        self.events.append(("head", head.target, head.upgrade))

    def on_request_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_request_complete(self) -> None:
        self.events.append(("complete",))

    def on_response_head(self, head) -> None:
        self.events.append(("response", head.status, head.upgrade))

    def on_response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_response_complete(self) -> None:
        self.events.append(("complete",))


SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


@pytest.mark.parametrize("step", [None, 1, 7])
def test_codec_101_leaves_the_tail(parser: str, step: int | None) -> None:
    rec = Recorder()
    p = make_response_parser(parser, rec, max_header_bytes=8192, max_headers=100)
    p.start(b"GET")
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCH + b"\x81\x02hi"
    for i in range(0, len(data), step or len(data)):
        p.feed(data[i : i + (step or len(data))])
    assert rec.events == [("response", 100, None), ("response", 101, b"websocket")]
    assert p.upgraded_tail == b"\x81\x02hi"
    p.feed(b"more")
    assert p.upgraded_tail == b"\x81\x02himore"
    assert not p.feed_eof()


@pytest.mark.parametrize(
    "head", [b"HTTP/1.1 101 X\r\nUpgrade: websocket\r\n\r\n", b"HTTP/1.1 101 X\r\n\r\n"]
)
def test_codec_101_without_upgrade_headers_is_malformed(parser: str, head: bytes) -> None:
    rec = Recorder()
    p = make_response_parser(parser, rec, max_header_bytes=8192, max_headers=100)
    p.start(b"GET")
    with pytest.raises(GuardError) as e:
        p.feed(head + b"tail")
    assert e.value.status == 502
    assert rec.events == []


def test_codec_resume_after_a_refused_upgrade(parser: str) -> None:
    rec = Recorder()
    p = make_request_parser(parser, rec, max_header_bytes=8192, max_headers=100)
    p.feed(upgrade_request("/ws") + b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3")
    assert [e[:2] for e in rec.events] == [("head", b"/ws"), ("complete",)]
    assert p.upgraded_tail is not None and p.upgraded_tail.startswith(b"GET /2")
    tail = p.resume()
    assert p.upgraded_tail is None
    p.feed(tail)
    p.feed(b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [e[:2] for e in rec.events][2:] == [
        ("head", b"/2"),
        ("complete",),
        ("head", b"/3"),
        ("complete",),
    ]


def _frames(rng: random.Random) -> tuple[bytes, list[int]]:
    """Random frames (masked or not, every length encoding); the offsets where each ends."""
    out = bytearray()
    ends = []
    for _ in range(60):
        size = rng.choice([0, 1, 125, 126, 127, 200, 65535, 65536, 70000])
        opcode = rng.choice([0x1, 0x2, 0x0, 0x9, 0xA])
        masked = rng.random() < 0.5
        proto = FrameProtocol(masked, [])
        if opcode in (0x9, 0xA):
            frame = proto.ping(b"p" * min(size, 125)) if opcode == 0x9 else proto.pong(b"")
        else:
            frame = proto.send_data(b"d" * size, True)
        out += frame
        ends.append(len(out))
    out += FrameProtocol(False, []).close(1000, "")
    ends.append(len(out))
    return bytes(out), ends


@pytest.mark.parametrize("seed", range(4))
def test_frame_cursor_stops_at_the_next_boundary(seed: int) -> None:
    rng = random.Random(seed)
    data, ends = _frames(rng)
    boundaries = [0, *ends]
    for _ in range(300):
        p = rng.randrange(len(data))
        cur = _FrameCursor()
        i = 0
        while i < p:  # reach p in pieces of every size (headers split too)
            j = min(p, i + rng.choice([1, 2, 3, 9, 14, 5000, 100_000]))
            assert cur.advance(data[i:j]) == j - i
            i = j
        k = cur.advance(data[p:], stop=True)
        assert p + k == min(b for b in boundaries if b >= p)
        assert cur.at_boundary


def test_frame_cursor_plain_advance_tracks_close() -> None:
    data, _ = _frames(random.Random(9))
    cur = _FrameCursor()
    for i in range(0, len(data), 4093):
        cur.advance(data[i : i + 4093])
    assert cur.at_boundary and cur.closed
