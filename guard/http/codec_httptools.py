"""The httptools (llhttp) adapter: the fast codec on Guard's hot path."""

from __future__ import annotations

from typing import Final

import httptools

from guard.errors import BadRequest, GuardError, HeaderTooLarge, UpstreamProtocolError
from guard.http.codec import (
    Headers,
    RequestEvents,
    RequestHead,
    ResponseEvents,
    ResponseHead,
    apply_request_framing,
    apply_response_framing,
)
from guard.http.plain import plain_request, plain_response

_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}


def _callback_error(exc: httptools.HttpParserCallbackError) -> BaseException:
    # httptools wraps what a callback raised; the original is the context.
    return exc.__context__ or exc


def _measured_size(url: bytes, headers: Headers) -> int:
    # What a head occupies on the wire, give or take optional whitespace.
    return len(url) + 16 + sum(len(n) + len(v) + 4 for n, v in headers)


class _AfterResponse(Exception):
    """A callback saw bytes that belong to no response (see HttptoolsResponseParser)."""


class _Checker:
    """llhttp with no per-header callbacks: it says whether a plain message is valid.

    A plain message (guard.http.plain) is also fed to llhttp, whole, so that it meets the
    same rules as every other message; its header callbacks are what a plain message
    saves. Shared by the connections of a process (one event loop: never re-entered).
    """

    __slots__ = ("begun", "complete", "request", "response")

    def __init__(self) -> None:
        self.begun = 0
        self.complete = False
        self.request = httptools.HttpRequestParser(self)
        self.response = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_message_complete(self) -> None:
        self.complete = True

    def request_ok(self, data: bytes, closing: bool) -> bool:
        """``data`` is one whole valid request (the caller made sure it holds one head)."""
        self.complete = False
        parser = self.request
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            self.request = httptools.HttpRequestParser(self)
            return False
        if closing or not self.complete:
            # After "Connection: close" llhttp refuses whatever follows: a fresh one for
            # the next connection's request. (llhttp's should_keep_alive() cannot say:
            # it is reset once the message is complete.) Nor may one be left mid-message.
            self.request = httptools.HttpRequestParser(self)
        return self.complete

    def response_ok(self, data: bytes, closing: bool) -> int:
        """The status when ``data`` is exactly one whole valid response with a body
        (status 200-599 but 204 and 304), else 0."""
        self.complete = False
        self.begun = 0
        parser = self.response
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            self.response = httptools.HttpResponseParser(self)
            return 0
        if not self.complete or self.begun != 1 or closing:
            # A part of the body missing, or more after it: left mid-message, llhttp
            # would read the next response as its continuation. (And after "Connection:
            # close" it refuses what follows.)
            self.response = httptools.HttpResponseParser(self)
            if not self.complete or self.begun != 1:
                return 0
        status: int = parser.get_status_code()
        return status if status >= 200 and status != 204 and status != 304 else 0


_CHECKER: Final = _Checker()

# After a message that is not plain, this many of the connection's next messages go
# straight to the general path: a client or backend that sends a field the proxy acts on
# (X-Forwarded-For, Keep-Alive, chunked bodies...) tends to send it every time, and each
# failed attempt costs a scan of the head. Then the next one is tried again.
_PLAIN_BACKOFF: Final = 16


class HttptoolsRequestParser:
    __slots__ = (
        "_events",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_max_header_bytes",
        "_max_headers",
        "_mid",
        "_names",
        "_parser",
        "_skip_plain",
        "_url",
        "upgraded_tail",
    )

    def __init__(self, events: RequestEvents, max_header_bytes: int, max_headers: int) -> None:
        self._events = events
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._skip_plain = 0  # plain attempts left out after a miss (see _PLAIN_BACKOFF)
        self._parser = httptools.HttpRequestParser(self)
        self._headers: Headers = []
        self._names: list[bytes] = []
        self._url = b""
        self._in_head = True  # a head is in progress, or the parser waits for one
        self._head_bytes = 0  # bytes fed while this head was in progress
        self._mid = False  # a message ended inside the current feed: offsets unknown
        # Bytes after a completed Upgrade request: they belong to the upgraded protocol.
        self.upgraded_tail: bytes | None = None

    # -- llhttp callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._names = []
        self._url = b""
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called once per header: kept to the one append. The count is checked when the
        # head ends (the head's size bounds how many can pile up before that).
        if self._in_head:  # else chunked trailers: dropped, the same as the h11 codec does
            # llhttp keeps trailing whitespace in a value; it is not part of it (RFC 9110
            # 5.5). (No other whitespace can end a value: llhttp rejects other controls.)
            self._headers.append((name.lower(), value.rstrip()))
            self._names.append(name)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if len(self._headers) > self._max_headers:
            raise HeaderTooLarge("too many headers")
        if self._mid and _measured_size(self._url, self._headers) > self._max_header_bytes:
            # a pipelined head that started inside a feed was not counted byte by byte
            raise HeaderTooLarge("request header block too large")
        p = self._parser
        version = _VERSIONS.get(p.get_http_version())
        if version is None:
            raise BadRequest("unsupported http version")
        head = RequestHead(p.get_method(), self._url, version, self._headers, None, self._names)
        apply_request_framing(head)
        self._events.on_request_head(head)

    def on_body(self, body: bytes) -> None:
        self._events.on_request_body(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._mid = True
        self._headers = []
        self._names = []
        self._url = b""
        self._events.on_request_complete()

    # -- feeding
    def take_plain(self, data: bytes) -> RequestHead | None:
        """The head, when ``data`` is one whole plain request (guard.http.plain) and the
        parser waits for a new one; the caller then treats it as complete. Else None, and
        nothing was consumed: the caller feeds ``data`` as usual."""
        if not self._in_head or self._head_bytes or self.upgraded_tail is not None:
            return None
        if self._skip_plain:
            self._skip_plain -= 1
            return None
        plain = plain_request(data, self._max_header_bytes, self._max_headers)
        if plain is None or not _CHECKER.request_ok(data, plain[5] == b"close"):
            if data[-4:] == b"\r\n\r\n":  # (a head cut across reads is no sign)
                self._skip_plain = _PLAIN_BACKOFF
            return None
        method, target, host, lines, forward, connection = plain
        if forward is None:
            forward = lines
        head = RequestHead(method, target, b"1.1", None, forward, None, lines)
        head.host = host
        if connection is not None:
            head.connection_tokens = (connection,)
            head.keep_alive = connection != b"close"
        return head

    def feed(self, data: bytes) -> None:
        if self.upgraded_tail is not None:
            self.upgraded_tail += data
            return
        self._mid = False
        if self._in_head:
            # llhttp keeps no head buffer Guard could measure, so bound the head by the
            # bytes fed while it is incomplete; split only when over the limit.
            self._head_bytes += len(data)
            if self._head_bytes > self._max_header_bytes:
                allowed = len(data) - (self._head_bytes - self._max_header_bytes)
                self._feed(data[:allowed])
                if self.upgraded_tail is not None:
                    self.upgraded_tail += data[allowed:]
                    return
                if self._in_head and not self._mid:
                    raise HeaderTooLarge("request header block too large")
                data = data[allowed:]
        self._feed(data)
        if self._mid and self._in_head and self._url:
            # a head began inside this feed: count what it already holds (a partial line
            # llhttp holds is bounded by the feed; the next feeds are counted whole)
            self._head_bytes = _measured_size(self._url, self._headers)
            if self._head_bytes > self._max_header_bytes:
                raise HeaderTooLarge("request header block too large")

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgraded_tail = data[e.args[0] :]
        except httptools.HttpParserCallbackError as e:
            err = _callback_error(e)
            if isinstance(err, GuardError):
                raise err from None
            raise
        except httptools.HttpParserError as e:
            raise BadRequest(f"malformed request: {e}") from None

    def resume(self) -> bytes:
        tail = self.upgraded_tail or b""
        self.upgraded_tail = None
        # llhttp stopped at the upgrade; a fresh parser owes nothing to that state.
        self._parser = httptools.HttpRequestParser(self)
        self._headers = []
        self._names = []
        self._url = b""
        self._in_head = True
        self._head_bytes = 0
        self._mid = False
        return tail


class HttptoolsResponseParser:
    __slots__ = (
        "_broken",
        "_done",
        "_events",
        "_head",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_max_header_bytes",
        "_max_headers",
        "_method",
        "_names",
        "_parser",
        "_reason",
        "_skip_plain",
        "_started",
        "garbage",
        "upgraded_tail",
    )

    def __init__(self, events: ResponseEvents, max_header_bytes: int, max_headers: int) -> None:
        self._events = events
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._skip_plain = 0  # plain attempts left out after a miss (see _PLAIN_BACKOFF)
        self._parser = httptools.HttpResponseParser(self)
        self._method = b"GET"
        self._headers: Headers = []
        self._names: list[bytes] = []
        self._reason = b""
        self._in_head = True
        self._head_bytes = 0
        self._head: ResponseHead | None = None
        self._done = True  # no response expected until start()
        self._started = False  # bytes arrived since start()
        self._broken = False  # llhttp stopped mid-stream: use a fresh one next time
        self.garbage = False  # bytes the backend sent that belong to no response
        self.upgraded_tail: bytes | None = None

    def start(self, method: bytes) -> None:
        self._method = method
        self.upgraded_tail = None
        self._head = None
        self._done = False
        self._started = False
        self._in_head = True
        self._head_bytes = 0
        if self._broken:
            self._broken = False
            self._parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        if self._done:
            raise _AfterResponse
        self._headers = []
        self._names = []
        self._reason = b""
        self._in_head = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # (trailers are dropped; the count is checked at the head's end)
            self._headers.append((name.lower(), value.rstrip()))
            self._names.append(name)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if len(self._headers) > self._max_headers:
            raise UpstreamProtocolError("too many response headers")
        p = self._parser
        version = _VERSIONS.get(p.get_http_version())
        if version is None:
            raise UpstreamProtocolError("unsupported http version")
        head = ResponseHead(
            p.get_status_code(), self._reason, version, self._headers, None, self._names
        )
        apply_response_framing(head, self._method)
        self._head = head
        self._events.on_response_head(head)
        if self._method == b"HEAD" and head.status >= 200:
            # llhttp cannot be told the request was HEAD: the message ends with its head,
            # and whatever llhttp takes for a body is garbage (see on_body).
            self._done = True
            self._broken = True
            self._events.on_response_complete()

    def on_body(self, body: bytes) -> None:
        if self._done:
            self.garbage = True
            return
        self._events.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._done:
            return  # the end of a HEAD response's non-body
        self._in_head = True
        head = self._head
        if head is not None and head.status < 200:
            return  # informational heads have no completion of their own
        self._done = True
        self._events.on_response_complete()

    def take_plain(self, data: bytes) -> tuple[ResponseHead, bytes] | None:
        """(head, body) when ``data`` is the whole response, and a plain one (see
        guard.http.plain); the caller then treats it as complete. Else None, and nothing
        was consumed: the caller feeds ``data`` as usual."""
        if self._started or self._done or self._method == b"HEAD":
            return None
        if self._skip_plain:
            self._skip_plain -= 1
            return None
        plain = plain_response(data, self._max_header_bytes, self._max_headers)
        if plain is None:
            self._skip_plain = _PLAIN_BACKOFF
            return None
        status = _CHECKER.response_ok(data, not plain[3])
        if not status:
            self._skip_plain = _PLAIN_BACKOFF
            return None
        reason, lines, forward, keep_alive, body = plain
        if forward is None:
            forward = lines
        head = ResponseHead(status, reason, b"1.1", None, forward, None, lines)
        head.content_length = len(body)
        head.keep_alive = keep_alive
        self._head = head
        self._started = True
        self._done = True
        return head, body

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self.upgraded_tail is not None:
            self.upgraded_tail += data
            return
        if self._done:
            self.garbage = True
            return
        self._started = True
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_header_bytes:
                allowed = len(data) - (self._head_bytes - self._max_header_bytes)
                self._feed(data[:allowed])
                if self.upgraded_tail is not None:
                    self.upgraded_tail += data[allowed:]
                    return
                if self._in_head and not self._done:
                    raise UpstreamProtocolError("response header block too large")
                data = data[allowed:]
                if self._done:
                    # The response ended inside the allowed part: what follows answers
                    # no request, and llhttp, stopped at the response's end, must not
                    # be fed again.
                    if data:
                        self.garbage = True
                    return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self._done:
                self.garbage = True
                return
            head = self._head
            if head is None or head.status != 101:
                raise UpstreamProtocolError("unexpected protocol switch") from None
            # llhttp stops after a 101 head (codec.apply_response_framing made sure it has
            # the headers that make llhttp say where); the rest is the new protocol's.
            self.upgraded_tail = data[e.args[0] :]
            self._done = True
            self._broken = True
        except httptools.HttpParserCallbackError as e:
            err = _callback_error(e)
            if isinstance(err, _AfterResponse):
                self.garbage = True
                self._broken = True
                return
            if isinstance(err, GuardError):
                raise err from None
            raise
        except httptools.HttpParserError as e:
            if self._done:
                self.garbage = True  # bytes after a HEAD response llhttp took for a body
                self._broken = True
                return
            raise UpstreamProtocolError(f"malformed response: {e}") from None

    def feed_eof(self) -> bool:
        if self._done or not self._started:
            return False
        head = self._head
        if head is not None and head.until_close and not self._in_head:
            self._done = True
            self._in_head = True
            self._events.on_response_complete()
            return True
        raise UpstreamProtocolError("upstream closed mid-response")
