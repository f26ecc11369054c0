"""Guard's own demo backend: a small, honest origin server for tests, examples and benchmarks.

Run as ``python -m guard.demo [http|tcp|udp] [--host H] [--port P]`` (``$PORT`` is the
default port, then 8000; ``http`` is the default mode).

HTTP endpoints:

- ``/healthz``                      200 ``ok``
- ``/bytes/N[?chunked=1]``          N bytes of a fixed 64-character pattern (byte i is
                                    ``PATTERN[i % 64]``), written in 64 KiB pieces with
                                    backpressure, so a 1 GiB body never sits in memory
- ``/stream?chunks=N&interval=S``   chunked body, one line ``chunk i\\n`` per chunk, S seconds apart
- ``/status/CODE``                  that status, empty body
- ``/slow?delay=S``                 answers after S seconds
- ``/ws``                           WebSocket echo (wsproto): each message comes back as it
                                    was sent (text or binary, fragments as they arrive),
                                    pings are answered, a close is answered with its code.
                                    Text messages starting with ``!`` are commands instead:
                                    ``!close CODE [REASON]`` closes with that code, ``!send N``
                                    sends a binary message of N pattern bytes, ``!drop``
                                    cuts the TCP connection without a close frame
- anything else                     JSON echo of the request (method, raw target, headers in
                                    received order and case, body, body_length, port)

An upgrade request to any other path is answered as a plain request, with
``Connection: close`` (the demo speaks no other protocol).

Every response carries ``X-Demo-Port`` so tests can tell instances apart.

It is written the same way as the proxy itself (uvloop, ``asyncio.Protocol``, httptools) so
it is fast enough to sit behind Guard in a load test without being the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httptools
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; the demo still runs without it
    uvloop = None  # type: ignore[assignment]

PATTERN = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
PIECE_SIZE = 64 * 1024
# 64 divides 64 KiB, so every full piece of /bytes/N is this same block: no per-piece work.
PIECE = PATTERN * (PIECE_SIZE // len(PATTERN))

# Stop reading a connection whose client pipelines this many requests ahead of us, so a
# flood of pipelined requests can't queue without bound.
MAX_PIPELINED = 32

DEFAULT_PORT = 8000


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


@dataclass
class Request:
    method: str = ""
    url: bytes = b""
    version: str = "1.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    keep_alive: bool = True
    upgrade: bool = False


class HttpProtocol(asyncio.Protocol):
    """One client connection. Requests are parsed as they arrive and answered strictly in
    order: a queue of complete requests is worked off by one task at a time, so a slow
    request at the head of a pipeline holds back the ones behind it, as HTTP/1.1 requires."""

    def __init__(self, port: int, connections: set[HttpProtocol]) -> None:
        self.port = port
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current = Request()
        self.queue: collections.deque[Request] = collections.deque()
        self.worker: asyncio.Task[None] | None = None
        self.closed = False
        self.reading_paused = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.port_header = b"X-Demo-Port: %d\r\n" % port
        self.upgrade_tail: bytes | None = None  # bytes after an upgrade request, held
        self.ws: WsConnection | None = None  # set once /ws switched the connection

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports don't subclass asyncio.Transport; they only quack like one.
        self.transport = cast(asyncio.Transport, transport)
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        # Wake a writer blocked on backpressure so it notices the connection is gone.
        self.can_write.set()
        if self.worker is not None:
            self.worker.cancel()

    def pause_writing(self) -> None:
        self.can_write.clear()
        if self.ws is not None and self.transport is not None:
            self.transport.pause_reading()  # an echo that is not read: stop taking more

    def resume_writing(self) -> None:
        self.can_write.set()
        if self.ws is not None and self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            ws_received(self, data)
            return
        if self.upgrade_tail is not None:
            self.upgrade_tail += data  # the upgrade request is not answered yet
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self.ws is not None:  # /ws switched while the request completed
                ws_received(self, data[e.args[0] :])
            else:
                # Kept for /ws if it is still queued; any other answer closes (see head()).
                self.upgrade_tail = data[e.args[0] :]
                self._enqueue_close()
        except httptools.HttpParserError:
            self._bad_request()

    def eof_received(self) -> bool:
        # Half-closed by the client: finish the pipeline already received, then close.
        self._enqueue_close()
        return True

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = Request()

    def on_url(self, url: bytes) -> None:
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.current
        req.method = self.parser.get_method().decode("ascii", "replace")
        req.version = self.parser.get_http_version()
        req.keep_alive = self.parser.should_keep_alive()
        req.upgrade = self.parser.should_upgrade()
        if req.upgrade and req.url.split(b"?", 1)[0] != b"/ws":
            req.keep_alive = False  # answered as a plain request; nothing can follow it
        # Only send 100 Continue when nothing is ahead of this request; otherwise it would
        # land in the middle of an earlier response. Clients fall back to sending anyway.
        if (
            req.version == "1.1"
            and self.worker is None
            and not self.queue
            and any(n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in req.headers)
        ):
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        req = self.current
        if self.worker is None and not self.queue:
            # Fast path: nothing ahead of this request, and most endpoints answer without
            # waiting, so they are answered right here without a task.
            pending = dispatch(self, req)
            if pending is None:
                if not req.keep_alive:
                    self.close()
                return
            self.worker = asyncio.get_running_loop().create_task(self._work(req, pending))
            return
        self.queue.append(req)
        if len(self.queue) >= MAX_PIPELINED and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    # -- responding -------------------------------------------------------------------------

    def _enqueue_close(self) -> None:
        # A sentinel with no method and keep_alive False: closes after everything ahead of it.
        if self.transport is None or self.closed:
            return
        if self.worker is None and not self.queue:
            self.close()
            return
        self.queue.append(Request(method="", keep_alive=False))

    def _bad_request(self) -> None:
        body = b"bad request\n"
        self.queue.clear()
        if self.worker is not None:
            self.worker.cancel()
            self.worker = None
        self.write(self.head(400, [(b"Content-Type", b"text/plain")], len(body), False) + body)
        self.close()

    async def _work(
        self, first: Request | None = None, pending: Awaitable[None] | None = None
    ) -> None:
        """Answer queued requests in order; `first` has already started (`pending`)."""
        try:
            if first is not None and pending is not None:
                await pending
                if not first.keep_alive:
                    self.close()
                    return
            while self.queue and not self.closed:
                req = self.queue.popleft()
                if self.reading_paused and len(self.queue) < MAX_PIPELINED // 2:
                    self.reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                if req.method:
                    step = dispatch(self, req)
                    if step is not None:
                        await step
                if not req.keep_alive:
                    self.close()
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self.worker = None

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self.closed:
            raise ConnectionResetError("client went away")
        if not self.can_write.is_set():
            await self.can_write.wait()
            if self.closed:
                raise ConnectionResetError("client went away")

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def head(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        keep_alive: bool,
        version: str = "1.1",
    ) -> bytes:
        """Status line and headers. length None = chunked on HTTP/1.1, close-delimited on 1.0
        (an HTTP/1.0 client can't decode chunked)."""
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status).encode()), self.port_header]
        lines.extend(b"%s: %s\r\n" % (n, v) for n, v in headers)
        if length is not None:
            if status not in (204, 304) and not 100 <= status < 200:
                lines.append(b"Content-Length: %d\r\n" % length)
        elif version == "1.1":
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        elif version == "1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def respond(
        self,
        req: Request,
        status: int,
        body: bytes = b"",
        content_type: bytes = b"text/plain",
    ) -> None:
        """A whole response with a Content-Length body (none for HEAD, 204, 304)."""
        headers = [(b"Content-Type", content_type)] if body else []
        self.write(self.head(status, headers, len(body), req.keep_alive, req.version))
        if body and req.method != "HEAD" and status not in (204, 304):
            self.write(body)


# -- endpoints ------------------------------------------------------------------------------


def _query(req: Request) -> dict[str, str]:
    q = parse_qs(urlsplit(req.url.decode("latin-1")).query)
    return {k: v[-1] for k, v in q.items()}


def healthz(conn: HttpProtocol, req: Request) -> None:
    conn.respond(req, 200, b"ok")


def send_bytes(conn: HttpProtocol, req: Request) -> Awaitable[None] | None:
    path = urlsplit(req.url.decode("latin-1")).path
    try:
        total = int(path.removeprefix("/bytes/"))
        if total < 0:
            raise ValueError
    except ValueError:
        conn.respond(req, 400, b"/bytes/N needs a non-negative integer N\n")
        return None
    chunked = _query(req).get("chunked") in ("1", "true", "yes")
    http11 = req.version == "1.1"
    framed = chunked and http11
    # HTTP/1.0 can't take chunked: fall back to a close-delimited body.
    if chunked and not http11:
        req.keep_alive = False
    ctype = [(b"Content-Type", b"application/octet-stream")]
    conn.write(conn.head(200, ctype, None if chunked else total, req.keep_alive, req.version))
    if req.method == "HEAD":
        return None
    left = total

    def write_some() -> None:
        # Write pieces until done or the transport says its buffer is full (pause_writing
        # is called from inside write()), so at most ~one piece over the high-water mark
        # is ever buffered.
        nonlocal left
        while left > 0 and conn.can_write.is_set() and not conn.closed:
            piece = PIECE if left >= PIECE_SIZE else PIECE[:left]
            left -= len(piece)
            conn.write(b"%x\r\n%s\r\n" % (len(piece), piece) if framed else piece)
        if left == 0 and framed:
            conn.write(b"0\r\n\r\n")

    write_some()
    if left == 0:
        return None

    async def rest() -> None:
        while left > 0:
            await conn.drain()
            write_some()

    return rest()


async def stream(conn: HttpProtocol, req: Request) -> None:
    q = _query(req)
    try:
        chunks = int(q.get("chunks", "5"))
        interval = float(q.get("interval", "0.1"))
        if chunks < 0 or interval < 0:
            raise ValueError
    except ValueError:
        conn.respond(req, 400, b"/stream needs chunks>=0 and interval>=0\n")
        return
    http11 = req.version == "1.1"
    if not http11:
        req.keep_alive = False  # close-delimited body
    ctype = [(b"Content-Type", b"text/plain")]
    conn.write(conn.head(200, ctype, None, req.keep_alive, req.version))
    if req.method == "HEAD":
        return
    for i in range(chunks):
        if i:
            await asyncio.sleep(interval)
        line = b"chunk %d\n" % i
        conn.write(b"%x\r\n%s\r\n" % (len(line), line) if http11 else line)
        await conn.drain()
    if http11:
        conn.write(b"0\r\n\r\n")


def status(conn: HttpProtocol, req: Request) -> None:
    path = urlsplit(req.url.decode("latin-1")).path
    try:
        code = int(path.removeprefix("/status/"))
    except ValueError:
        code = 0
    # 1xx would be an interim response, not an answer; the client would wait for another.
    if not 200 <= code <= 599:
        conn.respond(req, 400, b"/status/CODE needs 200 <= CODE <= 599\n")
        return
    conn.respond(req, code)


def slow(conn: HttpProtocol, req: Request) -> Awaitable[None] | None:
    try:
        delay = float(_query(req).get("delay", "1"))
        if delay < 0:
            raise ValueError
    except ValueError:
        conn.respond(req, 400, b"/slow needs delay>=0\n")
        return None

    async def later() -> None:
        await asyncio.sleep(delay)
        conn.respond(req, 200, b"slept %s\n" % repr(delay).encode())

    return later()


def echo(conn: HttpProtocol, req: Request) -> None:
    body = bytes(req.body)
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    doc = {
        "method": req.method,
        "path": req.url.decode("latin-1"),
        "http_version": req.version,
        # latin-1 maps every byte to one code point, so odd header bytes survive the trip.
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers],
        "body": text,
        "body_encoding": encoding,
        "body_length": len(body),
        "port": conn.port,
    }
    conn.respond(req, 200, json.dumps(doc).encode(), b"application/json")


# -- websocket ------------------------------------------------------------------------------

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def websocket(conn: HttpProtocol, req: Request) -> None:
    """The opening handshake of /ws; the connection then speaks WebSocket (wsproto)."""
    headers = {n.lower(): v for n, v in req.headers}
    key = headers.get(b"sec-websocket-key")
    if not req.upgrade or headers.get(b"upgrade", b"").lower() != b"websocket" or key is None:
        req.keep_alive = False
        conn.respond(req, 400, b"/ws needs a websocket upgrade\n")
        return
    accept = base64.b64encode(hashlib.sha1(key.strip() + _WS_GUID).digest())
    conn.write(
        b"HTTP/1.1 101 Switching Protocols\r\n%sUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: %s\r\n\r\n" % (conn.port_header, accept)
    )
    conn.ws = WsConnection(ConnectionType.SERVER)
    req.keep_alive = True  # (the connection lives on as a WebSocket)
    tail, conn.upgrade_tail = conn.upgrade_tail, None
    if conn.queue and not conn.queue[-1].method:
        conn.queue.pop()  # the close queued for an upgrade nobody took: this one is taken
    if tail:
        ws_received(conn, tail)


def ws_received(conn: HttpProtocol, data: bytes) -> None:
    ws = conn.ws
    assert ws is not None
    if ws.state is ConnectionState.CLOSED:
        return
    ws.receive_data(data)
    for event in ws.events():
        if isinstance(event, TextMessage) and event.message_finished and event.data[:1] == "!":
            ws_command(conn, ws, event.data)
        elif isinstance(event, Message):
            conn.write(ws.send(event))  # the same data, fin and type: an echo
        elif isinstance(event, Ping):
            conn.write(ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            if ws.state is ConnectionState.REMOTE_CLOSING:
                conn.write(ws.send(event.response()))
            conn.close()  # the server closes the TCP connection first (RFC 6455 7.1.1)
            return


def ws_command(conn: HttpProtocol, ws: WsConnection, command: str) -> None:
    name, _, arg = command[1:].partition(" ")
    if name == "close":
        code, _, reason = arg.partition(" ")
        conn.write(ws.send(CloseConnection(code=int(code or 1000), reason=reason)))
    elif name == "send":
        n = int(arg)
        conn.write(ws.send(BytesMessage(data=(PATTERN * (n // len(PATTERN) + 1))[:n])))
    elif name == "drop" and conn.transport is not None:
        conn.transport.abort()
    else:
        conn.write(ws.send(TextMessage(data=command)))  # not a command: echoed


def dispatch(conn: HttpProtocol, req: Request) -> Awaitable[None] | None:
    """Answer `req`. Returns None when the answer is fully written already, or an awaitable
    that finishes it (slow, streaming, or blocked on backpressure)."""
    path = req.url.split(b"?", 1)[0]
    if path == b"/ws":
        websocket(conn, req)
    elif path == b"/healthz":
        healthz(conn, req)
    elif path.startswith(b"/bytes/"):
        return send_bytes(conn, req)
    elif path == b"/stream":
        return stream(conn, req)
    elif path.startswith(b"/status/"):
        status(conn, req)
    elif path == b"/slow":
        return slow(conn, req)
    else:
        echo(conn, req)
    return None


# -- tcp / udp ------------------------------------------------------------------------------


class TcpEcho(asyncio.Protocol):
    """Echo bytes back. Half-close aware: after the client's FIN, the echoes already queued
    are flushed and then the connection closes (transport.close() drains the buffer)."""

    def __init__(self, connections: set[asyncio.BaseTransport]) -> None:
        self.connections = connections
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports don't subclass asyncio.Transport; they only quack like one.
        self.transport = cast(asyncio.Transport, transport)
        self.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    # A client that sends without reading must not grow our buffer forever: stop reading
    # until it has taken what we already echoed.
    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        assert self.transport is not None
        self.transport.close()
        return True


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(b"pong" if data == b"ping" else data, addr)


# -- modes ----------------------------------------------------------------------------------


def _announce(mode: str, host: str, port: int) -> None:
    # One line on stdout: tests and scripts that start the demo on port 0 can read the port.
    print(f"guard.demo {mode} listening on {host}:{port}", flush=True)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_http(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    connections: set[HttpProtocol] = set()
    bound: list[int] = [port]
    # The port in the echo and X-Demo-Port is the real bound one, even when asked for 0.
    server = await loop.create_server(
        lambda: HttpProtocol(bound[0], connections), host, port, reuse_address=True, backlog=1024
    )
    bound[0] = server.sockets[0].getsockname()[1]
    _announce("http", host, bound[0])
    try:
        await _wait_for_signal()
    finally:
        server.close()
        for conn in list(connections):
            conn.close()


async def serve_tcp(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    connections: set[asyncio.BaseTransport] = set()
    server = await loop.create_server(
        lambda: TcpEcho(connections), host, port, reuse_address=True, backlog=1024
    )
    _announce("tcp", host, server.sockets[0].getsockname()[1])
    try:
        await _wait_for_signal()
    finally:
        server.close()
        for transport in list(connections):
            transport.close()


async def serve_udp(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=(host, port))
    _announce("udp", host, transport.get_extra_info("sockname")[1])
    try:
        await _wait_for_signal()
    finally:
        transport.close()


# Mode name -> server coroutine. New modes plug in here and in nowhere else. (WebSocket is
# no mode of its own: http serves it on /ws, as an origin behind a proxy would.)
MODES: dict[str, Callable[[str, int], Coroutine[Any, Any, None]]] = {
    "http": serve_http,
    "tcp": serve_tcp,
    "udp": serve_udp,
}


def _default_port() -> int:
    raw = os.environ.get("PORT", "")
    try:
        return int(raw) if raw else DEFAULT_PORT
    except ValueError:
        return DEFAULT_PORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guard.demo",
        description="Guard's demo backend (http echo & friends, tcp echo, udp echo).",
    )
    parser.add_argument("mode", nargs="?", default="http", help=f"one of {', '.join(MODES)}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $PORT, else 8000")
    args = parser.parse_args(argv)
    if args.mode not in MODES:
        parser.print_usage(sys.stderr)
        print(
            f"{parser.prog}: unknown mode {args.mode!r} (choose from {', '.join(MODES)})",
            file=sys.stderr,
        )
        return 2
    port = args.port if args.port is not None else _default_port()
    runner_kwargs = {"loop_factory": uvloop.new_event_loop} if uvloop is not None else {}
    try:
        with asyncio.Runner(**runner_kwargs) as runner:  # type: ignore[arg-type]
            runner.run(MODES[args.mode](args.host, port))
    except NotImplementedError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{parser.prog}: cannot listen on {args.host}:{port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # A second Ctrl-C before the handler is installed: still a clean exit.
        pass
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
