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
from typing import Final

from guard.http.codec import LLHTTP_METHODS, VALID_HOST

_REQUEST_LINE: Final = re.compile(rb"([A-Z-]+) (/[^ #\r\n]*) HTTP/1\.1\r\n")
# One scan of the lowercased head (a case-insensitive pattern costs Python's re several
# times more) for what makes a request not plain: a field the proxy acts on (framing,
# hop-by-hop, Expect) or rewrites (forwarding), or a line not in the form "Name: value"
# with one space after the colon (forwarded as it came, such a line would differ from the
# general path's). A name holds no colon, so the first colon of a line ends it. Trailing
# whitespace, the other way a line can differ, is looked for with bytes.find.
_NOT_PLAIN_REQUEST: Final = re.compile(
    rb"\r\n(?:(?:keep-alive|proxy-connection|te|trailer|upgrade|transfer-encoding"
    rb"|content-length|expect|x-forwarded-for|x-forwarded-proto|x-forwarded-host|forwarded):"
    rb"|[^:\r\n]*:(?! [^ \t\r]))"
)
# Methods llhttp knows (a body-less request of any of them is plain), but CONNECT, which
# Guard answers itself.
_PLAIN_METHODS: Final = LLHTTP_METHODS - {b"CONNECT"}

_NOT_PLAIN_RESPONSE: Final = re.compile(
    rb"\r\n(?:(?:keep-alive|proxy-connection|te|trailer|upgrade|transfer-encoding):"
    rb"|[^:\r\n]*:(?! [^ \t\r]))"
)
_WS: Final = b" \t"

# Hosts already found valid (they repeat): a dict hit instead of a regex. Bounded.
_VALID_HOSTS: Final[dict[bytes, bool]] = {}


def _valid_host(host: bytes) -> bool:
    ok = _VALID_HOSTS.get(host)
    if ok is None:
        ok = VALID_HOST.fullmatch(host) is not None
        if len(_VALID_HOSTS) >= 4096:
            _VALID_HOSTS.clear()
        _VALID_HOSTS[host] = ok
    return ok


def _without_connection(
    data: bytes, low: bytes, start: int, end: int
) -> tuple[bytes | None, bytes | None] | None:
    """The header lines ``data[start:end]`` minus a ``Connection: keep-alive`` or ``close``
    line, and that token; (None, None) without one. None when there are several
    Connection lines, another token (it names fields to drop) or a field called ``close``
    (which ``Connection: close`` names: the general path drops it)."""
    i = low.find(b"\r\nconnection:", start - 2, end)
    if i < 0:
        return None, None
    if low.find(b"\r\nconnection:", i + 13, end) >= 0:
        return None
    j = low.find(b"\r", i + 13)
    token = low[i + 13 : j].strip(_WS)
    if token == b"close":
        if low.find(b"\r\nclose:", start - 2, end) >= 0:
            return None
    elif token != b"keep-alive":
        return None
    return data[start : i + 2] + data[j + 2 : end], token  # the lines around it


# Header blocks already found plain (the CRLF that ends the request line, the header
# lines, the blank line), with what was learned from them: the Host, the lines, the lines
# to forward, the Connection token, the number of lines. A client sends the same block on
# every request of a connection, and clients of one kind send the same blocks (the
# repetition HTTP/2's HPACK is built on), so most requests cost a dict lookup here instead
# of the scans. The verdict depends on the bytes alone (the limits are checked outside),
# and the request line is still matched and llhttp still checks every message. Bounded in
# entries and in the size of a block kept.
_Block = tuple[bytes, bytes, bytes | None, bytes | None, int]
_BLOCKS: Final[dict[bytes, _Block]] = {}
_BLOCKS_MAX = 1024
_BLOCK_MAX_BYTES: Final = 2048


def plain_request(
    data: bytes, max_header_bytes: int, max_headers: int
) -> tuple[bytes, bytes, bytes, bytes, bytes | None, bytes | None] | None:
    """(method, target, host, header lines, the lines to forward if others, Connection
    token) when ``data`` is exactly one plain request.

    Plain: the whole head and nothing else (so no body and nothing pipelined after it),
    HTTP/1.1, an origin-form target without a fragment, exactly one Host, valid as a
    host, no field the proxy acts on but one ``Connection: keep-alive`` or ``close``
    (whose line is left out of the returned header lines), within the limits.
    """
    n = len(data)
    if n > max_header_bytes or data.find(b"\r\n\r\n") != n - 4:
        return None
    line = _REQUEST_LINE.match(data)
    if line is None:
        return None
    method = line.group(1)
    if method not in _PLAIN_METHODS:
        return None
    block = data[line.end() - 2 :]
    known = _BLOCKS.get(block)
    if known is None:
        known = _plain_block(block)
        if known is None:
            return None
        if len(block) <= _BLOCK_MAX_BYTES:
            if len(_BLOCKS) >= _BLOCKS_MAX:
                _BLOCKS.clear()
            _BLOCKS[block] = known
    host, lines, forward, token, count = known
    if count > max_headers:
        return None
    return method, line.group(2), host, lines, forward, token


def _plain_block(block: bytes) -> _Block | None:
    """What plain_request needs of a request's header block (``\r\n`` + the header lines
    + ``\r\n``), or None when the block is not plain."""
    low = block.lower()
    if _NOT_PLAIN_REQUEST.search(low) is not None or b" \r\n" in block or b"\t\r\n" in block:
        return None
    i = low.find(b"\r\nhost:")
    if i < 0 or low.find(b"\r\nhost:", i + 7) >= 0:
        return None  # none, or several
    host = block[i + 7 : block.find(b"\r", i + 7)].strip(_WS)
    if not (_VALID_HOSTS.get(host) or _valid_host(host)):
        return None
    end = len(block) - 2
    count = block.count(b"\r\n") - 2
    if b"\r\nconnection:" not in low:  # (the usual case, without a call)
        return host, block[2:end], None, None, count
    cut = _without_connection(block, low, 2, end)
    if cut is None:
        return None
    return host, block[2:end], cut[0], cut[1], count


def plain_response(
    data: bytes, max_header_bytes: int, max_headers: int
) -> tuple[bytes, bytes, bytes | None, bool, bytes] | None:
    """(reason, header lines, the lines to forward if others, keep-alive, body) when the
    head in ``data`` is plain and
    ``data`` may be exactly one response: the caller has llhttp confirm that it is (one
    whole message, nothing after it, of a status with a body) and give the status.

    Plain: HTTP/1.1, no hop-by-hop field but one ``Connection: keep-alive`` or ``close``
    (whose line is left out of the returned header lines), no Transfer-Encoding (a body
    then has a Content-Length, whose framing llhttp checks), lines in "Name: value" form,
    within the limits.
    """
    end = data.find(b"\r\n\r\n") + 2
    if end < 2 or end + 2 > max_header_bytes or not data.startswith(b"HTTP/1.1 "):
        return None
    low = data[:end].lower()
    if _NOT_PLAIN_RESPONSE.search(low) is not None or b" \r\n" in low or b"\t\r\n" in low:
        return None
    if end > 4 * max_headers and low.count(b"\r\n") - 1 > max_headers:
        return None
    start = low.find(b"\r\n") + 2  # the first header line
    # The Connection line, found as _without_connection does, in fewer steps: the form
    # checked above puts one space after the colon and no whitespace after the value.
    i = low.find(b"\r\nconnection: ")
    if i < 0:
        return data[13 : start - 2], data[start:end], None, True, data[end + 2 :]
    j = low.find(b"\r", i + 14)
    token = low[i + 14 : j]
    if token == b"keep-alive":
        keep_alive = True
    elif token == b"close" and b"\r\nclose:" not in low:
        keep_alive = False
    else:
        return None
    if low.find(b"\r\nconnection:", j) >= 0:
        return None  # several
    forward = data[start : i + 2] + data[j + 2 : end]
    return data[13 : start - 2], data[start:end], forward, keep_alive, data[end + 2 :]
