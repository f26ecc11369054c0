"""Plain messages: the common shape of a request or response, recognized by a few regexes.

Most proxied traffic is a whole head in one read, with nothing in it a proxy must rewrite:
no hop-by-hop or forwarding field, one Host, a Content-Length (or no body at all). For
such a *plain* message Guard needs no per-header work: the header lines are forwarded as
received, and the header list is built only if something asks for it. These functions
only recognize the shape; they never judge validity, so the codec feeds the same bytes to
llhttp as well, and anything unusual (a partial or pipelined read, a body, an odd field)
takes the general path, which reaches the verdict. Sans-IO: bytes in, facts out.
"""

from __future__ import annotations

import re

from guard.http.codec import LLHTTP_METHODS, VALID_HOST

_REQUEST_LINE = re.compile(rb"([A-Z-]+) (/[^ #\r\n]*) HTTP/1\.1\r\n")
# Fields a proxy acts on (framing, hop-by-hop, Expect) or rewrites (forwarding): a head
# with any of them is not plain. Matched against the lowercased head (a case-insensitive
# pattern costs Python's re several times more). Host is counted on its own.
_REQUEST_SPECIAL = re.compile(
    rb"\r\n(?:connection|keep-alive|proxy-connection|te|trailer|upgrade|transfer-encoding"
    rb"|content-length|expect|x-forwarded-for|x-forwarded-proto|x-forwarded-host|forwarded):"
)
# Methods llhttp knows (a body-less request of any of them is plain), but CONNECT, which
# Guard answers itself.
_PLAIN_METHODS = LLHTTP_METHODS - {b"CONNECT"}

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) ([^\r\n]*)\r\n")
_RESPONSE_HOP_BY_HOP = re.compile(
    rb"\r\n(?:keep-alive|proxy-connection|te|trailer|upgrade|transfer-encoding):"
)
_WS = b" \t"
# A header line not in the form "Name: value" (one space after the colon, a value with
# no surrounding whitespace): forwarded as it came it would differ from the general
# path's "name: value", so such a head is not plain. (A name holds no colon, so the
# first colon of a line ends it.)
_ODD_LINE = re.compile(rb"\r\n[^:\r\n]*:(?! [^ \t\r])|[ \t]\r\n")


def plain_request(
    data: bytes, max_header_bytes: int, max_headers: int
) -> tuple[bytes, bytes, bytes, bytes] | None:
    """(method, target, host, header lines) when ``data`` is exactly one plain request.

    Plain: the whole head and nothing else (so no body and nothing pipelined after it),
    HTTP/1.1, an origin-form target without a fragment, exactly one Host, valid as a
    host, no field the proxy acts on, within the limits.
    """
    n = len(data)
    if n > max_header_bytes or data.find(b"\r\n\r\n") != n - 4:
        return None
    line = _REQUEST_LINE.match(data)
    if line is None:
        return None
    low = data.lower()
    if _REQUEST_SPECIAL.search(low) is not None or _ODD_LINE.search(data) is not None:
        return None
    method = line.group(1)
    if method not in _PLAIN_METHODS:
        return None
    i = low.find(b"\r\nhost:")
    if i < 0 or low.find(b"\r\nhost:", i + 7) >= 0:
        return None  # none, or several
    host = data[i + 7 : data.find(b"\r", i + 7)].strip(_WS)
    if not VALID_HOST.fullmatch(host) or data.count(b"\r\n") - 2 > max_headers:
        return None
    return method, line.group(2), host, data[line.end() : n - 2]


def plain_response(
    data: bytes, max_header_bytes: int, max_headers: int
) -> tuple[int, bytes, bytes, bool, bytes] | None:
    """(status, reason, header lines, keep-alive, body) when ``data`` is exactly one plain
    response to a request other than HEAD.

    Plain: HTTP/1.1, a final status that has a body (not 1xx, 204 or 304), exactly one
    Content-Length and exactly that many body bytes after the head, no hop-by-hop field
    but one ``Connection: keep-alive`` or ``close`` (whose line is left out of the
    returned header lines), within the limits.
    """
    end = data.find(b"\r\n\r\n") + 2
    if end < 2 or end + 2 > max_header_bytes:
        return None
    line = _STATUS_LINE.match(data)
    if line is None:
        return None
    low = data[:end].lower()
    if _RESPONSE_HOP_BY_HOP.search(low) is not None or _ODD_LINE.search(data, 0, end) is not None:
        return None
    status = int(line.group(1))
    if status == 204 or status == 304:
        return None
    i = low.find(b"\r\ncontent-length:")
    if i < 0 or low.find(b"\r\ncontent-length:", i + 17) >= 0:
        return None  # none, or several
    length = low[i + 17 : low.find(b"\r", i + 17)].strip(_WS)
    if not length.isdigit() or not length.isascii() or len(data) - end - 2 != int(length):
        return None
    if low.count(b"\r\n") - 1 > max_headers:
        return None
    start = line.end()
    keep_alive = True
    i = low.find(b"\r\nconnection:")
    if i >= 0:
        if low.find(b"\r\nconnection:", i + 13) >= 0:
            return None
        j = low.find(b"\r", i + 13)
        token = low[i + 13 : j].strip(_WS)
        if token == b"close":
            keep_alive = False
        elif token != b"keep-alive":
            return None  # names other fields (hop-by-hop too): the general path
        lines = data[start : i + 2] + data[j + 2 : end]  # the lines around it
    else:
        lines = data[start:end]
    return status, line.group(2), lines, keep_alive, data[end + 2 :]
