"""WebSocket connections after the handshake: a byte tunnel, or a frame relay with limits.

http_proxy forwards the opening handshake as an ordinary request and, once the backend has
answered a valid 101, hands both sockets over here (``transport.set_protocol``). From then
on the client and the backend talk through one of two relays:

- ``ByteTunnel`` (the default) copies bytes untouched both ways. It reads frame *headers*
  only (a few integer operations per frame, none per payload byte) so that it knows where
  frames end: a close frame Guard writes itself (drain, idle timeout, dead backend) must
  land between two frames, never inside one.
- ``FrameRelay`` (a route with ``websocket: {max_message}``) runs wsproto on both sides:
  messages are decoded, limited (close 1009), counted and framed again.

Either way the backend's ``in_flight`` stays raised while the connection lives (container
services count it as activity, so an instance holding an open WebSocket is never put to
sleep), bytes are added to the route's counters as they pass (billing reads them), and the
relay is one of the listener's ``connections``, which is how ``Worker.drain`` reaches it.

Guard ends a connection itself in four cases, each with a properly framed close (masked
toward the backend, where Guard is the client): drain (1001 both ways), idle timeout
(1000 both ways), the backend gone without a close (1011 to the client), and, in frame
mode, a message over the limit (1009 to its sender, 1001 to the other side) or a frame
wsproto rejects (its code, 1002 or 1007, to the sender, 1001 to the other side). It then
waits up to ``CLOSE_TIMEOUT`` for each peer's answering close before closing the socket,
so the peer reads Guard's close frame rather than a reset.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Event, Message, Ping, Pong
from wsproto.frame_protocol import FrameProtocol

from guard.proxy.deadlines import NEVER

if TYPE_CHECKING:
    from guard.http.codec import RequestHead, ResponseHead
    from guard.proxy.context import ListenerContext, RouteStats
    from guard.upstream.container_service import WakeableService
    from guard.upstream.pool import UpstreamPool

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
CLOSE_TIMEOUT = 3.0  # seconds Guard waits for the answer to a close frame it sent

NORMAL = 1000
GOING_AWAY = 1001
TOO_BIG = 1009
INTERNAL_ERROR = 1011

# Sides, as bits of ``_alive`` and ``_cut``.
_CLIENT = 1
_BACKEND = 2

_OPEN = ConnectionState.OPEN
_REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
_CLOSED = ConnectionState.CLOSED


# ------------------------------------------------------------------------ handshake


def accept_value(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def _key(head: RequestHead) -> bytes | None:
    keys = [v for n, v in head.headers if n == b"sec-websocket-key"]
    return keys[0] if len(keys) == 1 else None


def request_error(head: RequestHead) -> str | None:
    """Why a WebSocket upgrade request cannot be passed on, or None."""
    if head.method != b"GET" or head.version != b"1.1":
        return "a websocket upgrade is a GET over HTTP/1.1"
    key = _key(head)
    try:
        valid = key is not None and len(base64.b64decode(key.strip(), validate=True)) == 16
    except binascii.Error:
        valid = False
    return None if valid else "a websocket upgrade needs one valid sec-websocket-key"


def handshake_error(request: RequestHead, response: ResponseHead, *, frames: bool) -> str | None:
    """Why a 101 does not complete this WebSocket handshake, or None.

    The codec already required ``Upgrade`` and ``Connection: upgrade`` on any 101.
    """
    upgrade = response.upgrade or b""
    if upgrade.strip().lower() != b"websocket":
        return "the 101 switches to another protocol"
    key = _key(request)
    accepts = [v for n, v in response.headers if n == b"sec-websocket-accept"]
    if key is None or accepts != [accept_value(key)]:
        return "wrong sec-websocket-accept"
    if frames and any(n == b"sec-websocket-extensions" for n, _ in response.headers):
        # Guard offered none on a frame-mode route: it could not read what it relays.
        return "an extension nobody offered"
    return None


def close_frame(code: int, *, masked: bool) -> bytes:
    """One close frame; ``masked`` toward a server (RFC 6455 5.3), with a fresh key."""
    return bytes(FrameProtocol(masked, []).close(code, ""))


# ------------------------------------------------------------------------ metrics


class WebSocketStats:
    """One listener's WebSocket counters, read at scrape time by guard.metrics.reader."""

    __slots__ = ("messages", "open")

    def __init__(self) -> None:
        self.open = 0
        # route -> [messages client to backend, messages backend to client] (frame mode)
        self.messages: dict[str, list[int]] = {}


# Keyed by listener name. A process runs one worker, so one ListenerContext per name (the
# same reasoning as writes.CORK); kept here rather than on the context so the HTTP hot
# path carries nothing for WebSockets.
STATS: dict[str, WebSocketStats] = {}


def listener_stats(listener: str) -> WebSocketStats:
    stats = STATS.get(listener)
    if stats is None:
        stats = STATS[listener] = WebSocketStats()
    return stats


# ------------------------------------------------------------------------ frame cursor


def _header_size(buf: bytes) -> int:
    if len(buf) < 2:
        return 2
    b1 = buf[1]
    n = b1 & 0x7F
    return 2 + (4 if b1 & 0x80 else 0) + (2 if n == 126 else 8 if n == 127 else 0)


class _FrameCursor:
    """Where one direction's byte stream is among WebSocket frames, from headers only."""

    __slots__ = ("closed", "head", "left")

    def __init__(self) -> None:
        self.left = 0  # payload bytes of the current frame still to come
        self.head = b""  # the start of a frame header split across reads
        self.closed = False  # a close frame went by

    @property
    def at_boundary(self) -> bool:
        return not self.left and not self.head

    def advance(self, data: bytes, stop: bool = False) -> int:
        """Move over ``data``; with ``stop``, only as far as the first frame boundary.

        Returns how many bytes were moved over (all of them unless it stopped).
        """
        n = len(data)
        i = 0
        while True:
            left = self.left
            if left:
                if left >= n - i:
                    self.left = left - (n - i)
                    return n
                i += left
                self.left = 0
                if stop:
                    return i
            if i == n:
                return n
            head = self.head
            if head:
                buf = head + data[i : i + 14]
            elif stop:
                return i
            else:
                buf = data[i : i + 14]
            size = _header_size(buf)
            if size > len(buf):
                # (then all of data[i:] is in buf: a header is at most 14 bytes)
                self.head = buf
                return n
            self.head = b""
            i += size - len(head)
            n7 = buf[1] & 0x7F
            if n7 == 126:
                n7 = int.from_bytes(buf[2:4], "big")
            elif n7 == 127:
                n7 = int.from_bytes(buf[2:10], "big")
            if buf[0] & 0x0F == 0x8:
                self.closed = True
            self.left = n7
            if stop and not n7:
                return i


# ------------------------------------------------------------------------ relays


@dataclass(slots=True)
class Handover:
    """What the HTTP side passes on with the two sockets once a handshake succeeded."""

    ctx: ListenerContext
    route: str
    route_stats: RouteStats
    pool: UpstreamPool  # its backend's in_flight was raised for the handshake: ours now
    container: WakeableService | None
    max_message: int | None  # the route's websocket.max_message: frame mode
    log: dict[str, object] | None  # the access-log fields known at the handshake


class _BackendSide(asyncio.Protocol):
    """The backend socket's protocol: everything goes to the relay."""

    __slots__ = ("relay",)

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        self.relay.backend_data(data)

    def eof_received(self) -> bool:
        return False  # WebSocket has no half-close: the connection ends

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.backend_lost()

    def pause_writing(self) -> None:
        self.relay.transport.pause_reading()

    def resume_writing(self) -> None:
        self.relay.transport.resume_reading()


class _Relay(asyncio.Protocol):
    """The client socket's protocol, and what the two relays share.

    ``transport`` is the client's socket (``Worker.drain`` aborts it when its grace runs
    out); ``deadline`` is read by the listener's sweeper, which holds the relay only while
    it has one (an idle timeout, or a close waiting for its answer).
    """

    __slots__ = (
        "_alive",
        "_backend",
        "_closing",
        "_container",
        "_ctx",
        "_idle",
        "_log",
        "_pool",
        "_reason",
        "_route_stats",
        "_t_start",
        "_ws_stats",
        "bytes_in",
        "bytes_out",
        "deadline",
        "transport",
    )

    mode = ""

    def __init__(self, h: Handover, client: asyncio.Transport, backend: asyncio.Transport) -> None:
        ctx = self._ctx = h.ctx
        self._route_stats = h.route_stats
        self._pool = h.pool
        self._container = h.container
        self._log = h.log
        self.transport = client
        self._backend = backend
        self._ws_stats = listener_stats(ctx.name)
        self._alive = _CLIENT | _BACKEND
        self._closing = False  # Guard is ending the connection (a close timer runs)
        self._reason = ""
        self._idle = ctx.http.timeouts.websocket_idle
        self._t_start = time.perf_counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.deadline = ctx.sweeper.now + self._idle if self._idle > 0 else NEVER

    # -- client socket (asyncio.Protocol)
    def eof_received(self) -> bool:
        return False  # WebSocket has no half-close: the connection ends

    def connection_lost(self, exc: Exception | None) -> None:
        self._alive &= ~_CLIENT
        self._ctx.connections.discard(self)
        if self._alive & _BACKEND:
            self._client_gone()
            self._arm_close_timer()  # the backend's socket closes within it, or is aborted
        else:
            self._end()

    def pause_writing(self) -> None:
        self._backend.pause_reading()

    def resume_writing(self) -> None:
        self._backend.resume_reading()

    def backend_lost(self) -> None:
        self._alive &= ~_BACKEND
        if self._alive & _CLIENT:
            self._backend_gone()
        else:
            self._end()

    # -- ending
    def drain(self) -> None:
        """Graceful shutdown: close 1001 both ways, then close once answered."""
        self._shut(GOING_AWAY, GOING_AWAY, "drain")

    def on_deadline(self) -> None:
        if self._closing:
            # A peer did not answer Guard's close in time.
            for transport in (self.transport, self._backend):
                transport.abort()
        else:
            self._shut(NORMAL, NORMAL, "idle_timeout")

    def _arm_close_timer(self) -> None:
        if not self._closing:
            self._closing = True
            self.deadline = self._ctx.sweeper.now + CLOSE_TIMEOUT
            self._ctx.sweeper.add(self)

    def _touch(self) -> None:
        # (only called with an idle timeout configured and no close under way)
        self.deadline = self._ctx.sweeper.now + self._idle

    def _shut(self, to_client: int, to_backend: int, reason: str) -> None:
        raise NotImplementedError

    def _client_gone(self) -> None:
        raise NotImplementedError

    def _backend_gone(self) -> None:
        raise NotImplementedError

    def backend_data(self, data: bytes) -> None:
        raise NotImplementedError

    def start(self, client_tail: bytes, backend_tail: bytes) -> None:
        ctx = self._ctx
        ctx.connections.add(self)
        if self._idle > 0:
            ctx.sweeper.add(self)
        self._ws_stats.open += 1
        if backend_tail:
            self.backend_data(backend_tail)
        if client_tail:
            self.data_received(client_tail)
        if ctx.draining:
            # The drain began while the handshake was on its way: end at once.
            self.drain()

    def _end(self) -> None:
        """Both sockets are closed: release the backend, record the connection."""
        ctx = self._ctx
        ctx.connections.discard(self)
        ctx.sweeper.discard(self)
        ctx.sweeper.discard_ticker(self)  # (a frame relay's; a no-op for a tunnel)
        self._ws_stats.open -= 1
        pool = self._pool
        pool.backend.in_flight -= 1
        if self._container is not None:
            self._container.done()
        log = self._log
        if log is not None and ctx.access_log is not None:
            ctx.access_log.write(
                {
                    "ts": time.time(),
                    **log,
                    "status": 101,
                    "error": self._reason or None,
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                    "duration": round(time.perf_counter() - self._t_start, 6),
                    "websocket": self.mode,
                }
            )


class ByteTunnel(_Relay):
    """Bytes copied both ways as they come; frame headers watched, never changed."""

    __slots__ = ("_bcur", "_ccur", "_cut", "_to_backend", "_to_client")

    mode = "tunnel"

    def __init__(self, h: Handover, client: asyncio.Transport, backend: asyncio.Transport) -> None:
        super().__init__(h, client, backend)
        self._ccur = _FrameCursor()  # client to backend
        self._bcur = _FrameCursor()  # backend to client
        self._cut = 0  # sides Guard has stopped relaying to (its close went, or can't)
        self._to_client = 0  # close codes Guard sends when it ends the connection
        self._to_backend = 0

    # -- the relay: the hot path
    def data_received(self, data: bytes) -> None:
        if self._closing:
            self._closing_data(data, self._ccur, _BACKEND)
            return
        self._ccur.advance(data)
        n = len(data)
        self.bytes_in += n
        self._route_stats.bytes_in += n
        if self._idle > 0:
            self._touch()
        self._backend.write(data)

    def backend_data(self, data: bytes) -> None:
        if self._closing:
            self._closing_data(data, self._bcur, _CLIENT)
            return
        self._bcur.advance(data)
        n = len(data)
        self.bytes_out += n
        self._route_stats.bytes_out += n
        if self._idle > 0:
            self._touch()
        self.transport.write(data)

    # -- ending
    def _toward(self, side: int) -> tuple[_FrameCursor, asyncio.Transport]:
        """The stream going to ``side`` and that side's socket."""
        if side == _CLIENT:
            return self._bcur, self.transport
        return self._ccur, self._backend

    def _shut(self, to_client: int, to_backend: int, reason: str) -> None:
        if self._closing:
            return
        self._reason = self._reason or reason
        self._to_client, self._to_backend = to_client, to_backend
        self._arm_close_timer()
        for side in (_CLIENT, _BACKEND):
            cur, transport = self._toward(side)
            if not self._alive & side:
                self._cut |= side
            elif cur.at_boundary:
                self._cut_toward(side)
            elif not self._alive & (_CLIENT | _BACKEND) & ~side:
                # Mid-frame, and the frame's sender is gone: no close frame can follow.
                self._cut |= side
                transport.close()
            # else: the relay finishes the frame in progress first (_closing_data)
        self._settle()

    def _cut_toward(self, side: int) -> None:
        """Relay nothing more to ``side``; send it Guard's close unless one went already."""
        self._cut |= side
        cur, transport = self._toward(side)
        if not cur.closed:
            if side == _CLIENT:
                transport.write(close_frame(self._to_client, masked=False))
            else:
                transport.write(close_frame(self._to_backend, masked=True))

    def _closing_data(self, data: bytes, cur: _FrameCursor, to: int) -> None:
        if not self._cut & to:
            # finish the frame in progress, then Guard's close follows it
            k = cur.advance(data, stop=True)
            if k:
                part = data[:k] if k < len(data) else data
                if to == _CLIENT:
                    self.bytes_out += k
                    self._route_stats.bytes_out += k
                    self.transport.write(part)
                else:
                    self.bytes_in += k
                    self._route_stats.bytes_in += k
                    self._backend.write(part)
            if not cur.at_boundary:
                return
            self._cut_toward(to)
            data = data[k:]
        if data:
            cur.advance(data)  # dropped: watched only for the peer's answering close
        self._settle()

    def _settle(self) -> None:
        """Close each side that got Guard's close (or none can come) and sent its own."""
        if self._cut & _CLIENT and self._ccur.closed and self._alive & _CLIENT:
            self.transport.close()
        if self._cut & _BACKEND and self._bcur.closed and self._alive & _BACKEND:
            self._backend.close()

    def _client_gone(self) -> None:
        self._cut |= _CLIENT
        if not self._cut & _BACKEND:
            if not self._ccur.at_boundary:
                # The client went mid-frame: no close frame can follow it.
                self._cut |= _BACKEND
                self._backend.close()
                return
            self._to_backend = GOING_AWAY
            self._cut_toward(_BACKEND)
        self._settle()  # the backend's socket closes once it answered (or on the timer)

    def _backend_gone(self) -> None:
        if self._closing:
            if not self._cut & _CLIENT and not self._bcur.at_boundary:
                self._cut |= _CLIENT
                self.transport.close()
            self._settle()
        elif self._bcur.closed:
            # The backend ended the session itself; its close frame reached the client.
            self.transport.close()
        else:
            self._shut(INTERNAL_ERROR, GOING_AWAY, "backend_closed")


def _quiescent(ws: Connection | None) -> bool:
    """True when ``ws`` holds nothing a new Connection would not: open, no byte buffered,
    no event queued, no message half received or half sent.

    This reads wsproto internals (there is no public way to ask); if they are not what this
    expects, the answer is False and the connection is simply kept.
    """
    if ws is None:
        return True
    try:
        proto = ws._proto
        decoder = proto._frame_decoder
        return (
            ws.state is _OPEN
            and not ws._events
            and decoder.header is None
            and not len(decoder.buffer)
            and proto._message_decoder.opcode is None
            and proto._outbound_opcode is None
        )
    except AttributeError:
        return False


class FrameRelay(_Relay):
    """wsproto on both sides: messages limited, counted and framed again.

    The two wsproto connections (~3.4 KiB together) exist only while the WebSocket is
    busy: made on its first bytes, dropped by ``on_tick`` once a whole sweeper tick went
    by without any and both are between messages. An idle WebSocket in frame mode then
    costs what a tunnelled one does; a busy one pays for a new pair at most once a tick.
    """

    __slots__ = ("_busy", "_bws", "_counts", "_cws", "_limit", "_size_in", "_size_out")

    mode = "frames"

    def __init__(self, h: Handover, client: asyncio.Transport, backend: asyncio.Transport) -> None:
        super().__init__(h, client, backend)
        assert h.max_message is not None
        self._cws: Connection | None = None  # Guard is the client's server...
        self._bws: Connection | None = None  # ...and the backend's client
        self._busy = False  # bytes arrived since the last tick
        self._limit = h.max_message
        self._size_in = 0  # bytes so far of the message in progress, each way
        self._size_out = 0
        counts = self._ws_stats.messages.get(h.route)
        if counts is None:
            counts = self._ws_stats.messages[h.route] = [0, 0]
        self._counts = counts

    def data_received(self, data: bytes) -> None:
        self._receive(_CLIENT, data)

    def backend_data(self, data: bytes) -> None:
        self._receive(_BACKEND, data)

    def _ws(self, side: int) -> Connection:
        ws = self._cws if side == _CLIENT else self._bws
        if ws is None:
            if side == _CLIENT:
                ws = self._cws = Connection(ConnectionType.SERVER)
            else:
                ws = self._bws = Connection(ConnectionType.CLIENT)
            self._ctx.sweeper.add_ticker(self)
        return ws

    def _state(self, side: int) -> ConnectionState:
        ws = self._cws if side == _CLIENT else self._bws
        return _OPEN if ws is None else ws.state

    def on_tick(self) -> bool:
        """Once per sweeper tick while the wsproto pair exists: drop it if quiet."""
        if self._busy:
            self._busy = False
            return False
        if self._closing or not (_quiescent(self._cws) and _quiescent(self._bws)):
            return False  # mid-message or closing: the state is needed
        self._cws = self._bws = None
        return True

    def _receive(self, src: int, data: bytes) -> None:
        self._busy = True
        ws = self._ws(src)
        if ws.state is _CLOSED:
            return  # after its close: nothing more is read from it
        if self._idle > 0 and not self._closing:
            self._touch()
        ws.receive_data(data)
        dst = _BACKEND if src == _CLIENT else _CLIENT
        for event in ws.events():
            if isinstance(event, Message):
                self._message(src, dst, event)
            elif isinstance(event, Ping | Pong):
                # passed on, so a ping measures the whole path to the other end
                self._send(dst, event)
            elif isinstance(event, CloseConnection):
                self._close_event(src, dst, ws, event)

    def _message(self, src: int, dst: int, event: Message) -> None:
        data = event.data
        n = len(data.encode()) if isinstance(data, str) else len(data)
        size = (self._size_in if src == _CLIENT else self._size_out) + n
        if size > self._limit:
            if src == _CLIENT:
                self._shut(TOO_BIG, GOING_AWAY, "message_too_big")
            else:
                self._shut(GOING_AWAY, TOO_BIG, "message_too_big")
            return
        if event.message_finished:
            size = 0
            self._counts[0 if src == _CLIENT else 1] += 1
        if src == _CLIENT:
            self._size_in = size
        else:
            self._size_out = size
        if data or event.message_finished:
            self._send(dst, event)

    def _send(self, dst: int, event: Event) -> None:
        ws = self._ws(dst)
        if ws.state is not _OPEN or not self._alive & dst:
            return  # that side is closing: no more data goes to it
        self._write(dst, ws.send(event))

    def _write(self, dst: int, out: bytes) -> None:
        n = len(out)
        if dst == _CLIENT:
            self.bytes_out += n
            self._route_stats.bytes_out += n
            self.transport.write(out)
        else:
            self.bytes_in += n
            self._route_stats.bytes_in += n
            self._backend.write(out)

    def _send_close(self, side: int, code: int, reason: str = "") -> None:
        ws = self._ws(side)
        if self._alive & side and ws.state in (_OPEN, _REMOTE_CLOSING):
            self._write(side, ws.send(CloseConnection(code=code, reason=reason)))

    def _close_event(self, src: int, dst: int, ws: Connection, event: CloseConnection) -> None:
        state = ws.state
        if state is _REMOTE_CLOSING:
            # src starts the closing handshake: pass it on, and dst's answer answers src
            # (or, with dst closing already, answer src at once with its own code)
            if self._ws(dst).state is _OPEN and self._alive & dst:
                self._send_close(dst, event.code, event.reason or "")
            else:
                self._send_close(src, event.code, event.reason or "")
        elif state is _CLOSED:
            # src answered a close it was sent; if that was passed on from dst, answer dst
            if self._ws(dst).state is _REMOTE_CLOSING:
                self._send_close(dst, event.code, event.reason or "")
        else:
            # wsproto reports a protocol error as a close it did not receive
            if src == _CLIENT:
                self._shut(event.code, GOING_AWAY, "protocol_error")
            else:
                self._shut(GOING_AWAY, event.code, "protocol_error")
            return
        self._settle()

    def _shut(self, to_client: int, to_backend: int, reason: str) -> None:
        if self._closing:
            return
        self._reason = self._reason or reason
        self._arm_close_timer()
        self._send_close(_CLIENT, to_client)
        self._send_close(_BACKEND, to_backend)
        self._settle()

    def _settle(self) -> None:
        """Close each side whose closing handshake is over (its answer may still be due
        from the other side; each socket goes as soon as its own handshake ends)."""
        if self._state(_CLIENT) is _CLOSED and self._alive & _CLIENT:
            self.transport.close()
        if self._state(_BACKEND) is _CLOSED and self._alive & _BACKEND:
            self._backend.close()

    def _client_gone(self) -> None:
        self._send_close(_BACKEND, GOING_AWAY)
        self._settle()  # the backend's socket closes once it answered (or on the timer)

    def _backend_gone(self) -> None:
        state = self._state(_CLIENT)
        if state is _OPEN:
            self._shut(INTERNAL_ERROR, GOING_AWAY, "backend_closed")
            return
        if state is _REMOTE_CLOSING:
            self._send_close(_CLIENT, NORMAL)  # its close will get no other answer
        self._arm_close_timer()
        self._settle()


def start_relay(
    h: Handover,
    client: asyncio.Transport,
    backend: asyncio.Transport,
    *,
    client_tail: bytes,
    backend_tail: bytes,
    client_write_paused: bool,
    backend_write_paused: bool,
) -> _Relay:
    """Take both sockets of a switched connection over (the 101 went to the client)."""
    relay = (
        ByteTunnel(h, client, backend) if h.max_message is None else FrameRelay(h, client, backend)
    )
    client.set_protocol(relay)
    backend.set_protocol(_BackendSide(relay))
    # The HTTP side stopped reading the client at the upgrade; from now on each socket is
    # read while the other can take more.
    if backend_write_paused:
        client.pause_reading()
    else:
        client.resume_reading()
    if client_write_paused:
        backend.pause_reading()
    else:
        backend.resume_reading()
    relay.start(client_tail, backend_tail)
    return relay
