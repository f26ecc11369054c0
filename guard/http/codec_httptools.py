"""The httptools (llhttp) adapter: the fast codec on Guard's hot path."""

from __future__ import annotations

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


def _callback_error(exc: httptools.HttpParserCallbackError) -> BaseException:
    # httptools wraps what a callback raised; the original is the context.
    return exc.__context__ or exc


class HttptoolsRequestParser:
    __slots__ = (
        "_events",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_max_header_bytes",
        "_max_headers",
        "_parser",
        "_url",
        "upgraded_tail",
    )

    def __init__(self, events: RequestEvents, max_header_bytes: int, max_headers: int) -> None:
        self._events = events
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._parser = httptools.HttpRequestParser(self)
        self._headers: Headers = []
        self._url = b""
        self._in_head = True
        self._head_bytes = 0
        # Bytes after a completed Upgrade request: they belong to the upgraded protocol.
        self.upgraded_tail: bytes | None = None

    # -- llhttp callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._url = b""
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # chunked trailers: dropped, the same as the h11 codec does
        headers = self._headers
        if len(headers) >= self._max_headers:
            raise HeaderTooLarge("too many headers")
        headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        p = self._parser
        version = p.get_http_version()
        head = RequestHead(
            p.get_method(),
            self._url,
            b"1.1" if version == "1.1" else b"1.0",
            self._headers,
        )
        apply_request_framing(head)
        self._events.on_request_head(head)

    def on_body(self, body: bytes) -> None:
        self._events.on_request_body(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._events.on_request_complete()

    # -- feeding
    def feed(self, data: bytes) -> None:
        if self._in_head:
            # llhttp buffers a header line whole before calling back, so bound the head
            # by the bytes fed while it is incomplete; split only when over the limit.
            self._head_bytes += len(data)
            if self._head_bytes > self._max_header_bytes:
                allowed = len(data) - (self._head_bytes - self._max_header_bytes)
                self._feed(data[:allowed])
                if self._in_head and self._head_bytes > 0:
                    raise HeaderTooLarge("request header block too large")
                data = data[allowed:]
        self._feed(data)

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


class HttptoolsResponseParser:
    __slots__ = (
        "_events",
        "_head",
        "_headers",
        "_in_head",
        "_max_header_bytes",
        "_max_headers",
        "_method",
        "_parser",
        "_reason",
        "_skip_body",
        "garbage",
    )

    def __init__(self, events: ResponseEvents, max_header_bytes: int, max_headers: int) -> None:
        self._events = events
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._parser = httptools.HttpResponseParser(self)
        self._method = b"GET"
        self._headers: Headers = []
        self._reason = b""
        self._in_head = True
        self._skip_body = False
        self._head: ResponseHead | None = None
        self.garbage = False  # bytes the backend sent that belong to no response

    def start(self, method: bytes) -> None:
        self._method = method
        self._head = None

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""
        self._in_head = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return
        if len(self._headers) >= self._max_headers:
            raise UpstreamProtocolError("too many response headers")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self._parser
        head = ResponseHead(
            p.get_status_code(),
            self._reason,
            b"1.1" if p.get_http_version() == "1.1" else b"1.0",
            self._headers,
        )
        apply_response_framing(head, self._method)
        self._head = head
        self._events.on_response_head(head)
        if self._method == b"HEAD" and head.status >= 200:
            # llhttp cannot be told the request was HEAD: finish the message here and
            # start a fresh parser after this feed (see feed()).
            self._skip_body = True
            self._events.on_response_complete()

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            self.garbage = True
            return
        self._events.on_response_body(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        head = self._head
        if self._skip_body or (head is not None and head.status < 200):
            return  # informational heads have no completion of their own
        self._events.on_response_complete()

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise UpstreamProtocolError("unexpected protocol switch") from None
        except httptools.HttpParserCallbackError as e:
            err = _callback_error(e)
            if isinstance(err, GuardError):
                raise err from None
            raise
        except httptools.HttpParserError as e:
            raise UpstreamProtocolError(f"malformed response: {e}") from None
        if self._skip_body:
            self._skip_body = False
            self._in_head = True
            self._parser = httptools.HttpResponseParser(self)
        elif self._in_head and len(data) > self._max_header_bytes:
            raise UpstreamProtocolError("response header block too large")

    def feed_eof(self) -> bool:
        head = self._head
        if head is not None and head.until_close and not self._in_head:
            self._in_head = True
            self._events.on_response_complete()
            return True
        return False
