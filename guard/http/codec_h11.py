"""The h11 adapter: the pure-Python codec, selectable with ``http.parser: h11``.

h11 is a whole connection state machine; Guard needs only its parser. Each message gets
a fresh ``h11.Connection`` fed with the bytes the previous one left over, so h11 never
waits for Guard to send a response through it before parsing the next request.
"""

from __future__ import annotations

import h11

from guard.errors import (
    BadRequest,
    GuardError,
    HeaderTooLarge,
    NotImplementedByGuard,
    UpstreamProtocolError,
)
from guard.http.codec import (
    RequestEvents,
    RequestHead,
    ResponseEvents,
    ResponseHead,
    apply_request_framing,
    apply_response_framing,
)

_STATUS_ERRORS: dict[int, type[GuardError]] = {431: HeaderTooLarge, 501: NotImplementedByGuard}

# Guard decides framing itself (codec.apply_*_framing); these are only used so h11's
# client state machine knows which request a response answers.
_SYNTHETIC_HOST = [(b"host", b"guard")]


class H11RequestParser:
    __slots__ = (
        "_conn",
        "_events",
        "_max_header_bytes",
        "_max_headers",
        "upgraded_tail",
    )

    def __init__(self, events: RequestEvents, max_header_bytes: int, max_headers: int) -> None:
        self._events = events
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.upgraded_tail: bytes | None = None

    def feed(self, data: bytes) -> None:
        self._conn.receive_data(data)
        self._drain()

    def _drain(self) -> None:
        events = self._events
        while True:
            conn = self._conn
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise _STATUS_ERRORS.get(e.error_status_hint, BadRequest)(
                    f"malformed request: {e}"
                ) from None
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return
            if event is h11.PAUSED:
                # Only an Upgrade/CONNECT request pauses a fresh connection.
                self.upgraded_tail = conn.trailing_data[0]
                return
            if isinstance(event, h11.Request):
                headers = list(event.headers)
                if len(headers) > self._max_headers:
                    raise HeaderTooLarge("too many headers")
                head = RequestHead(event.method, event.target, event.http_version, headers)
                apply_request_framing(head)
                events.on_request_head(head)
            elif isinstance(event, h11.Data):
                events.on_request_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                leftover, _closed = conn.trailing_data
                if conn.their_state is h11.MIGHT_SWITCH_PROTOCOL:
                    # the Upgrade request is complete; what follows is not HTTP
                    self.upgraded_tail = leftover
                    events.on_request_complete()
                    return
                self._conn = h11.Connection(
                    h11.SERVER, max_incomplete_event_size=self._max_header_bytes
                )
                events.on_request_complete()
                if leftover:
                    self._conn.receive_data(leftover)


class H11ResponseParser:
    __slots__ = (
        "_conn",
        "_events",
        "_max_header_bytes",
        "_max_headers",
        "_method",
        "garbage",
    )

    def __init__(self, events: ResponseEvents, max_header_bytes: int, max_headers: int) -> None:
        self._events = events
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._method = b"GET"
        self._conn: h11.Connection | None = None
        self.garbage = False

    def start(self, method: bytes) -> None:
        self._method = method
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max_header_bytes)
        conn.send(h11.Request(method=method, target=b"/", headers=_SYNTHETIC_HOST))
        conn.send(h11.EndOfMessage())
        self._conn = conn

    def feed(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            if data:
                self.garbage = True
            return
        conn.receive_data(data)
        self._drain()

    def feed_eof(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        conn.receive_data(b"")
        return self._drain()

    def _drain(self) -> bool:
        events = self._events
        while (conn := self._conn) is not None:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise UpstreamProtocolError(f"malformed response: {e}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return False
            if isinstance(event, h11.ConnectionClosed):
                return False
            if isinstance(event, h11.InformationalResponse | h11.Response):
                headers = list(event.headers)
                if len(headers) > self._max_headers:
                    raise UpstreamProtocolError("too many response headers")
                head = ResponseHead(event.status_code, event.reason, event.http_version, headers)
                apply_response_framing(head, self._method)
                events.on_response_head(head)
            elif isinstance(event, h11.Data):
                events.on_response_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                if conn.trailing_data[0]:
                    self.garbage = True
                self._conn = None
                events.on_response_complete()
                return True
        return False
