"""The h11 adapter: the pure-Python codec, selectable with ``http.parser: h11``.

h11 is a whole connection state machine; Guard needs only its parser. Each message gets
a fresh ``h11.Connection`` fed with the bytes the previous one left over, so h11 never
waits for Guard to send a response through it before parsing the next request.

h11 is more lenient than llhttp about heads (bare LF line ends, obsolete line folding,
control characters in values, blank lines before the start line). So that both codecs
accept and reject the same bytes, this adapter collects each head itself, checks it with
codec.head_bytes_error and bounds it by ``max_header_bytes`` exactly, and only then hands
it to h11. It also refuses the methods llhttp does not know (``LLHTTP_METHODS``), a
Transfer-Encoding ending in a tab, and chunked bodies that break llhttp's framing rules
(``chunk_rules``), so that both codecs reach one verdict on every corpus case but the few
where llhttp is the lenient one.
"""

from __future__ import annotations

import h11

from guard.errors import BadRequest, GuardError, HeaderTooLarge, UpstreamProtocolError
from guard.http.chunk_rules import ChunkedBodyChecker
from guard.http.codec import (
    LLHTTP_METHODS,
    RequestEvents,
    RequestHead,
    ResponseEvents,
    ResponseHead,
    apply_request_framing,
    apply_response_framing,
    head_bytes_error,
)

# Guard decides framing itself (codec.apply_*_framing); these are only used so h11's
# client state machine knows which request a response answers. Every synthetic request
# proposes an upgrade: h11 rejects a 101 nobody asked for, and whether one was asked for
# is the proxy's decision (as it is under llhttp, which never sees the request either).
_SYNTHETIC_HEADERS = [(b"host", b"guard"), (b"connection", b"upgrade"), (b"upgrade", b"guard")]


class _HeadCollector:
    """Buffers one head until its blank line, validating bytes as they arrive."""

    __slots__ = ("_bad", "_buf", "_checked", "_limit", "_too_large")

    def __init__(self, limit: int, bad: type[GuardError], too_large: type[GuardError]) -> None:
        self._buf = bytearray()
        self._checked = 0
        self._limit = limit
        self._bad = bad
        self._too_large = too_large

    @property
    def empty(self) -> bool:
        return not self._buf

    def add(self, data: bytes) -> bytes | None:
        """The head plus any bytes after it once the head is complete, else None."""
        buf = self._buf
        buf += data
        checked = self._checked
        if not checked and buf[:1] in (b"\r", b"\n"):
            # empty lines before the start line are skipped, as llhttp does (RFC 9112 2.2)
            del buf[: len(buf) - len(buf.lstrip(b"\r\n"))]
        end = buf.find(b"\r\n\r\n", max(checked - 3, 0))
        stop = len(buf) if end < 0 else end + 4
        if stop > self._limit:
            raise self._too_large("header block too large")
        seg = bytes(buf[checked:stop])
        if end < 0 and seg.endswith(b"\r"):
            seg = seg[:-1]  # its LF may arrive in the next feed
        error = head_bytes_error(seg, bytes(buf[checked - 1 : checked]) if checked else b"")
        if error is not None:
            raise self._bad(error)
        if end < 0:
            self._checked = checked + len(seg)
            return None
        # h11 folds identical duplicate Content-Length fields ("3" twice, "3, 3") into
        # one before Guard sees them; llhttp rejects them, and so does Guard.
        low = bytes(buf[:stop]).lower()
        i = low.find(b"\ncontent-length:")
        if i >= 0 and (
            low.find(b"\ncontent-length:", i + 1) >= 0 or b"," in low[i : low.find(b"\r", i)]
        ):
            raise self._bad("duplicate content-length")
        # llhttp takes trailing spaces after "chunked" but not a trailing tab; h11 strips
        # both before Guard sees the value, so the raw line is looked at here.
        i = low.find(b"\ntransfer-encoding:")
        while i >= 0:
            value = low[i + 19 : low.find(b"\r", i)]
            if value.rstrip(b" ").endswith(b"\t"):
                raise self._bad("transfer-encoding other than chunked")
            i = low.find(b"\ntransfer-encoding:", i + 1)
        out = bytes(buf)
        self._buf = bytearray()
        self._checked = 0
        return out


class H11RequestParser:
    __slots__ = (
        "_body",
        "_chunks",
        "_collector",
        "_conn",
        "_events",
        "_in_head",
        "_max_header_bytes",
        "_max_headers",
        "_upgrade",
        "upgraded_tail",
    )

    def __init__(self, events: RequestEvents, max_header_bytes: int, max_headers: int) -> None:
        self._events = events
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._conn = self._new_conn()
        self._collector = _HeadCollector(max_header_bytes, BadRequest, HeaderTooLarge)
        self._in_head = True
        self._upgrade = False
        self.upgraded_tail: bytes | None = None
        # A chunked body is checked by llhttp's rules before h11 reads it (chunk_rules).
        self._chunks: ChunkedBodyChecker | None = None
        self._body = b""  # the bytes after the head in the feed that completed it

    def _new_conn(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_bytes)

    def take_plain(self, data: bytes) -> RequestHead | None:
        return None  # h11 parses every message itself: no shortcut

    def feed(self, data: bytes) -> None:
        if self.upgraded_tail is not None:
            self.upgraded_tail += data
            return
        while True:
            if self._in_head:
                complete = self._collector.add(data)
                if complete is None:
                    return
                self._in_head = False
                data = complete
                self._body = complete[complete.find(b"\r\n\r\n") + 4 :]
            elif self._chunks is not None and not self._chunks.done:
                self._chunks.feed(data)
            self._conn.receive_data(data)
            leftover = self._drain()
            if leftover is None:
                return
            data = leftover

    def _drain(self) -> bytes | None:
        """Process h11's events; the bytes after a finished message, or None."""
        events = self._events
        conn = self._conn
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                if e.error_status_hint == 431:
                    raise HeaderTooLarge(f"malformed request: {e}") from None
                # h11's 501s are Transfer-Encodings other than chunked: 400 by Guard's rules
                raise BadRequest(f"malformed request: {e}") from None
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return None
            if event is h11.PAUSED:
                # Only an Upgrade/CONNECT request pauses a fresh connection.
                self.upgraded_tail = bytes(conn.trailing_data[0])
                return None
            if isinstance(event, h11.Request):
                if event.method not in LLHTTP_METHODS:
                    raise BadRequest("invalid method")
                headers = list(event.headers)
                if len(headers) > self._max_headers:
                    raise HeaderTooLarge("too many headers")
                names = [name for name, _ in event.headers.raw_items()]
                head = RequestHead(
                    event.method, event.target, event.http_version, headers, None, names
                )
                apply_request_framing(head)
                self._upgrade = head.upgrade is not None or head.method == b"CONNECT"
                events.on_request_head(head)
                if head.chunked:
                    # The body is checked after the head event (as llhttp reports it) and
                    # before h11 turns any of it into body events.
                    self._chunks = ChunkedBodyChecker()
                    self._chunks.feed(self._body)
                self._body = b""
            elif isinstance(event, h11.Data):
                events.on_request_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                leftover = bytes(conn.trailing_data[0])
                if conn.their_state is h11.MIGHT_SWITCH_PROTOCOL and self._upgrade:
                    # the Upgrade request is complete; what follows is not HTTP
                    self.upgraded_tail = leftover
                    events.on_request_complete()
                    return None
                # (h11 also pauses on an Upgrade header without Connection: upgrade,
                # which asks for nothing: parsing goes on, as with llhttp.)
                self._chunks = None
                self._conn = self._new_conn()
                self._in_head = True
                events.on_request_complete()
                return leftover

    def resume(self) -> bytes:
        tail = self.upgraded_tail or b""
        self.upgraded_tail = None
        # h11 waits in MIGHT_SWITCH_PROTOCOL for a switch that will not come: start over.
        self._conn = self._new_conn()
        self._collector = _HeadCollector(self._max_header_bytes, BadRequest, HeaderTooLarge)
        self._in_head = True
        self._upgrade = False
        self._chunks = None
        return tail


class H11ResponseParser:
    __slots__ = (
        "_collector",
        "_conn",
        "_events",
        "_in_head",
        "_max_header_bytes",
        "_max_headers",
        "_method",
        "_started",
        "garbage",
        "upgraded_tail",
    )

    def __init__(self, events: ResponseEvents, max_header_bytes: int, max_headers: int) -> None:
        self._events = events
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._method = b"GET"
        self._conn: h11.Connection | None = None
        self._collector = _HeadCollector(
            max_header_bytes, UpstreamProtocolError, UpstreamProtocolError
        )
        self._in_head = True
        self._started = False
        self.garbage = False
        self.upgraded_tail: bytes | None = None

    def start(self, method: bytes) -> None:
        self._method = method
        self.upgraded_tail = None
        self._conn = self._new_conn()
        self._collector = _HeadCollector(
            self._max_header_bytes, UpstreamProtocolError, UpstreamProtocolError
        )
        self._in_head = True
        self._started = False

    def _new_conn(self) -> h11.Connection:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max_header_bytes)
        conn.send(h11.Request(method=self._method, target=b"/", headers=_SYNTHETIC_HEADERS))
        conn.send(h11.EndOfMessage())
        return conn

    def take_plain(self, data: bytes) -> tuple[ResponseHead, bytes] | None:
        return None

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self.upgraded_tail is not None:
            self.upgraded_tail += data
            return
        if self._conn is None:
            self.garbage = True
            return
        self._started = True
        while True:
            if self._in_head:
                complete = self._collector.add(data)
                if complete is None:
                    return
                self._in_head = False
                data = complete
            conn = self._conn
            assert conn is not None
            conn.receive_data(data)
            leftover = self._drain()
            if leftover is None or self._conn is None:
                return
            data = leftover

    def feed_eof(self) -> bool:
        conn = self._conn
        if conn is None or not self._started:
            return False
        if self._in_head:
            raise UpstreamProtocolError("upstream closed mid-response")
        conn.receive_data(b"")
        self._drain()
        return self._conn is None

    def _drain(self) -> bytes | None:
        """Process h11's events; after an informational head, the bytes that follow it.

        Returns None when more bytes are needed; b"" once the response completed.
        """
        events = self._events
        conn = self._conn
        assert conn is not None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise UpstreamProtocolError(f"malformed response: {e}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.InformationalResponse | h11.Response):
                headers = list(event.headers)
                if len(headers) > self._max_headers:
                    raise UpstreamProtocolError("too many response headers")
                names = [name for name, _ in event.headers.raw_items()]
                head = ResponseHead(
                    event.status_code, event.reason, event.http_version, headers, None, names
                )
                apply_response_framing(head, self._method)
                events.on_response_head(head)
                if isinstance(event, h11.InformationalResponse):
                    leftover = bytes(conn.trailing_data[0])
                    if head.status == 101:
                        # what follows belongs to the switched protocol, as under llhttp
                        self.upgraded_tail = leftover
                        self._conn = None
                        return None
                    # the final response's head goes through the collector like the first
                    self._conn = self._new_conn()
                    self._in_head = True
                    return leftover
            elif isinstance(event, h11.Data):
                events.on_response_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                if conn.trailing_data[0]:
                    self.garbage = True
                self._conn = None
                events.on_response_complete()
                return b""
