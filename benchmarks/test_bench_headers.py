"""Micro-benchmarks for the per-request header path: parse and rewrite.

Run: python -m pytest benchmarks/test_bench_headers.py -q --benchmark-only
"""

from __future__ import annotations

import pytest

from guard.http.codec import PARSERS, make_request_parser
from guard.http.forwarding import RequestForwarder, response_head_bytes

REQUEST = (
    b"GET /static/app.js?v=3 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"Connection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="124", "Not-A.Brand";v="99"\r\n'
    b"sec-ch-ua-mobile: ?0\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0 Safari/537.36\r\n"
    b"Accept: */*\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-Mode: no-cors\r\n"
    b"Referer: https://www.example.com/\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: session=abc123; theme=dark\r\n"
    b"\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: application/javascript\r\n"
    b"Content-Length: 12345\r\n"
    b"Connection: keep-alive\r\n"
    b"Cache-Control: public, max-age=31536000\r\n"
    b'ETag: "5f3-1a2b3c"\r\n'
    b"Last-Modified: Sun, 31 Dec 2023 00:00:00 GMT\r\n"
    b"Vary: Accept-Encoding\r\n"
    b"\r\n"
)


class _Capture:
    def __init__(self) -> None:
        self.head = None

    def on_request_head(self, head) -> None:
        self.head = head

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_complete(self) -> None:
        pass

    def on_response_head(self, head) -> None:
        self.head = head

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_complete(self) -> None:
        pass


def _parsed_request():
    cap = _Capture()
    make_request_parser("httptools", cap, max_header_bytes=16384, max_headers=100).feed(REQUEST)
    assert cap.head is not None and len(cap.head.headers) == 12
    return cap.head


def _parsed_response():
    from guard.http.codec import make_response_parser

    cap = _Capture()
    p = make_response_parser("httptools", cap, max_header_bytes=16384, max_headers=100)
    p.start(b"GET")
    p.feed(RESPONSE)
    assert cap.head is not None and len(cap.head.headers) == 8
    return cap.head


def test_rewrite_request_headers(benchmark) -> None:
    """As the proxy does it: one RequestForwarder per client connection, reused."""
    head = _parsed_request()
    forwarder = RequestForwarder(
        client_ip=b"203.0.113.7",
        forwarded_for=b"for=203.0.113.7",
        proto=b"https",
        trusted=False,
        via=None,
    )

    def run() -> bytes:
        return forwarder.head_bytes(head, head.target)

    out = benchmark(run)
    assert b"\r\nconnection:" not in out and b"x-forwarded-for: 203.0.113.7" in out


def test_rewrite_response_headers(benchmark) -> None:
    head = _parsed_response()

    def run() -> bytes:
        return response_head_bytes(
            head, chunked=False, keep_alive=True, client_version=b"1.1", via=None
        )

    out = benchmark(run)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection" not in out


@pytest.mark.parametrize("parser", PARSERS)
def test_parse_request(benchmark, parser: str) -> None:
    cap = _Capture()
    # keep-alive: one parser fed request after request, as on a client connection
    p = make_request_parser(parser, cap, max_header_bytes=16384, max_headers=100)
    benchmark(p.feed, REQUEST)
    assert cap.head is not None and cap.head.host == b"www.example.com"
