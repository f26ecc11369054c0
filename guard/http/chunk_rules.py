"""llhttp's rules for a chunked request body, for the h11 codec to enforce too.

h11 is more lenient than llhttp about chunked framing: it takes whitespace after a chunk
size, any bytes in chunk extensions, an 18-digit size that no 64-bit parser could hold,
bare LF and obsolete folding in the trailer section, and Content-Length in trailers. Any
such difference between two hops is a request-smuggling vector, and the codecs must reach
one verdict, so the h11 adapter runs every chunked request body through this checker
before h11 sees it (its own parsing stays h11's). Sans-IO: bytes in, ``BadRequest`` out.

The rules, as llhttp applies them (RFC 9112 7.1):

- chunk-size is 1*HEXDIG and fits in 64 bits (leading zeros allowed), followed directly by
  extensions or CRLF: no whitespace anywhere in the line;
- an extension is ``;`` name [``=`` value], name a token, value a token (possibly empty)
  or a quoted-string;
- chunk data is followed by exactly CRLF;
- trailer fields are ``token ":" OWS value`` lines ending in CRLF (no folding, no bare LF,
  no controls), and never Content-Length or Transfer-Encoding; an empty line ends them.
"""

from __future__ import annotations

import re

from guard.errors import BadRequest
from guard.http.codec import head_bytes_error

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]+)(?:;" + _TOKEN + rb"+(?:=(?:" + _TOKEN + rb"*|" + _QUOTED + rb"))?)*\r\n"
)
_TRAILER_LINE = re.compile(_TOKEN + rb"+:[^\r\n]*\r\n")
_FORBIDDEN_TRAILERS = (b"content-length:", b"transfer-encoding:")
_MAX_SIZE = 0xFFFFFFFFFFFFFFFF
_MAX_LINE = 16 * 1024  # a chunk line longer than this is no chunk line (bounds the buffer)

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedBodyChecker:
    """Follows one chunked body through the bytes that carry it; raises on a violation."""

    __slots__ = ("_left", "_line", "_state")

    def __init__(self) -> None:
        self._state = _SIZE
        self._line = b""  # the current chunk-size or trailer line, so far
        self._left = 0  # data bytes (or, at _DATA_END, CRLF bytes) still to come

    @property
    def done(self) -> bool:
        """The body ended: whatever follows belongs to the next request."""
        return self._state == _DONE

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and self._state != _DONE:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - i)
                i += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
                    self._line = b""
            elif state == _DATA_END:
                take = min(2 - len(self._line), n - i)
                self._line += data[i : i + take]
                i += take
                if not b"\r\n".startswith(self._line):
                    raise BadRequest("chunk data not followed by CRLF")
                if len(self._line) == 2:
                    self._line = b""
                    self._state = _SIZE
            else:
                end = data.find(b"\n", i)
                stop = n if end < 0 else end + 1
                self._line += data[i:stop]
                i = stop
                if len(self._line) > _MAX_LINE:
                    raise BadRequest("chunk line too long")
                if end >= 0:
                    line, self._line = self._line, b""
                    if state == _SIZE:
                        self._size_line(line)
                    else:
                        self._trailer_line(line)

    def _size_line(self, line: bytes) -> None:
        m = _SIZE_LINE.fullmatch(line)
        if m is None:
            raise BadRequest("invalid chunk size line")
        size = int(m.group(1), 16)
        if size > _MAX_SIZE:
            raise BadRequest("chunk size overflow")
        if size:
            self._left = size
            self._state = _DATA
        else:
            self._state = _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if line == b"\r\n":
            self._state = _DONE
            return
        if not _TRAILER_LINE.fullmatch(line) or head_bytes_error(line) is not None:
            raise BadRequest("invalid trailer field")
        if line.lower().startswith(_FORBIDDEN_TRAILERS):
            raise BadRequest("framing header in the trailer section")
