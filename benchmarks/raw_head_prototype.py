"""What a raw-head HTTP path would cost per request: a measurement, not Guard's code.

The essential per-request work of a keep-alive GET and its 12-byte answer, done the way a
raw-head design would do it: llhttp (httptools) parses both heads with no per-header
callbacks; the Host value is taken, and any hop-by-hop or forwarding header detected, by
one compiled regex over the raw head; the head goes out as received plus the
``X-Forwarded-*`` lines; the response's ``Connection`` line is cut by ``re.sub``; a dict
route lookup, a pool and counters. Transports only count writes (as in
``test_bench_proxy_path.py``, which measures Guard's real path the same way).

    python benchmarks/raw_head_prototype.py

Prints microseconds of CPU per request, the best of five rounds of 50,000. See
RESULTS.md, "Where the time goes", for what stands between this and Guard.
"""

from __future__ import annotations

import re
import time

import httptools
from test_bench_proxy_path import REQUEST, RESPONSE  # the same exchange as Guard's

HOST = re.compile(rb"\r\nhost:[ \t]*([^\r\n:]*)", re.I)
# Headers that need more than passing through: the slow path would take those requests.
SPECIAL_REQUEST = re.compile(
    rb"\r\n(?:connection|keep-alive|proxy-connection|te|trailer|upgrade|x-forwarded-[a-z]+"
    rb"|forwarded|via|expect|content-length|transfer-encoding)[ \t]*:",
    re.I,
)
HOP_BY_HOP_RESPONSE = re.compile(
    rb"\r\n(?:connection|keep-alive|proxy-connection|te|trailer|upgrade)[ \t]*:[^\r\n]*", re.I
)


class CountingTransport:
    def __init__(self) -> None:
        self.writes = 0

    def writelines(self, data: tuple[bytes, ...]) -> None:
        self.writes += 1


class Stats:
    __slots__ = ("bytes_in", "bytes_out", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0


class Upstream:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport = CountingTransport()
        self.parser = httptools.HttpResponseParser(self)
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True

    def data_received(self, data: bytes) -> None:
        self.complete = False
        self.parser.feed_data(data)
        end = data.find(b"\r\n\r\n")
        head = data[:end]
        self.parser.get_status_code()
        if HOP_BY_HOP_RESPONSE.search(head) is not None:
            head = HOP_BY_HOP_RESPONSE.sub(b"", head)
        client = self.client
        client.transport.writelines((head, b"\r\n\r\n", data[end + 4 :]))
        client.stats.bytes_out += len(data)
        if self.complete:
            client.stats.requests += 1
            client.pool.append(self)


class Client:
    def __init__(self, table: dict[bytes, str], pool: list[Upstream]) -> None:
        self.transport = CountingTransport()
        self.parser = httptools.HttpRequestParser(self)
        self.table = table
        self.pool = pool
        self.stats = Stats()
        self.forwarded = (
            b"\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: "
        )
        self.data = b""
        self.upstream: Upstream | None = None

    def on_headers_complete(self) -> None:
        data = self.data
        end = data.find(b"\r\n\r\n")
        head = data[:end]
        m = HOST.search(head)
        host = m.group(1).lower() if m else b""
        if self.table.get(host) is None or SPECIAL_REQUEST.search(head) is not None:
            raise RuntimeError("the slow path (not measured here)")
        up = self.upstream = self.pool.pop()
        up.transport.writelines((head, self.forwarded, host, b"\r\n\r\n"))

    def data_received(self, data: bytes) -> None:
        self.data = data
        self.parser.feed_data(data)
        self.stats.bytes_in += len(data)


def main() -> None:
    pool: list[Upstream] = []
    client = Client({b"app.localhost": "r0"}, pool)
    pool.append(Upstream(client))

    def one() -> None:
        client.data_received(REQUEST)
        assert client.upstream is not None
        client.upstream.data_received(RESPONSE)

    for _ in range(5000):
        one()
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(50_000):
            one()
        best = min(best, (time.process_time() - t0) / 50_000)
    assert client.stats.requests > 0 and client.transport.writes == client.stats.requests
    print(f"raw-head prototype: {best * 1e6:.2f} us of CPU per request")


if __name__ == "__main__":
    main()
