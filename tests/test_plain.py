"""Plain messages (guard.http.plain) and the httptools codec's shortcut for them.

The shortcut must never be a different verdict: whatever ``take_plain`` accepts, the
general parser, fed the same bytes, must produce the same head (every field, the header
names as received) and Guard must forward the same bytes. Hypothesis generates heads
near the edge of "plain" (odd case, odd whitespace, special fields, repeated fields).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.http import plain
from guard.http.codec import RequestHead, ResponseHead
from guard.http.codec_httptools import (
    _PLAIN_BACKOFF,
    HttptoolsRequestParser,
    HttptoolsResponseParser,
)
from guard.http.forwarding import RequestForwarder, response_head_bytes
from guard.http.plain import plain_request, plain_response

LIMIT = 16384


class Events:
    def __init__(self) -> None:
        self.heads: list[RequestHead | ResponseHead] = []
        self.body = b""
        self.complete = 0

    def on_request_head(self, head: RequestHead) -> None:
        self.heads.append(head)

    def on_response_head(self, head: ResponseHead) -> None:
        self.heads.append(head)

    def on_request_body(self, data: bytes) -> None:
        self.body += data

    on_response_body = on_request_body

    def on_request_complete(self) -> None:
        self.complete += 1

    on_response_complete = on_request_complete


GET = b"GET /a?b=1 HTTP/1.1\r\nHost: app.test:8080\r\nUser-Agent: curl\r\nAccept: */*\r\n\r\n"
OK = (
    b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Connection: keep-alive\r\n\r\nhello"
)


def test_a_usual_get_is_plain() -> None:
    assert plain_request(GET, LIMIT, 100) == (
        b"GET",
        b"/a?b=1",
        b"app.test:8080",
        b"Host: app.test:8080\r\nUser-Agent: curl\r\nAccept: */*\r\n",
        None,
        None,
    )


def test_connection_keep_alive_or_close_is_plain_and_not_forwarded() -> None:
    # (what browsers send: the line is Guard's to drop, and nothing else is named)
    for value, token in ((b"keep-alive", b"keep-alive"), (b"Close", b"close")):
        data = b"GET / HTTP/1.1\r\nConnection: %s\r\nHost: a\r\nX: 1\r\n\r\n" % value
        lines = b"Connection: %s\r\nHost: a\r\nX: 1\r\n" % value
        forward = b"Host: a\r\nX: 1\r\n"
        assert plain_request(data, LIMIT, 100) == (b"GET", b"/", b"a", lines, forward, token)
    parser = HttptoolsRequestParser(Events(), LIMIT, 100)
    head = parser.take_plain(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert head is not None and not head.keep_alive and head.connection_tokens == (b"close",)
    # llhttp refuses anything after a "Connection: close" message: the shared checker
    # must not be left that way for the next connection's request
    assert parser.take_plain(GET) is not None
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
    assert _response_parser().take_plain(closing) is not None
    assert _response_parser().take_plain(OK) is not None


@pytest.mark.parametrize(
    "data",
    [
        GET + GET,  # pipelined
        GET[:-2],  # incomplete
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /#f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two in a row
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: 1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:a\r\n\r\n",  # not "Name: value"
        b"GET / HTTP/1.1\r\nHost: a\r\nX:  1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1 \r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nClose: 1\r\n\r\n",  # named
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: close\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        *(
            b"GET / HTTP/1.1\r\nHost: a\r\n%s: v\r\n\r\n" % name
            for name in (
                b"Connection",
                b"keep-alive",
                b"Proxy-Connection",
                b"TE",
                b"Trailer",
                b"Upgrade",
                b"Transfer-Encoding",
                b"Content-Length",
                b"Expect",
                b"X-Forwarded-For",
                b"x-forwarded-proto",
                b"X-Forwarded-Host",
                b"Forwarded",
            )
        ),
    ],
)
def test_not_plain_requests(data: bytes) -> None:
    assert plain_request(data, LIMIT, 100) is None


def test_limits_make_a_request_not_plain() -> None:
    assert plain_request(GET, len(GET) - 1, 100) is None
    assert plain_request(GET, LIMIT, 2) is None
    assert plain_request(GET, LIMIT, 3) is not None


def test_a_known_header_block_is_looked_up_not_scanned(monkeypatch) -> None:
    # The verdict on a header block is kept (a client sends the same one every time);
    # the request line is matched afresh and the limits are checked on every request.
    plain._BLOCKS.clear()
    first = plain_request(GET, LIMIT, 100)
    assert first is not None and len(plain._BLOCKS) == 1

    def scanned(block: bytes) -> None:
        raise AssertionError("a known block was scanned again")

    monkeypatch.setattr(plain, "_plain_block", scanned)
    again = GET.replace(b"GET /a?b=1 ", b"DELETE /other ")
    assert plain_request(again, LIMIT, 100) == (b"DELETE", b"/other", *first[2:])
    assert plain_request(GET, LIMIT, 2) is None  # 3 lines: over max_headers
    assert plain_request(GET, len(GET) - 1, 100) is None
    assert plain_request(GET.replace(b"GET /a", b"GET a"), LIMIT, 100) is None
    assert plain_request(GET.replace(b"GET", b"CONNECT"), LIMIT, 100) is None
    assert plain_request(GET.replace(b"HTTP/1.1", b"HTTP/1.0"), LIMIT, 100) is None
    assert plain_request(GET + b"GET", LIMIT, 100) is None


def test_blocks_that_are_not_plain_or_large_are_not_kept() -> None:
    plain._BLOCKS.clear()
    forwarded = GET.replace(b"Accept", b"X-Forwarded-For: 10.0.0.1\r\nAccept")
    assert plain_request(forwarded, LIMIT, 100) is None
    assert plain_request(forwarded, LIMIT, 100) is None
    big = GET.replace(b"Accept: */*", b"Cookie: " + b"c" * 3000)
    assert plain_request(big, LIMIT, 100) is not None
    assert plain._BLOCKS == {}


def test_the_block_cache_is_bounded(monkeypatch) -> None:
    plain._BLOCKS.clear()
    monkeypatch.setattr(plain, "_BLOCKS_MAX", 3)
    for i in range(10):
        request = GET.replace(b"curl", b"curl/%d" % i)
        assert plain_request(request, LIMIT, 100) is not None
        assert 1 <= len(plain._BLOCKS) <= 3
    assert plain_request(GET.replace(b"curl", b"curl/9"), LIMIT, 100) is not None


def test_a_usual_response_is_plain_without_its_connection_line() -> None:
    assert plain_response(OK, LIMIT, 100) == (
        b"OK",
        b"Server: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n",
        b"Server: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n",
        True,
        b"hello",
    )
    first = b"HTTP/1.1 404 Not Found\r\nconnection: close\r\nContent-Length: 0\r\n\r\n"
    assert plain_response(first, LIMIT, 100) == (
        b"Not Found",
        b"connection: close\r\nContent-Length: 0\r\n",
        b"Content-Length: 0\r\n",
        False,
        b"",
    )
    only = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"  # (close-delimited: not taken)
    assert plain_response(only, LIMIT, 100) == (b"OK", b"Connection: close\r\n", b"", False, b"")
    taken = _response_parser().take_plain(first)
    assert taken is not None
    assert (taken[0].status, taken[0].keep_alive, taken[0].content_length) == (404, False, 0)


def _response_parser(method: bytes = b"GET") -> HttptoolsResponseParser:
    parser = HttptoolsResponseParser(Events(), LIMIT, 100)
    parser.start(method)
    return parser


@pytest.mark.parametrize(
    "data",
    [
        OK[:-1],  # the body not all here
        OK + b"x",  # more than the body
        OK + OK,
        OK.replace(b"HTTP/1.1", b"HTTP/1.0"),
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x-a\r\nX-A: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\nConnection: x\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nKeep-Alive: 5\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length:1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a \r\n\r\nx",
    ],
)
def test_not_plain_responses(data: bytes) -> None:
    assert _response_parser().take_plain(data) is None
    # and the shared checker is left ready for the next response
    assert _response_parser().take_plain(OK) is not None


def _fields(cls: type) -> tuple[str, ...]:
    # Pure Python: the class's own __slots__; compiled (mypyc), every attribute it has.
    return getattr(cls, "__mypyc_attrs__", None) or cls.__slots__


def _same(a: RequestHead | ResponseHead, b: RequestHead | ResponseHead) -> None:
    for slot in _fields(type(a)):
        if slot not in ("_headers", "raw", "names", "received"):
            assert getattr(a, slot) == getattr(b, slot), slot
    assert a.headers == b.headers
    assert a.names_as_received() == b.names_as_received() if isinstance(a, RequestHead) else True


# Heads near the edge of plain: names in any case (special ones included), values with
# odd whitespace, fields repeated, now and then a framing field or a bad byte.
_NAMES = st.sampled_from(
    [b"Host", b"host", b"HOST", b"Accept", b"X-Id", b"x-id", b"Cookie", b"Via", b"User-Agent",
     b"Close", b"Connection", b"Content-Length", b"Transfer-Encoding", b"Expect", b"TE",
     b"Upgrade",
     b"X-Forwarded-For", b"Forwarded", b"Keep-Alive", b"Server", b"Date", b"Set-Cookie"]
)  # fmt: skip
_VALUES = st.sampled_from(
    [b"a.test", b"a.test:80", b"1", b"close", b"keep-alive", b"chunked", b"100-continue",
     b" x", b"x ", b"", b"a  b", b"\tz", b"caf\xc3\xa9", b"a\x01b", b"a\nb", b"a\rb",
     b"a\r\n b", b"\x00", b"\x7f", b"[::1]:8", b"a,b", b"5"]
)  # fmt: skip
_LINES = st.lists(st.tuples(_NAMES, st.sampled_from([b": ", b":", b":  "]), _VALUES), max_size=8)


def _build(first: bytes, lines: list[tuple[bytes, bytes, bytes]], body: bytes) -> bytes:
    return first + b"".join(n + sep + v + b"\r\n" for n, sep, v in lines) + b"\r\n" + body


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.sampled_from(
        [
            b"GET / HTTP/1.1\r\n",
            b"HEAD /x?y HTTP/1.1\r\n",
            b"DELETE /a/b HTTP/1.1\r\n",
            b"GET / HTTP/1.0\r\n",
            b"PURGE /c HTTP/1.1\r\n",
            b"get / HTTP/1.1\r\n",
        ]
    ),
    lines=_LINES,
    trusted=st.booleans(),
)
def test_a_plain_request_is_the_general_parse(first: bytes, lines, trusted: bool) -> None:
    data = _build(first, lines, b"")
    shortcut = HttptoolsRequestParser(Events(), LIMIT, 100)
    head = shortcut.take_plain(data)
    if head is None:
        return
    events = Events()
    general = HttptoolsRequestParser(events, LIMIT, 100)
    general.feed(data)  # a head take_plain accepts the general parser accepts too
    assert len(events.heads) == 1 and events.complete == 1
    full = events.heads[0]
    assert isinstance(full, RequestHead)
    _same(head, full)

    def forwarder() -> RequestForwarder:
        return RequestForwarder(
            client_ip=b"10.0.0.1", forwarded_for=b"for=10.0.0.1", proto=b"http",
            trusted=trusted, via=None,
        )  # fmt: skip

    assert forwarder().head_bytes(head, head.target) == forwarder().head_bytes(full, full.target)
    # the shortcut used the shared checker: the next message starts clean
    assert shortcut.take_plain(GET) is not None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.sampled_from(
        [
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 404 Not Found\r\n",
            b"HTTP/1.1 503 \r\n",
            b"HTTP/1.1 204 No Content\r\n",
            b"HTTP/1.0 200 OK\r\n",
        ]
    ),
    lines=_LINES,
    body=st.sampled_from([b"", b"hello", b"x" * 100]),
    client_version=st.sampled_from([b"1.1", b"1.0"]),
    length=st.sampled_from([None, 0, 0, 0, 1, -1]),
    after=st.sampled_from([b"", b"", b"", b"x", OK]),
)
def test_a_plain_response_is_the_general_parse(
    first: bytes, lines, body: bytes, client_version: bytes, length: int | None, after: bytes
) -> None:
    if length is not None:  # a Content-Length, right or off by one
        lines = [*lines, (b"Content-Length", b": ", b"%d" % (len(body) + length))]
    data = _build(first, lines, body) + after
    taken = _response_parser().take_plain(data)
    if taken is None:
        return
    head, got_body = taken
    events = Events()
    general = HttptoolsResponseParser(events, LIMIT, 100)
    general.start(b"GET")
    general.feed(data)
    assert len(events.heads) == 1 and events.complete == 1 and not general.garbage
    full = events.heads[0]
    assert isinstance(full, ResponseHead)
    assert got_body == events.body  # and nothing after it (no garbage, one head)
    for slot in ("status", "reason", "version", "keep_alive", "content_length", "chunked"):
        assert getattr(head, slot) == getattr(full, slot), slot
    for keep_alive in (True, False):
        args = {"chunked": False, "keep_alive": keep_alive, "client_version": client_version}
        assert response_head_bytes(head, via=None, **args) == response_head_bytes(
            full, via=None, **args
        )
        assert response_head_bytes(head, via=b"guard", **args) == response_head_bytes(
            full, via=b"guard", **args
        )


def test_head_requests_responses_are_never_taken_plain() -> None:
    assert _response_parser(b"HEAD").take_plain(OK) is None


def test_a_request_mid_head_is_not_taken() -> None:
    events = Events()
    parser = HttptoolsRequestParser(events, LIMIT, 100)
    parser.feed(GET[:10])
    assert parser.take_plain(GET) is None  # the parser holds the start of another head


def test_after_a_miss_a_connection_skips_the_shortcut_for_a_while() -> None:
    # A client that sends a field the proxy acts on tends to send it every time: its
    # connection stops paying for the scan, then tries again.
    parser = HttptoolsRequestParser(Events(), LIMIT, 100)
    general = GET.replace(b"Accept: */*", b"X-Forwarded-For: 10.0.0.1")
    assert parser.take_plain(general) is None
    skipped = [parser.take_plain(GET) for _ in range(_PLAIN_BACKOFF)]
    assert skipped == [None] * _PLAIN_BACKOFF
    assert parser.take_plain(GET) is not None
    response = _response_parser()
    assert response.take_plain(OK.replace(b"Server: x", b"Keep-Alive: 5")) is None
    for _ in range(_PLAIN_BACKOFF):
        response.start(b"GET")
        assert response.take_plain(OK) is None
    assert response.take_plain(OK) is not None


def test_only_message_starts_count_against_the_skip() -> None:
    parser = HttptoolsRequestParser(Events(), LIMIT, 100)
    assert parser.take_plain(GET[:20]) is None  # the start of a head: no sign of anything
    assert parser.take_plain(GET) is not None
    response = _response_parser()
    assert response.take_plain(OK.replace(b"Server: x", b"Keep-Alive: 5")) is None
    response.start(b"HEAD")
    for _ in range(2 * _PLAIN_BACKOFF):  # HEAD responses are never plain: not counted
        assert response.take_plain(OK) is None
    for _ in range(_PLAIN_BACKOFF):
        response.start(b"GET")
        assert response.take_plain(OK) is None
    assert response.take_plain(OK) is not None
