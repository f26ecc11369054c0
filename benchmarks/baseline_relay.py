"""The floor for a Python proxy: uvloop + asyncio.Protocol + httptools, no features.

No routing, no header rewriting, no timeouts, one upstream connection per client
connection. The load harness runs it as the `relay` target so Guard's overhead can be read
as a ratio to what any Python relay pays on the same machine in the same run.

    python benchmarks/baseline_relay.py LISTEN_PORT BACKEND_PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.headers: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = [b"HTTP/1.1 200 OK\r\n"]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        self.headers.append(b"\r\n")
        self.out = self.headers

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        self.client.transport.write(b"".join(self.out))


class Client(asyncio.Protocol):
    def __init__(self, backend: tuple[str, int]) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Upstream | None = None
        self.pending = b""
        self.connecting: asyncio.Task[None] | None = None
        self.url = b""
        self.headers: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_message_complete(self) -> None:
        request = b"GET %s HTTP/1.1\r\n%s\r\n" % (self.url, b"".join(self.headers))
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(request)
        else:
            self.pending = request
            self.connecting = asyncio.ensure_future(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(lambda: Upstream(self), *self.backend)
        self.upstream.transport.write(self.pending)  # type: ignore[union-attr]


async def main(port: int, backend_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(("127.0.0.1", backend_port)), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
