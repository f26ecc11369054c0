"""Sans-IO tests of the HTTP/1.1 codec: every test runs under both parsers.

The two adapters must agree on events and on the GuardError class of every rejection.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.errors import (
    BadRequest,
    ExpectationFailed,
    GuardError,
    HeaderTooLarge,
    UpstreamProtocolError,
)
from guard.http.codec import PARSERS, make_request_parser, make_response_parser
from tests.helpers import splits

MAX_HEADER_BYTES = 8192
MAX_HEADERS = 50

parser_names = pytest.mark.parametrize("parser", PARSERS)


class Recorder:
    """Records request and response events; consecutive body pieces are merged."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.heads: list = []

    def _body(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        if not data:
            return
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def on_request_head(self, head) -> None:
        self.heads.append(head)
        self.events.append(("head", head.method, head.target, head.version, list(head.headers)))

    def on_request_body(self, data: bytes) -> None:
        self._body(data)

    def on_request_complete(self) -> None:
        self.events.append(("complete",))

    def on_response_head(self, head) -> None:
        self.heads.append(head)
        self.events.append(("head", head.status, head.reason, head.version, list(head.headers)))

    def on_response_body(self, data: bytes) -> None:
        self._body(data)

    def on_response_complete(self) -> None:
        self.events.append(("complete",))


def req_parser(parser: str, rec: Recorder, **kw):
    kw.setdefault("max_header_bytes", MAX_HEADER_BYTES)
    kw.setdefault("max_headers", MAX_HEADERS)
    return make_request_parser(parser, rec, **kw)


def resp_parser(parser: str, rec: Recorder, method: bytes = b"GET", **kw):
    kw.setdefault("max_header_bytes", MAX_HEADER_BYTES)
    kw.setdefault("max_headers", MAX_HEADERS)
    p = make_response_parser(parser, rec, **kw)
    p.start(method)
    return p


def feed_request(parser: str, data: bytes, step: int | None = None, **kw):
    rec = Recorder()
    p = req_parser(parser, rec, **kw)
    if step is None:
        p.feed(data)
    else:
        for i in range(0, len(data), step):
            p.feed(data[i : i + step])
    return rec, p


# ------------------------------------------------------------------ requests: parsing


@parser_names
def test_simple_get(parser: str) -> None:
    rec, p = feed_request(parser, b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert rec.events == [
        ("head", b"GET", b"/index.html?q=1", b"1.1", [(b"host", b"example.com")]),
        ("complete",),
    ]
    head = rec.heads[0]
    assert head.host == b"example.com"
    assert head.path == b"/index.html"
    assert head.keep_alive and not head.chunked and head.content_length is None
    assert not head.has_body and head.upgrade is None and not head.expect_continue
    assert p.upgraded_tail is None


@parser_names
def test_headers_lowercased_in_order(parser: str) -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Zeta: 1\r\nAccept: */*\r\nX-Alpha: 2\r\n"
        b"X-Zeta: 3\r\nUSER-AGENT: t\r\n\r\n"
    )
    rec, _ = feed_request(parser, data)
    assert rec.events[0][4] == [
        (b"host", b"a"),
        (b"x-zeta", b"1"),
        (b"accept", b"*/*"),
        (b"x-alpha", b"2"),
        (b"x-zeta", b"3"),
        (b"user-agent", b"t"),
    ]


@parser_names
def test_header_value_whitespace_trimmed(parser: str) -> None:
    rec, _ = feed_request(parser, b"GET / HTTP/1.1\r\nHost:  a.example \t\r\nX:\tv v  \r\n\r\n")
    assert rec.events[0][4] == [(b"host", b"a.example"), (b"x", b"v v")]
    assert rec.heads[0].host == b"a.example"


PIPELINE = (
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"GET /4 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
)
PIPELINE_EVENTS = [
    ("head", b"GET", b"/1", b"1.1", [(b"host", b"a")]),
    ("complete",),
    ("head", b"POST", b"/2", b"1.1", [(b"host", b"a"), (b"content-length", b"5")]),
    ("body", b"hello"),
    ("complete",),
    ("head", b"POST", b"/3", b"1.1", [(b"host", b"a"), (b"transfer-encoding", b"chunked")]),
    ("body", b"abcde"),
    ("complete",),
    ("head", b"GET", b"/4", b"1.1", [(b"host", b"b"), (b"connection", b"close")]),
    ("complete",),
]


@parser_names
@pytest.mark.parametrize("step", [None, 1, 2, 7, 64])
def test_pipelined_requests_any_split(parser: str, step: int | None) -> None:
    rec, _ = feed_request(parser, PIPELINE, step)
    assert rec.events == PIPELINE_EVENTS
    assert [h.keep_alive for h in rec.heads] == [True, True, True, False]


@parser_names
def test_content_length_body(parser: str) -> None:
    body = bytes(range(256)) * 40
    data = b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    for step in (None, 1000, 3):
        rec, _ = feed_request(parser, data, step)
        assert rec.events[1:] == [("body", body), ("complete",)]
        assert rec.heads[0].content_length == len(body) and rec.heads[0].has_body


@parser_names
def test_chunked_body_extensions_ignored_trailers_dropped(parser: str) -> None:
    data = (
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;name=value\r\nhello\r\n1;a;b="q"\r\n \r\nA\r\n0123456789\r\n'
        b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    for step in (None, 1, 5):
        rec, _ = feed_request(parser, data, step)
        assert rec.events == [
            ("head", b"POST", b"/c", b"1.1", [(b"host", b"a"), (b"transfer-encoding", b"chunked")]),
            ("body", b"hello 0123456789"),
            ("complete",),
            # the trailers of the first request never leak into the next one's headers
            ("head", b"GET", b"/next", b"1.1", [(b"host", b"a")]),
            ("complete",),
        ]
        assert rec.heads[0].chunked and rec.heads[0].content_length is None


@parser_names
@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, Close", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
    ],
)
def test_keep_alive(parser: str, version: bytes, connection: bytes | None, keep_alive: bool):
    data = b"GET / HTTP/" + version + b"\r\nHost: a\r\n"
    if connection is not None:
        data += b"Connection: " + connection + b"\r\n"
    rec, _ = feed_request(parser, data + b"\r\n")
    assert rec.heads[0].version == version
    assert rec.heads[0].keep_alive is keep_alive


@parser_names
def test_http10_without_host_is_fine(parser: str) -> None:
    rec, _ = feed_request(parser, b"GET / HTTP/1.0\r\n\r\n")
    assert rec.heads[0].host == b""


@parser_names
def test_expect_100_continue(parser: str) -> None:
    rec, _ = feed_request(
        parser, b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"
    )
    assert rec.heads[0].expect_continue
    assert rec.events == [rec.events[0]]  # the body has not been sent yet


@parser_names
def test_other_expectation_is_417(parser: str) -> None:
    with pytest.raises(ExpectationFailed) as e:
        feed_request(parser, b"POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n")
    assert e.value.status == 417


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


@parser_names
@pytest.mark.parametrize("step", [None, 1, 9])
def test_upgrade_sets_head_and_tail(parser: str, step: int | None) -> None:
    tail = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58GET / HTTP/1.1\r\n"
    rec, p = feed_request(parser, UPGRADE + tail, step)
    assert rec.heads[0].upgrade == b"websocket"
    assert rec.events[-1] == ("complete",)
    assert len(rec.heads) == 1  # nothing after the head is parsed as HTTP
    assert p.upgraded_tail == tail


@parser_names
def test_upgrade_tail_empty_then_grows(parser: str) -> None:
    _, p = feed_request(parser, UPGRADE)
    assert p.upgraded_tail == b""
    p.feed(b"more")
    assert p.upgraded_tail == b"more"


@parser_names
def test_upgrade_header_without_connection_upgrade_asks_nothing(parser: str) -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    rec, p = feed_request(parser, data)
    assert rec.heads[0].upgrade is None
    assert [h.target for h in rec.heads] == [b"/", b"/2"]
    assert p.upgraded_tail is None


@parser_names
def test_absolute_form_target_preserved(parser: str) -> None:
    rec, _ = feed_request(
        parser, b"GET http://a.example:8080/x/y?z=1 HTTP/1.1\r\nHost: a.example:8080\r\n\r\n"
    )
    assert rec.heads[0].target == b"http://a.example:8080/x/y?z=1"


@parser_names
def test_empty_lines_before_request_line_skipped(parser: str) -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
        b"\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    for step in (None, 1):
        rec, _ = feed_request(parser, data, step)
        assert [h.target for h in rec.heads] == [b"/", b"/2"]


# ------------------------------------------------------------------ requests: rejections


def _req(*lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


REJECTIONS = {
    "cl_and_te": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 3", b"Transfer-Encoding: chunked"),
        BadRequest,
    ),
    "te_and_cl": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", b"Content-Length: 3"),
        BadRequest,
    ),
    # Transfer-Encoding other than exactly one "chunked": 400 for every variant
    "te_gzip": (_req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: gzip"), BadRequest),
    "te_identity": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: identity"),
        BadRequest,
    ),
    "te_chunked_chunked": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked, chunked"),
        BadRequest,
    ),
    "te_gzip_chunked": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: gzip, chunked"),
        BadRequest,
    ),
    "te_chunked_gzip": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked, gzip"),
        BadRequest,
    ),
    "te_two_fields": (
        _req(
            b"POST / HTTP/1.1",
            b"Host: a",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: chunked",
        ),
        BadRequest,
    ),
    "te_empty_element": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: ,chunked"),
        BadRequest,
    ),
    "te_empty": (_req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: "), BadRequest),
    "cl_duplicate_differing": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 3", b"Content-Length: 4"),
        BadRequest,
    ),
    "cl_duplicate_same": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 3", b"Content-Length: 3"),
        BadRequest,
    ),
    "cl_list": (_req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 3, 3"), BadRequest),
    "cl_plus": (_req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: +5"), BadRequest),
    "cl_hex": (_req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 0x5"), BadRequest),
    "cl_underscore": (_req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 1_0"), BadRequest),
    "cl_empty": (_req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: "), BadRequest),
    "cl_negative": (_req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: -1"), BadRequest),
    "cl_unicode_digit": (
        _req(b"POST / HTTP/1.1", b"Host: a", "Content-Length: \u0661".encode()),
        BadRequest,
    ),
    "bare_lf_chunk_size": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"3\nabc\r\n"),
        BadRequest,
    ),
    "bare_lf_chunk_data": (
        _req(
            b"POST / HTTP/1.1",
            b"Host: a",
            b"Transfer-Encoding: chunked",
            body=b"3\r\nabc\n0\r\n\r\n",
        ),
        BadRequest,
    ),
    "bare_lf_head": (b"GET / HTTP/1.1\nHost: a\n\n", BadRequest),
    "bare_lf_one_line": (b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", BadRequest),
    "bare_cr_head": (b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", BadRequest),
    "nul_in_value": (_req(b"GET / HTTP/1.1", b"Host: a", b"X: a\x00b"), BadRequest),
    "cr_in_value": (_req(b"GET / HTTP/1.1", b"Host: a", b"X: a\rb"), BadRequest),
    "lf_in_value": (_req(b"GET / HTTP/1.1", b"Host: a", b"X: a\nb"), BadRequest),
    "ctl_in_value": (_req(b"GET / HTTP/1.1", b"Host: a", b"X: a\x01b"), BadRequest),
    "del_in_value": (_req(b"GET / HTTP/1.1", b"Host: a", b"X: a\x7fb"), BadRequest),
    "space_before_colon": (_req(b"GET / HTTP/1.1", b"Host: a", b"X : a"), BadRequest),
    "tab_before_colon": (_req(b"GET / HTTP/1.1", b"Host: a", b"X\t: a"), BadRequest),
    "space_before_colon_cl": (
        _req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length : 3", body=b"abc"),
        BadRequest,
    ),
    "empty_header_name": (_req(b"GET / HTTP/1.1", b"Host: a", b": a"), BadRequest),
    "obs_fold_space": (_req(b"GET / HTTP/1.1", b"Host: a", b"X: a", b" b"), BadRequest),
    "obs_fold_tab": (_req(b"GET / HTTP/1.1", b"Host: a", b"X: a", b"\tb"), BadRequest),
    "fold_first_line": (_req(b"GET / HTTP/1.1", b" Host: a"), BadRequest),
    "missing_host": (_req(b"GET / HTTP/1.1", b"Accept: */*"), BadRequest),
    "two_hosts": (_req(b"GET / HTTP/1.1", b"Host: a", b"Host: b"), BadRequest),
    "two_hosts_same": (_req(b"GET / HTTP/1.1", b"Host: a", b"Host: a"), BadRequest),
    "http09": (b"GET /\r\n\r\n", BadRequest),
    "http12": (_req(b"GET / HTTP/1.2", b"Host: a"), BadRequest),
    "http2": (_req(b"GET / HTTP/2.0", b"Host: a"), BadRequest),
    "space_in_target": (_req(b"GET /a b HTTP/1.1", b"Host: a"), BadRequest),
    "ctl_in_target": (_req(b"GET /a\x01 HTTP/1.1", b"Host: a"), BadRequest),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", BadRequest),
}


@parser_names
@pytest.mark.parametrize("case", sorted(REJECTIONS))
@pytest.mark.parametrize("step", [None, 1])
def test_rejections_same_class_under_both_parsers(parser: str, case: str, step) -> None:
    data, error = REJECTIONS[case]
    with pytest.raises(GuardError) as e:
        feed_request(parser, data, step)
    assert type(e.value) is error
    assert e.value.status == error.status


@parser_names
def test_rejection_happens_before_any_head_event(parser: str) -> None:
    rec = Recorder()
    p = req_parser(parser, rec)
    with pytest.raises(BadRequest):
        p.feed(_req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 3", b"Content-Length: 4"))
    assert rec.events == []


# ------------------------------------------------------------------ requests: limits


@parser_names
@pytest.mark.parametrize("step", [None, 1000, 64])
def test_oversized_head_is_431(parser: str, step: int | None) -> None:
    data = _req(b"GET / HTTP/1.1", b"Host: a", *[b"X-H%d: %s" % (i, b"v" * 100) for i in range(90)])
    with pytest.raises(HeaderTooLarge) as e:
        feed_request(parser, data, step, max_headers=1000)
    assert e.value.status == 431


@parser_names
def test_single_huge_header_line_fed_in_pieces_is_431(parser: str) -> None:
    rec = Recorder()
    p = req_parser(parser, rec)
    p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    with pytest.raises(HeaderTooLarge):
        for _ in range(1000):  # 100 KB, never a line end
            p.feed(b"x" * 100)
    assert rec.events == []


@parser_names
def test_huge_request_line_fed_in_pieces_is_431(parser: str) -> None:
    rec = Recorder()
    p = req_parser(parser, rec)
    p.feed(b"GET /")
    with pytest.raises(HeaderTooLarge):
        for _ in range(1000):
            p.feed(b"a" * 100)


@parser_names
@pytest.mark.parametrize("step", [None, 4096])
def test_small_head_with_large_body_in_one_feed_is_fine(parser: str, step) -> None:
    body = b"z" * (10 * MAX_HEADER_BYTES)
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    data += b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    rec, _ = feed_request(parser, data, step)
    assert rec.events[1:3] == [("body", body), ("complete",)]
    assert rec.heads[1].target == b"/next"


@parser_names
def test_head_just_under_limit_is_fine(parser: str) -> None:
    base = b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n"
    data = base.replace(b"X: ", b"X: " + b"v" * (MAX_HEADER_BYTES - 200 - len(base)))
    for step in (None, 1, 100):
        rec, _ = feed_request(parser, data, step)
        assert len(rec.heads) == 1


@parser_names
def test_many_pipelined_small_requests_in_one_feed_are_fine(parser: str) -> None:
    one = b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: " + b"u" * 200 + b"\r\n\r\n"
    rec, _ = feed_request(parser, one * 200)  # 45 KB in one feed, far over the head limit
    assert len(rec.heads) == 200


@parser_names
@pytest.mark.parametrize("step", [None, 4096])
def test_oversized_pipelined_head_after_small_request_is_431(parser: str, step) -> None:
    small = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    big = _req(b"GET /2 HTTP/1.1", b"Host: a", b"X: " + b"v" * (3 * MAX_HEADER_BYTES))
    with pytest.raises(HeaderTooLarge):
        feed_request(parser, small + big, step)


@parser_names
def test_too_many_headers_is_431(parser: str) -> None:
    data = _req(b"GET / HTTP/1.1", b"Host: a", *[b"X-%d: 1" % i for i in range(MAX_HEADERS)])
    with pytest.raises(HeaderTooLarge) as e:
        feed_request(parser, data)
    assert e.value.status == 431
    ok = _req(b"GET / HTTP/1.1", b"Host: a", *[b"X-%d: 1" % i for i in range(MAX_HEADERS - 1)])
    rec, _ = feed_request(parser, ok)
    assert len(rec.heads[0].headers) == MAX_HEADERS


# ------------------------------------------------------------------ responses


def feed_response(parser: str, data: bytes, method: bytes = b"GET", step: int | None = None):
    rec = Recorder()
    p = resp_parser(parser, rec, method)
    if step is None:
        p.feed(data)
    else:
        for i in range(0, len(data), step):
            p.feed(data[i : i + step])
    return rec, p


@parser_names
@pytest.mark.parametrize("step", [None, 1])
def test_response_content_length(parser: str, step) -> None:
    rec, p = feed_response(
        parser, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello", step=step
    )
    assert rec.events == [
        ("head", 200, b"OK", b"1.1", [(b"content-length", b"5"), (b"x-a", b"b")]),
        ("body", b"hello"),
        ("complete",),
    ]
    head = rec.heads[0]
    assert head.content_length == 5 and head.keep_alive and not head.until_close
    assert not p.garbage and p.feed_eof() is False


@parser_names
@pytest.mark.parametrize("step", [None, 1])
def test_response_chunked(parser: str, step) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext\r\nwiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n"
    )
    rec, p = feed_response(parser, data, step=step)
    assert rec.events[1:] == [("body", b"wikipedia"), ("complete",)]
    assert rec.heads[0].chunked and not p.garbage


@parser_names
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_response_close_delimited(parser: str, version: bytes) -> None:
    rec, p = feed_response(parser, b"HTTP/" + version + b" 200 OK\r\n\r\nabc")
    p.feed(b"def")
    assert rec.events[1:] == [("body", b"abcdef")]
    head = rec.heads[0]
    assert head.until_close and not head.keep_alive
    assert p.feed_eof() is True
    assert rec.events[-1] == ("complete",)
    assert p.feed_eof() is False


@parser_names
def test_response_keep_alive_rules(parser: str) -> None:
    rec, _ = feed_response(
        parser, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    assert not rec.heads[0].keep_alive
    rec, _ = feed_response(parser, b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not rec.heads[0].keep_alive
    rec, _ = feed_response(
        parser, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    )
    assert rec.heads[0].keep_alive


@parser_names
@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
    ],
)
def test_head_response_has_no_body_and_parser_is_ready(parser: str, head: bytes) -> None:
    rec = Recorder()
    p = resp_parser(parser, rec, b"HEAD")
    p.feed(head)
    assert rec.events == [rec.events[0], ("complete",)]
    assert not p.garbage
    p.start(b"GET")
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert rec.events[2:] == [rec.events[2], ("body", b"hi"), ("complete",)]
    assert not p.garbage


@parser_names
def test_bytes_after_head_response_are_garbage(parser: str) -> None:
    rec, p = feed_response(parser, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody", b"HEAD")
    assert rec.events[-1] == ("complete",)
    assert p.garbage


@parser_names
@pytest.mark.parametrize("status", [204, 304])
def test_204_304_have_no_body(parser: str, status: int) -> None:
    rec = Recorder()
    p = resp_parser(parser, rec)
    p.feed(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert rec.events == [rec.events[0], ("complete",)]
    assert not rec.heads[0].until_close
    p.start(b"GET")
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert rec.events[-2:] == [("body", b"x"), ("complete",)]


@parser_names
@pytest.mark.parametrize("step", [None, 1])
def test_100_continue_then_final(parser: str, step) -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    rec, p = feed_response(parser, data, b"POST", step)
    assert rec.events == [
        ("head", 100, b"Continue", b"1.1", []),
        ("head", 103, b"Early Hints", b"1.1", [(b"link", b"</s.css>")]),
        ("head", 200, b"OK", b"1.1", [(b"content-length", b"2")]),
        ("body", b"ok"),
        ("complete",),
    ]
    assert not p.garbage


@parser_names
def test_100_continue_alone_has_no_completion(parser: str) -> None:
    rec, p = feed_response(parser, b"HTTP/1.1 100 Continue\r\n\r\n", b"POST")
    assert [e[0] for e in rec.events] == ["head"]
    p.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert rec.events[-1] == ("complete",) and rec.heads[-1].status == 201


@parser_names
@pytest.mark.parametrize(
    "extra", [b"X", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"\x00\xff"]
)
@pytest.mark.parametrize("same_feed", [True, False])
def test_garbage_after_complete_response(parser: str, extra: bytes, same_feed: bool) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    rec, p = feed_response(parser, data + extra if same_feed else data)
    if not same_feed:
        assert not p.garbage
        p.feed(extra)
    assert p.garbage
    assert rec.events.count(("complete",)) == 1 and len(rec.heads) == 1


@parser_names
@pytest.mark.parametrize(
    "data",
    [
        b"HTTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"\x00\x01\x02garbage\r\n\r\n",
    ],
)
@pytest.mark.parametrize("step", [None, 1])
def test_malformed_response_is_502(parser: str, data: bytes, step) -> None:
    with pytest.raises(UpstreamProtocolError) as e:
        feed_response(parser, data, step=step)
    assert e.value.status == 502


@parser_names
def test_response_head_too_large(parser: str) -> None:
    rec = Recorder()
    p = resp_parser(parser, rec)
    p.feed(b"HTTP/1.1 200 OK\r\nX: ")
    with pytest.raises(UpstreamProtocolError):
        for _ in range(1000):
            p.feed(b"x" * 100)


@parser_names
def test_response_small_head_large_body_one_feed(parser: str) -> None:
    body = b"b" * (5 * MAX_HEADER_BYTES)
    rec, _ = feed_response(
        parser, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert rec.events[1:] == [("body", body), ("complete",)]


@parser_names
def test_response_eof_cases(parser: str) -> None:
    rec = Recorder()
    p = resp_parser(parser, rec)
    assert p.feed_eof() is False  # closed before any byte: the caller may retry
    for partial in (
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
    ):
        rec = Recorder()
        p = resp_parser(parser, rec)
        p.feed(partial)
        with pytest.raises(UpstreamProtocolError):
            p.feed_eof()


@parser_names
def test_response_parser_reused_across_requests(parser: str) -> None:
    rec = Recorder()
    p = resp_parser(parser, rec)
    for i in range(5):
        p.start(b"GET")
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % i)
    assert [e for e in rec.events if e[0] == "body"] == [("body", b"%d" % i) for i in range(5)]
    assert not p.garbage


# ------------------------------------------------------------------ property tests

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

http_ish = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from(
            [
                b"GET / HTTP/1.1\r\n",
                b"POST /x HTTP/1.0\r\n",
                b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 100 Continue\r\n",
                b"Host: a\r\n",
                b"Content-Length: 3\r\n",
                b"Content-Length: 0\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"Connection: upgrade\r\n",
                b"Upgrade: websocket\r\n",
                b"Expect: 100-continue\r\n",
                b"\r\n",
                b"\n",
                b"3\r\nabc\r\n",
                b"0\r\n\r\n",
                b"abc",
                b" ",
                b":",
                b"\x00",
                b"\xff",
            ]
        ),
        max_size=20,
    ).map(b"".join),
)


@parser_names
@PROPS
@given(data=http_ish, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_request_parser_never_crashes(parser: str, data: bytes, cuts: list[int]) -> None:
    rec = Recorder()
    p = req_parser(parser, rec, max_header_bytes=256, max_headers=8)
    try:
        for piece in splits(data, cuts):
            p.feed(piece)
    except GuardError:
        pass


@parser_names
@PROPS
@given(
    data=http_ish,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
    eof=st.booleans(),
)
def test_response_parser_never_crashes(parser, data, cuts, method, eof) -> None:
    rec = Recorder()
    p = resp_parser(parser, rec, method, max_header_bytes=256, max_headers=8)
    try:
        for piece in splits(data, cuts):
            p.feed(piece)
        if eof:
            p.feed_eof()
    except GuardError:
        pass


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).filter(
    lambda s: (
        s.lower()
        not in {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect"}
    )
)
field_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20
).map(str.encode) | st.just(b"a b\tc")


@st.composite
def requests(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
    path = (
        b"/"
        + draw(
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~/%?=&", max_size=30)
        ).encode()
    )
    headers = [(b"host", b"example.com")]
    for name in draw(st.lists(token, max_size=10)):
        headers.append((name.encode(), draw(field_value)))
    body = draw(st.binary(max_size=200))
    chunked = draw(st.booleans())
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
        sizes = draw(st.lists(st.integers(min_value=1, max_value=50), max_size=8))
        framed, rest = [], body
        for size in sizes:
            if not rest:
                break
            piece, rest = rest[:size], rest[size:]
            framed.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        if rest:
            framed.append(b"%X;ext=1\r\n%s\r\n" % (len(rest), rest))
        framed.append(b"0\r\n\r\n")
        wire_body = b"".join(framed)
    else:
        headers.append((b"content-length", b"%d" % len(body)))
        wire_body = body
    return method, path, headers, body, wire_body


@parser_names
@PROPS
@given(
    reqs=st.lists(requests(), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
    case=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_round_trip(parser: str, reqs, cuts, case) -> None:
    wire = b""
    for method, path, headers, _body, wire_body in reqs:
        lines = [method + b" " + path + b" HTTP/1.1"]
        for i, (n, v) in enumerate(headers):
            name = n.upper() if case[i % len(case)] else n
            lines.append(name + b": " + v)
        wire += b"\r\n".join(lines) + b"\r\n\r\n" + wire_body
    rec = Recorder()
    p = req_parser(parser, rec, max_header_bytes=MAX_HEADER_BYTES, max_headers=MAX_HEADERS)
    for piece in splits(wire, cuts):
        p.feed(piece)
    expected = []
    for method, path, headers, body, _wire_body in reqs:
        expected.append(("head", method, path, b"1.1", headers))
        if body:
            expected.append(("body", body))
        expected.append(("complete",))
    assert rec.events == expected


# ------------------------------------------------- one verdict: llhttp's rules under h11


def test_llhttp_methods_are_what_llhttp_accepts() -> None:
    import httptools

    from guard.http.codec import LLHTTP_METHODS

    class Sink:
        pass

    def accepted(method: bytes) -> bool:
        try:
            httptools.HttpRequestParser(Sink()).feed_data(
                method + b" / HTTP/1.1\r\nHost: a\r\n\r\n"
            )
        except httptools.HttpParserUpgrade:
            return True  # CONNECT
        except httptools.HttpParserError:
            return False
        return True

    others = [b"FOO", b"get", b"GPOST", b"PRI", b"DESCRIBE", b"SETUP", b"PLAY", b"G" * 64]
    assert all(accepted(m) for m in LLHTTP_METHODS)
    assert not any(accepted(m) for m in others)
    for m in others:  # and the h11 codec answers them the same
        with pytest.raises(BadRequest):
            feed_request("h11", m + b" / HTTP/1.1\r\nHost: a\r\n\r\n")


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"3 \r\nabc\r\n0\r\n\r\n",  # whitespace after the size
        b"3\t\r\nabc\r\n0\r\n\r\n",
        b"3; a=b\r\nabc\r\n0\r\n\r\n",  # whitespace in an extension
        b"3;a =b\r\nabc\r\n0\r\n\r\n",
        b"3;\r\nabc\r\n0\r\n\r\n",  # an extension without a name
        b"3;a\0\r\nabc\r\n0\r\n\r\n",
        b"10000000000000000\r\n",  # 2**64: no 64-bit parser holds it
        b"3\r\nabcX\r\n0\r\n\r\n",  # data not followed by CRLF
        b"3\r\nabc\r\n0\r\n\n",  # bare LF ends the trailer section
        b"3\r\nabc\r\n0\r\nX: y\n\r\n",
        b"3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n",  # folding
        b"3\r\nabc\r\n0\r\nX : y\r\n\r\n",
        b"3\r\nabc\r\n0\r\nContent-Length: 3\r\n\r\n",
        b"3\r\nabc\r\n0\r\ntransfer-encoding: chunked\r\n\r\n",
    ],
)
@pytest.mark.parametrize("step", [None, 1, 4])
@parser_names
def test_chunked_framing_llhttp_rejects_is_400_under_both(
    parser: str, body: bytes, step: int | None
) -> None:
    with pytest.raises(BadRequest):
        feed_request(parser, CHUNKED_HEAD + body, step)


@pytest.mark.parametrize(
    "body",
    [
        b"3;a\r\nabc\r\n0\r\n\r\n",
        b"3;a=\r\nabc\r\n0\r\n\r\n",  # an empty token value: llhttp takes it
        b'3;a="x y";b\r\nabc\r\n0\r\n\r\n',
        b"0000000003\r\nabc\r\n0\r\n\r\n",
        b"ffffffffffffffff\r\n",  # the largest size: the body is simply incomplete
        b"3\r\nabc\r\n0\r\nX:y\r\nX-Sum: a b \r\n\r\n",
    ],
)
@parser_names
def test_chunked_framing_llhttp_takes_is_taken_by_both(parser: str, body: bytes) -> None:
    for step in (None, 1, 3):
        rec, _ = feed_request(parser, CHUNKED_HEAD + body, step)
        assert rec.events[0][0] == "head"


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_chunk_checker_ends_where_the_body_ends(chunks: list[bytes], cuts: list[int]) -> None:
    from guard.http.chunk_rules import ChunkedBodyChecker

    body = b"".join(b"%x;k=v\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nT: 1\r\n\r\n"
    checker = ChunkedBodyChecker()
    pieces = splits(body, cuts)
    for piece in pieces[:-1]:
        checker.feed(piece)
    assert not checker.done or not pieces[-1]
    checker.feed(pieces[-1])
    assert checker.done
    # with the next request right behind it, it stops at the body's end
    checker = ChunkedBodyChecker()
    checker.feed(body + b"GET / HTTP/1.1\r\n\r\n")
    assert checker.done
