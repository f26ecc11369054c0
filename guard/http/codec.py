"""One codec interface over two HTTP/1.1 parsers: httptools (fast, default) and h11.

The proxy talks only to this module. A parser is fed bytes and calls back on a small
events object: it never does IO itself. Framing facts every proxy decision depends on
(keep-alive, chunked, content length, upgrade) are computed here, by the same rules for
both parsers, so the two codecs behave identically at the proxy's edges.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from guard.errors import BadRequest, ExpectationFailed, UpstreamProtocolError

Headers = list[tuple[bytes, bytes]]

PARSERS = ("httptools", "h11")

# One header line of a head llhttp accepted: a token, a colon, the value without its
# surrounding whitespace (llhttp rejects whitespace before the colon, controls and bare
# CR/LF, so nothing else can be in a line).
_HEADER_LINE: Final = re.compile(rb"([^:\r\n]+):[ \t]*([^\r\n]*?)[ \t]*\r\n")


def headers_of_lines(lines: bytes) -> Headers:
    """The header list (lowercase names) of header lines llhttp accepted."""
    return [(name.lower(), value) for name, value in _HEADER_LINE.findall(lines)]


class _Head:
    """What request and response heads share: the header list, built from the received
    lines only when asked for, and the names as received.

    A *plain* head (guard.http.plain) keeps its header lines as received (``received``,
    each ending in CRLF, the empty line excluded) and the ones to forward (``raw``: the
    same but for a ``Connection: keep-alive``/``close`` line); the forwarder sends
    ``raw`` as it is. Any other head has neither, and a list edited after parsing loses
    them."""

    __slots__ = ("_headers", "names", "raw", "received")

    _headers: Headers | None
    names: list[bytes] | None
    raw: bytes | None
    received: bytes | None

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = headers_of_lines(self.received or b"")
        return headers

    @headers.setter
    def headers(self, headers: Headers) -> None:
        # An edited header list is no longer what arrived: it is serialized from the list.
        self._headers = headers
        self.raw = self.received = None
        self.names = None

    def names_as_received(self) -> list[bytes]:
        """The header names as received (lowercase where that is all that is known)."""
        names = self.names
        if names is None:
            received = self.received
            if received is not None:
                names = self.names = [n for n, _ in _HEADER_LINE.findall(received)]
            else:
                names = [n for n, _ in self.headers]
        return names


class RequestHead(_Head):
    __slots__ = (
        "chunked",
        "connection_tokens",
        "content_length",
        "expect_continue",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: Headers | None,
        raw: bytes | None = None,
        names: list[bytes] | None = None,
        received: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version  # b"1.1" or b"1.0"
        self._headers = headers  # lowercase names, in received order; None: from received
        # The names as received, one per header (they are forwarded so: a backend that
        # minds case sees the client's), or None: forwarded lowercase.
        self.names = names
        self.raw = raw  # (see _Head)
        self.received = raw if received is None else received
        self.host = b""
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.connection_tokens: tuple[bytes, ...] = ()

    def drop(self, name: bytes) -> None:
        """Remove every header called ``name`` (lowercase), keeping the others' names."""
        headers = self.headers
        names = self.names_as_received()
        keep = [i for i, h in enumerate(headers) if h[0] != name]
        self.headers = [headers[i] for i in keep]
        self.names = [names[i] for i in keep]

    def put_first(self, name: bytes, value: bytes) -> None:
        """Make ``name: value`` the first header and the only one called ``name``."""
        self.drop(name)
        self._headers.insert(0, (name, value))  # type: ignore[union-attr]
        self.names.insert(0, name)  # type: ignore[union-attr]

    @property
    def path(self) -> bytes:
        target = self.target
        q = target.find(b"?")
        return target if q < 0 else target[:q]

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ResponseHead(_Head):
    __slots__ = (
        "chunked",
        "connection_tokens",
        "content_length",
        "keep_alive",
        "reason",
        "status",
        "until_close",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        headers: Headers | None,
        raw: bytes | None = None,
        names: list[bytes] | None = None,
        received: bytes | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self._headers = headers
        self.raw = raw  # (see _Head)
        self.received = raw if received is None else received
        self.names = names  # as RequestHead.names
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.until_close = False  # body delimited by the connection closing
        self.connection_tokens: tuple[bytes, ...] = ()
        self.upgrade: bytes | None = None  # the Upgrade header of a 101


class RequestEvents(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_complete(self) -> None: ...


class ResponseEvents(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self) -> None: ...


class RequestParser(Protocol):
    upgraded_tail: bytes | None  # set once an Upgrade request completed

    def take_plain(self, data: bytes) -> RequestHead | None:
        """The head when ``data`` is one whole plain request (``guard.http.plain``), to be
        taken as complete; else None and ``data`` is to be fed. A codec may always say
        None (h11 does): it is a shortcut, never a different verdict."""

    def feed(self, data: bytes) -> None:
        """Parse bytes, calling back; raises a GuardError on malformed input."""

    def resume(self) -> bytes:
        """The upgrade was not accepted: parse HTTP again from the next feed.

        Returns the bytes held in ``upgraded_tail`` (the caller feeds them back).
        """


class ResponseParser(Protocol):
    def start(self, method: bytes) -> None:
        """Expect the response to a request with this method (HEAD has no body)."""

    garbage: bool  # the backend sent bytes that belong to no response
    # Set once a 101 head was parsed: the bytes after it belong to the switched protocol.
    upgraded_tail: bytes | None

    def take_plain(self, data: bytes) -> tuple[ResponseHead, bytes] | None:
        """(head, body) when ``data`` is the whole response and a plain one, to be taken
        as complete; else None and ``data`` is to be fed (as RequestParser.take_plain)."""

    def feed(self, data: bytes) -> None: ...

    def feed_eof(self) -> bool:
        """The connection closed; True when that completed a close-delimited body."""


# ------------------------------------------------------------------ shared framing rules


def _connection_tokens(value: bytes) -> tuple[bytes, ...]:
    if b"," not in value:  # the usual "keep-alive" / "close": no split, no generator
        token = value.strip().lower()
        return (token,) if token else ()
    return tuple(t.strip().lower() for t in value.split(b",") if t.strip())


# The request methods llhttp accepts (HTTP, WebDAV, CalDAV, UPnP, PURGE, QUERY, and
# SOURCE); it answers 400 to any other token, lowercase ones included. h11 takes any token,
# so the h11 adapter refuses the rest: one verdict under both codecs. (tests/test_codec.py
# checks this set against llhttp itself.)
LLHTTP_METHODS: Final = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH"
    b" SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY"
    b" SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
_MAX_CONTENT_LENGTH: Final = 0xFFFFFFFFFFFFFFFF  # llhttp's: a longer one is a 400 (overflow)


def _parse_content_length(value: bytes, seen: int | None) -> int:
    # Only plain digits: "+5", "0x5", "1_0", " " and "" are all smuggling vectors.
    v = value.strip(b" \t")
    if not v or not v.isdigit() or not v.isascii():
        raise BadRequest("invalid content-length")
    n = int(v)
    if n > _MAX_CONTENT_LENGTH:
        raise BadRequest("content-length overflow")
    if seen is not None and seen != n:
        raise BadRequest("conflicting content-length headers")
    return n


# Bytes that may not appear in a head except as the CRLF line ends (CR and LF included).
_CTL: Final = bytes(range(0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"


def head_bytes_error(raw: bytes, before: bytes = b"") -> str | None:
    """Why a raw head (or a piece of one) is malformed, or None: C-level scans only.

    Rejects NUL and other controls, bare CR, bare LF and obsolete line folding. llhttp
    rejects all of these itself; the h11 adapter runs this on the raw bytes because h11
    tolerates bare LF, folding and controls. ``before`` is the byte preceding ``raw``.
    """
    if len(raw) - len(raw.translate(None, _CTL)) != 2 * raw.count(b"\r\n"):
        return "control character or bare CR/LF in head"
    raw = before + raw
    if b"\n " in raw or b"\n\t" in raw:
        return "obsolete line folding"
    return None


_RESPONSE_FRAMING: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"upgrade"}
)
_REQUEST_FRAMING: Final = _RESPONSE_FRAMING | {b"host", b"expect"}


def _transfer_encoding_ok(count: int, value: bytes) -> bool:
    # Exactly one Transfer-Encoding field whose value is exactly "chunked".
    return count == 1 and value.strip(b" \t").lower() == b"chunked"


# uri-host [":" port] (RFC 3986 3.2.2): an IP literal, or a reg-name of the characters
# host names use (unreserved and %-escapes; sub-delims such as "," ";" "!" are allowed by
# the RFC but never appear in real names, and a comma reads as a list to many backends).
VALID_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]*)(?::[0-9]{0,5})?")


def apply_request_framing(head: RequestHead) -> None:
    """Fill the framing fields of a request head from its headers, rejecting smuggling.

    Transfer-Encoding other than one ``chunked`` field (gzip, "chunked, chunked",
    "gzip, chunked", two fields, empty) is 400 under both parsers: h11 rejects them all
    before Guard sees the headers, and llhttp some, so one status is the only parity.
    """
    te_count = 0
    te_value = b""
    content_length: int | None = None
    connection: tuple[bytes, ...] = ()
    host: bytes | None = None
    for name, value in head.headers:
        if name not in _REQUEST_FRAMING:
            continue  # one set lookup for the many headers framing ignores
        if name == b"content-length":
            content_length = _parse_content_length(value, content_length)
        elif name == b"transfer-encoding":
            te_count += 1
            te_value = value
        elif name == b"connection":
            connection += _connection_tokens(value)
        elif name == b"host":
            if host is not None:
                raise BadRequest("duplicate host header")
            host = value
        elif name == b"upgrade":
            head.upgrade = value
        elif name == b"expect":
            if value.strip().lower() == b"100-continue":
                head.expect_continue = True
            else:
                raise ExpectationFailed("unsupported expectation")
    if te_count:
        if head.version == b"1.0":
            # RFC 9112 6.1: chunked framing in an HTTP/1.0 message is faulty framing: the
            # sender may be a 1.0 intermediary that did not understand it.
            raise BadRequest("transfer-encoding in an HTTP/1.0 request")
        if content_length is not None:
            raise BadRequest("both content-length and transfer-encoding")
        if not _transfer_encoding_ok(te_count, te_value):
            raise BadRequest("transfer-encoding other than chunked")
        head.chunked = True
    head.content_length = content_length
    head.connection_tokens = connection
    if head.version == b"1.1":
        if host is None:
            raise BadRequest("missing host header")
        head.keep_alive = b"close" not in connection
    elif head.version == b"1.0":
        head.keep_alive = b"keep-alive" in connection
    else:
        raise BadRequest("unsupported http version")
    if host is not None and not VALID_HOST.fullmatch(host):
        # RFC 9112 3.2: a Host that is not uri-host [":" port] is a 400; forwarding it
        # would hand backends "a b", "user@h" or "h/evil" as the host they build URLs on.
        raise BadRequest("invalid host header")
    if b"#" in head.target:
        raise BadRequest("fragment in the request target")  # RFC 9112 3.2: never sent
    head.host = host or b""
    if head.upgrade is not None and (b"upgrade" not in connection or head.version != b"1.1"):
        # An Upgrade without Connection: upgrade asks for nothing, and HTTP/1.0 has no
        # upgrades (RFC 9110 7.8: ignore it): served as a plain request.
        head.upgrade = None


def apply_response_framing(head: ResponseHead, method: bytes) -> None:
    """Fill the framing fields of a response head; malformed framing is a 502.

    A response with both Content-Length and Transfer-Encoding, or a Transfer-Encoding
    other than one ``chunked`` field, is rejected (llhttp and h11 each reject one of the
    two natively; a gzip transfer-coding could not be passed on to the client anyway).
    So is a 101 without ``Upgrade`` and ``Connection: upgrade``: llhttp stops after such
    a head without saying where it ended, and it switches to nothing anyway.
    """
    te_count = 0
    te_value = b""
    content_length: int | None = None
    connection: tuple[bytes, ...] = ()
    for name, value in head.headers:
        if name not in _RESPONSE_FRAMING:
            continue
        if name == b"content-length":
            try:
                content_length = _parse_content_length(value, content_length)
            except BadRequest as e:
                raise UpstreamProtocolError(str(e)) from None
        elif name == b"transfer-encoding":
            te_count += 1
            te_value = value
        elif name == b"connection":
            connection += _connection_tokens(value)
        elif name == b"upgrade":
            head.upgrade = value
    if te_count:
        if content_length is not None:
            raise UpstreamProtocolError("both content-length and transfer-encoding")
        if not _transfer_encoding_ok(te_count, te_value):
            raise UpstreamProtocolError("transfer-encoding other than chunked")
    status = head.status
    if status == 101 and (head.upgrade is None or b"upgrade" not in connection):
        raise UpstreamProtocolError("101 without upgrade headers")
    no_body = method == b"HEAD" or status < 200 or status in (204, 304)
    if te_count and not no_body:
        head.chunked = True
    elif content_length is None and not no_body:
        head.until_close = True
    head.content_length = content_length
    head.connection_tokens = connection
    if head.version == b"1.1":
        head.keep_alive = b"close" not in connection
    elif head.version == b"1.0":
        head.keep_alive = b"keep-alive" in connection
    else:
        raise UpstreamProtocolError("unsupported http version")
    if head.until_close:
        head.keep_alive = False


def make_request_parser(
    name: str, events: RequestEvents, *, max_header_bytes: int, max_headers: int
) -> RequestParser:
    if name == "httptools":
        from guard.http.codec_httptools import HttptoolsRequestParser

        return HttptoolsRequestParser(events, max_header_bytes, max_headers)
    if name == "h11":
        from guard.http.codec_h11 import H11RequestParser

        return H11RequestParser(events, max_header_bytes, max_headers)
    raise ValueError(f"unknown parser {name!r}")


def make_response_parser(
    name: str, events: ResponseEvents, *, max_header_bytes: int, max_headers: int
) -> ResponseParser:
    if name == "httptools":
        from guard.http.codec_httptools import HttptoolsResponseParser

        return HttptoolsResponseParser(events, max_header_bytes, max_headers)
    if name == "h11":
        from guard.http.codec_h11 import H11ResponseParser

        return H11ResponseParser(events, max_header_bytes, max_headers)
    raise ValueError(f"unknown parser {name!r}")
