"""Frame mode keeps no parser state while a WebSocket is idle (issue 3: <= 4 KiB each).

In process, over real socket pairs: a FrameRelay between a wsproto client and a wsproto
server, with a fast sweeper tick, so the test can look at what the relay holds between
messages and check that what it drops never changes what goes through.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, Message, Ping, Pong, TextMessage

from guard.config.model import HttpConfig, RouteConfig, ServerAddress, ServiceConfig
from guard.http.forwarding import TrustedProxies
from guard.proxy.context import ListenerContext
from guard.proxy.deadlines import DeadlineSweeper
from guard.proxy.websocket import FrameRelay, Handover, start_relay
from guard.routing import build_http_tables
from guard.upstream.pool import UpstreamSettings
from guard.upstream.resolver import Resolver
from guard.upstream.service import Service

TICK = 0.02


class Peer:
    """One end outside Guard: a blocking socket speaking WebSocket through wsproto."""

    def __init__(self, sock: socket.socket, kind: ConnectionType) -> None:
        self.sock = sock
        self.ws = Connection(kind)
        sock.setblocking(False)

    def send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    async def event(self, loop: asyncio.AbstractEventLoop) -> Event:
        while True:
            for event in self.ws.events():
                return event
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 5)
            self.ws.receive_data(data or None)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def _relay(loop: asyncio.AbstractEventLoop) -> tuple[FrameRelay, Peer, Peer]:
    sweeper = DeadlineSweeper(loop, TICK)
    sweeper.start()
    service = Service(
        ServiceConfig(name="app", servers=(ServerAddress("127.0.0.1", 9),)),
        UpstreamSettings("httptools", 65536, 100, 5.0, 60.0),
        loop=loop,
        resolver=Resolver(),
        sweeper=sweeper,
    )
    tables = build_http_tables(
        [RouteConfig(name="chat", listener="web", service="app")], {"app": service}
    )
    ctx = ListenerContext(
        name="web",
        proto=b"http",
        http=HttpConfig(),
        table=tables["web"],
        sweeper=sweeper,
        trusted=TrustedProxies([]),
        via=None,
    )
    pool = service.pools[0]
    pool.backend.in_flight += 1  # as the handshake left it
    client_app, client_guard = socket.socketpair()
    backend_guard, backend_app = socket.socketpair()
    client_t, _ = await loop.connect_accepted_socket(asyncio.Protocol, client_guard)
    backend_t, _ = await loop.connect_accepted_socket(asyncio.Protocol, backend_guard)
    handover = Handover(ctx, "chat", ctx.route_stats("chat", "app"), pool, None, 1 << 20, None)
    relay = start_relay(
        handover,
        client_t,
        backend_t,
        client_tail=b"",
        backend_tail=b"",
        client_write_paused=False,
        backend_write_paused=False,
    )
    assert isinstance(relay, FrameRelay)
    client = Peer(client_app, ConnectionType.CLIENT)
    backend = Peer(backend_app, ConnectionType.SERVER)
    return relay, client, backend


def _holds_state(relay: FrameRelay) -> bool:
    return relay._cws is not None or relay._bws is not None


async def _quiet(ticks: int = 4) -> None:
    await asyncio.sleep(TICK * ticks)


def test_idle_frame_relay_drops_and_remakes_its_wsproto_pair(loop) -> None:
    async def run() -> None:
        relay, client, backend = await _relay(loop)
        assert not _holds_state(relay)  # nothing before the first bytes
        client.send(TextMessage(data="hello"))
        ev = await backend.event(loop)
        assert isinstance(ev, Message) and ev.data == "hello"
        assert _holds_state(relay)
        await _quiet()
        assert not _holds_state(relay)
        assert relay not in relay._ctx.sweeper._tickers  # no ticks owed while idle
        # After the drop: messages, pings and the closing handshake work as before.
        backend.send(TextMessage(data="back"))
        ev = await client.event(loop)
        assert isinstance(ev, Message) and ev.data == "back"
        await _quiet()
        client.send(Ping(payload=b"p"))
        ev = await backend.event(loop)
        assert isinstance(ev, Ping)
        backend.send(ev.response())
        ev = await client.event(loop)
        assert isinstance(ev, Pong) and ev.payload == b"p"
        await _quiet()
        assert not _holds_state(relay)
        client.send(CloseConnection(code=4001, reason="bye"))
        ev = await backend.event(loop)
        assert isinstance(ev, CloseConnection) and ev.code == 4001
        backend.send(ev.response())
        ev = await client.event(loop)
        assert isinstance(ev, CloseConnection) and ev.code == 4001

    loop.run_until_complete(run())


def test_state_is_kept_in_the_middle_of_a_message(loop) -> None:
    async def run() -> None:
        relay, client, backend = await _relay(loop)
        client.send(TextMessage(data="first ", message_finished=False))
        ev = await backend.event(loop)
        assert isinstance(ev, Message) and not ev.message_finished
        await _quiet()
        assert _holds_state(relay)  # a fragmented message is under way both ways
        # a frame split across reads is kept too
        frame = client.ws.send(TextMessage(data="second", message_finished=True))
        client.sock.sendall(frame[:3])
        await _quiet()
        assert _holds_state(relay)
        client.sock.sendall(frame[3:])
        ev = await backend.event(loop)
        assert isinstance(ev, Message) and ev.data == "second" and ev.message_finished
        await _quiet()
        assert not _holds_state(relay)

    loop.run_until_complete(run())


def test_a_busy_relay_keeps_its_pair_between_ticks(loop) -> None:
    async def run() -> None:
        relay, client, backend = await _relay(loop)
        client.send(TextMessage(data="0"))
        await backend.event(loop)
        first = relay._cws
        for i in range(1, 40):  # a message every quarter tick
            client.send(TextMessage(data=str(i)))
            ev = await backend.event(loop)
            assert isinstance(ev, Message) and ev.data == str(i)
            await asyncio.sleep(TICK / 4)
        assert relay._cws is first

    loop.run_until_complete(run())
