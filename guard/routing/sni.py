"""TLS ClientHello peeking for SNI routing on tcp listeners: a pure core, no IO.

``parse_sni`` looks at the bytes a client sent so far (never consuming them: the proxy
forwards the same buffer untouched) and says whether more are needed, whether the stream
is not TLS, whether the hello carries no server name, or which name it asks for. The
handshake message may be split over several TLS records and each record over several
reads, so the parser reassembles handshake fragments across records and asks for more
until the whole ClientHello is there, up to ``limit`` bytes.

``SniTable`` maps a server name to a route: exact names first, then the longest
``*.suffix`` wildcard (any depth below the suffix, as for http hosts).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = [
    "MAX_CLIENT_HELLO",
    "NEED_MORE",
    "NOT_TLS",
    "NO_SNI",
    "TOO_LARGE",
    "SniTable",
    "parse_sni",
]

T = TypeVar("T")

# Real ClientHellos are 200-2,000 bytes (post-quantum key shares push them past 1,500);
# 16 KiB is one full record and far more than any sane hello.
MAX_CLIENT_HELLO = 16 * 1024

# Outcomes other than a name. Strings so they log readably and never equal a host name
# (a host name has no spaces).
NEED_MORE = "need more"
NOT_TLS = "not tls"
NO_SNI = "no sni"
TOO_LARGE = "too large"

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_HOST_NAME = 0x00


def parse_sni(data: bytes | bytearray | memoryview, limit: int = MAX_CLIENT_HELLO) -> str:
    """The lowercased SNI host name in ``data``, or one of NEED_MORE / NOT_TLS / NO_SNI /
    TOO_LARGE. Never raises on any input."""
    buf = memoryview(data)
    n = len(buf)
    if n == 0:
        return NEED_MORE
    if buf[0] != _HANDSHAKE:
        return NOT_TLS
    # Reassemble the handshake layer from as many records as are complete.
    hs = bytearray()
    pos = 0
    need: int | None = None  # total handshake message length once its header is known
    while True:
        if pos + 5 > n:
            break
        if buf[pos] != _HANDSHAKE:
            # Another record type before the hello is complete: not a TLS client opening.
            return NOT_TLS
        if buf[pos + 1] != 0x03:  # SSLv3 / TLS 1.x record versions are all 3.x
            return NOT_TLS
        length = (buf[pos + 3] << 8) | buf[pos + 4]
        if length == 0 or length > 16384 + 2048:
            return NOT_TLS
        if pos + 5 + length > n:
            hs += buf[pos + 5 : n]
            pos = n
            break
        hs += buf[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if need is None and len(hs) >= 4:
            need = 4 + ((hs[1] << 16) | (hs[2] << 8) | hs[3])
        if need is not None and len(hs) >= need:
            break
    if len(hs) >= 4:
        if hs[0] != _CLIENT_HELLO:
            return NOT_TLS
        need = 4 + ((hs[1] << 16) | (hs[2] << 8) | hs[3])
        if need > limit:
            return TOO_LARGE
        if len(hs) >= need:
            return _client_hello_sni(bytes(hs[4:need]))
    elif len(hs) >= 1 and hs[0] != _CLIENT_HELLO:
        return NOT_TLS
    if n >= limit:
        return TOO_LARGE
    return NEED_MORE


def _client_hello_sni(body: bytes) -> str:
    """SNI from a complete ClientHello body (after the 4-byte handshake header)."""
    end = len(body)
    # legacy_version(2) random(32)
    p = 34
    if p + 1 > end:
        return NOT_TLS
    p += 1 + body[p]  # session id
    if p + 2 > end:
        return NOT_TLS
    p += 2 + ((body[p] << 8) | body[p + 1])  # cipher suites
    if p + 1 > end:
        return NOT_TLS
    p += 1 + body[p]  # compression methods
    if p == end:
        return NO_SNI  # no extensions at all (SSLv3-style hello)
    if p + 2 > end:
        return NOT_TLS
    ext_end = p + 2 + ((body[p] << 8) | body[p + 1])
    p += 2
    if ext_end > end:
        return NOT_TLS
    while p + 4 <= ext_end:
        ext_type = (body[p] << 8) | body[p + 1]
        ext_len = (body[p + 2] << 8) | body[p + 3]
        p += 4
        if p + ext_len > ext_end:
            return NOT_TLS
        if ext_type == _EXT_SERVER_NAME:
            return _server_name(body[p : p + ext_len])
        p += ext_len
    return NO_SNI


def _server_name(ext: bytes) -> str:
    if len(ext) < 2:
        return NOT_TLS
    list_end = 2 + ((ext[0] << 8) | ext[1])
    if list_end > len(ext):
        return NOT_TLS
    p = 2
    while p + 3 <= list_end:
        kind = ext[p]
        length = (ext[p + 1] << 8) | ext[p + 2]
        p += 3
        if p + length > list_end:
            return NOT_TLS
        if kind == _HOST_NAME:
            raw = ext[p : p + length]
            # RFC 6066: ASCII host name, no trailing dot; be lenient on the dot and case,
            # strict on anything that could not be a host name (no routing on garbage).
            if not raw or not raw.isascii():
                return NO_SNI
            name = raw.decode("ascii").lower().rstrip(".")
            if not name or any(c in name for c in " /\\\x00"):
                return NO_SNI
            return name
        p += length
    return NO_SNI


class SniTable(Generic[T]):
    """Server name -> value, exact names before the longest matching ``*.suffix``."""

    __slots__ = ("_exact", "_wildcard")

    def __init__(self, entries: Iterable[tuple[str, T]] = ()) -> None:
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}
        for pattern, value in entries:
            self.add(pattern, value)

    def add(self, pattern: str, value: T) -> None:
        """First definition of a pattern wins (file order), like duplicate http routes."""
        host = pattern.strip().lower().rstrip(".")
        if host.startswith("*."):
            self._wildcard.setdefault(host[2:], value)
        else:
            self._exact.setdefault(host, value)

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcard)

    def lookup(self, name: str) -> T | None:
        value = self._exact.get(name)
        if value is not None or not self._wildcard:
            return value
        # Walk label boundaries left to right: the first hit is the longest suffix.
        i = name.find(".")
        while i >= 0:
            value = self._wildcard.get(name[i + 1 :])
            if value is not None:
                return value
            i = name.find(".", i + 1)
        return None
