"""Header rewriting between client and backend, as pure functions over header lists.

Order matters (Traefik CVE-2021-32813 / CVE-2024-45410): hop-by-hop headers and every
header the client named in ``Connection`` are removed *before* Guard adds its
``X-Forwarded-*`` headers, so a client can neither delete nor forge them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Final

from guard.http.codec import Headers, RequestHead, ResponseHead

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by Guard itself; from an untrusted peer they are dropped, never believed.
_FORWARDING: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
# Expect is answered by Guard itself (the proxy sends 100 Continue), never forwarded.
_REQUEST_DROP: Final = HOP_BY_HOP | _FORWARDING | {b"expect"}
# Never removed because Connection names them: dropping Content-Length while forwarding
# the body desynchronises the next hop (request smuggling), dropping Host misroutes.
_PROTECTED: Final = frozenset({b"content-length", b"host"})

# Connection values repeat ("keep-alive", "close"): build each drop set once. Bounded,
# since the tokens come from clients.
_DROP_SETS: Final[dict[tuple[frozenset[bytes], tuple[bytes, ...]], frozenset[bytes]]] = {}


def _drop_set(base: frozenset[bytes], tokens: tuple[bytes, ...]) -> frozenset[bytes]:
    key = (base, tokens)
    drop = _DROP_SETS.get(key)
    if drop is None:
        drop = base | (frozenset(tokens) - _PROTECTED)
        if len(_DROP_SETS) >= 1024:
            _DROP_SETS.clear()
        _DROP_SETS[key] = drop
    return drop


_REASONS: Final = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class TrustedProxies:
    """Which peers' forwarding headers are believed (``http.trusted_proxies``)."""

    __slots__ = ("_networks",)

    def __init__(self, cidrs: Sequence[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __contains__(self, ip: str) -> bool:
        if not self._networks or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(addr in net for net in self._networks)


def forwarded_for_value(client_ip: str) -> bytes:
    """The ``for=`` value of RFC 7239: IPv6 addresses quoted in brackets."""
    if ":" in client_ip:
        return f'for="[{client_ip}]"'.encode()
    return f"for={client_ip}".encode()


class RequestForwarder:
    """Serializes request heads for one client connection.

    What does not change while a connection lives (client address, scheme, trust, Via)
    is rendered once at accept; per request only the header lines and the host-dependent
    forwarding lines are built, and those are cached for the last Host seen.
    """

    __slots__ = (
        "_client_ip",
        "_forwarded_for",
        "_host",
        "_host_tail",
        "_proto",
        "_trusted",
        "_untrusted_head",
        "_via",
    )

    def __init__(
        self,
        *,
        client_ip: bytes,
        forwarded_for: bytes,
        proto: bytes,
        trusted: bool,
        via: bytes | None,
    ) -> None:
        self._client_ip = client_ip
        self._forwarded_for = forwarded_for
        self._proto = proto
        self._trusted = trusted
        self._via = via
        self._untrusted_head = b"x-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n" % (
            client_ip,
            proto,
        )
        self._host: bytes | None = None
        self._host_tail = b""

    def head_bytes(self, head: RequestHead, target: bytes) -> bytes:
        """The request head Guard sends upstream (always HTTP/1.1, keep-alive)."""
        raw = head.raw
        if raw is not None or not self._trusted:
            host = head.host
            if host != self._host:
                self._host = host
                self._host_tail = self._host_lines(host, b"")
            forwarding = self._untrusted_head + self._host_tail
        if raw is not None:
            # A plain head: nothing in it is dropped, and with no forwarding fields to
            # extend, a trusted peer's forwarding lines are the same as anyone's.
            if self._via is None:
                return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (head.method, target, raw, forwarding)
            lines = [raw]
        else:
            tokens = head.connection_tokens
            drop = _drop_set(_REQUEST_DROP, tokens) if tokens else _REQUEST_DROP
            lines = _header_lines(head, drop)
            if self._trusted:
                forwarding = self._trusted_lines(head, tokens)
        tail = b"transfer-encoding: chunked\r\n\r\n" if head.chunked else b"\r\n"
        if head.upgrade is not None:
            # The one hop-by-hop pair that must reach the backend: the proxy decided to
            # pass this upgrade on (http_proxy clears ``upgrade`` for those it does not).
            tail = b"connection: upgrade\r\nupgrade: %s\r\n%s" % (head.upgrade, tail)
        if self._via is not None:
            tail = b"via: %s %s\r\n%s" % (head.version, self._via, tail)
        return b"%s %s HTTP/1.1\r\n%s%s%s" % (
            head.method,
            target,
            b"".join(lines),
            forwarding,
            tail,
        )

    def _host_lines(self, host: bytes, prior_forwarded: bytes, prior_host: bytes = b"") -> bytes:
        out = b""
        if host or prior_host:
            out = b"x-forwarded-host: %s\r\n" % (prior_host or host)
        forwarded = b"%s%s;proto=%s" % (prior_forwarded, self._forwarded_for, self._proto)
        if host and _is_token(host):
            forwarded += b";host=" + host
        elif host:
            forwarded += b';host="%s"' % host.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return out + b"forwarded: " + forwarded + b"\r\n"

    def _trusted_lines(self, head: RequestHead, tokens: tuple[bytes, ...]) -> bytes:
        # A trusted proxy's forwarding headers are kept and extended, unless they were
        # named in Connection (then they were meant for us alone).
        prior_for: list[bytes] = []
        prior_forwarded: list[bytes] = []
        prior_proto = prior_host = b""
        for name, value in head.headers:
            if name not in _FORWARDING or name in tokens:
                continue
            if name == b"x-forwarded-for":
                prior_for.append(value)
            elif name == b"forwarded":
                prior_forwarded.append(value)
            elif name == b"x-forwarded-proto":
                prior_proto = value
            else:
                prior_host = value
        prior_for.append(self._client_ip)
        earlier = b", ".join(prior_forwarded) + b", " if prior_forwarded else b""
        return b"x-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n%s" % (
            b", ".join(prior_for),
            prior_proto or self._proto,
            self._host_lines(head.host, earlier, prior_host),
        )


def request_head_bytes(
    head: RequestHead,
    target: bytes,
    *,
    client_ip: bytes,
    forwarded_for: bytes,
    proto: bytes,
    trusted: bool,
    via: bytes | None,
) -> bytes:
    """Serialize one request head (the proxy keeps a RequestForwarder per connection)."""
    forwarder = RequestForwarder(
        client_ip=client_ip, forwarded_for=forwarded_for, proto=proto, trusted=trusted, via=via
    )
    return forwarder.head_bytes(head, target)


def _is_token(value: bytes) -> bool:
    # RFC 7230 tchar subset; ":" is not one, so "host:port" must be quoted (RFC 7239 4).
    return value.replace(b".", b"").replace(b"-", b"").isalnum()


def response_head_bytes(
    head: ResponseHead,
    *,
    chunked: bool,
    keep_alive: bool,
    client_version: bytes,
    via: bytes | None,
) -> bytes:
    """Serialize the response head Guard sends to the client."""
    raw = head.raw
    if raw is not None:
        if via is None and not chunked:
            return plain_response_bytes(head, raw, b"", keep_alive, client_version)
        lines = [raw]
    else:
        tokens = head.connection_tokens
        drop = _drop_set(HOP_BY_HOP, tokens) if tokens else HOP_BY_HOP
        lines = _header_lines(head, drop)
    if via is not None:
        lines.append(b"via: %s %s\r\n" % (head.version, via))
    if chunked:
        lines.append(b"transfer-encoding: chunked\r\n")
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    elif client_version == b"1.0":
        lines.append(b"connection: keep-alive\r\n")
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (head.status, head.reason, b"".join(lines))


def plain_response_bytes(
    head: ResponseHead, raw: bytes, body: bytes, keep_alive: bool, client_version: bytes
) -> bytes:
    """A plain head (``raw``: its lines as received, the Connection line already out) as
    Guard sends it with no Via, followed by ``body``."""
    if not keep_alive:
        raw += b"connection: close\r\n"
    elif client_version == b"1.0":
        raw += b"connection: keep-alive\r\n"
    return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (head.status, head.reason, raw, body)


def switching_bytes(head: ResponseHead, *, via: bytes | None) -> bytes:
    """The 101 head Guard sends the client: its own hop-by-hop headers, the upgrade kept."""
    tokens = head.connection_tokens
    drop = _drop_set(HOP_BY_HOP, tokens) if tokens else HOP_BY_HOP
    lines = _header_lines(head, drop)
    if via is not None:
        lines.append(b"via: %s %s\r\n" % (head.version, via))
    return b"HTTP/1.1 101 %s\r\n%sconnection: upgrade\r\nupgrade: %s\r\n\r\n" % (
        head.reason or b"Switching Protocols",
        b"".join(lines),
        head.upgrade or b"websocket",
    )


def informational_bytes(head: ResponseHead) -> bytes:
    lines = _header_lines(head, HOP_BY_HOP)
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (head.status, head.reason, b"".join(lines))


def _header_lines(head: RequestHead | ResponseHead, drop: frozenset[bytes]) -> list[bytes]:
    """The header lines of a parsed head, minus ``drop``, with the names as received."""
    headers = head.headers
    names = head.names
    if names is None or len(names) != len(headers):  # (unknown, or a list edited alone)
        return [b"%s: %s\r\n" % h for h in headers if h[0] not in drop]
    pairs = zip(headers, names, strict=False)  # (same length: checked just above)
    return [b"%s: %s\r\n" % (n, v) for (k, v), n in pairs if k not in drop]


def error_response_bytes(
    status: int,
    code: str,
    message: str,
    *,
    keep_alive: bool,
    head_only: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A response made by Guard: ``x-guard-error`` plus ``{"error": CODE, "message": ...}``.

    ``extra`` is more header lines, each ending in CRLF (e.g. ``retry-after: 2``)."""
    body = json.dumps({"error": code, "message": message}).encode()
    reason = _REASONS.get(status, b"Error")
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nx-guard-error: %s\r\n"
        b"content-length: %d\r\n%s%s\r\n"
        % (
            status,
            reason,
            code.encode(),
            len(body),
            extra,
            b"" if keep_alive else b"connection: close\r\n",
        )
    )
    return head if head_only else head + body


def headers_get(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None
